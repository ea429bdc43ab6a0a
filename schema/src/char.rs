//! Character devices and monitors on the command line: `--chardev` (QEMU's
//! older option syntax, see [`crate::qemuopts`]) and `--monitor` (keyval,
//! implied key `chardev`).

use crate::introspect::Introspect;
use serde::{Deserialize, Serialize};

use crate::size::Size;

/// Implied name of `--chardev`'s leading bare value.
pub const CHARDEV_IMPLIED_KEY: &str = "backend";

/// Implied key of `--monitor`.
pub const MONITOR_IMPLIED_KEY: &str = "chardev";

/// Every option `--chardev` accepts (QEMU's `qemu_chardev_opts`), for all
/// backends; which ones a backend uses is the daemon's business. `id` and
/// `backend` are optional here because QEMU reports their absence itself
/// ("chardev: no id specified").
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevOptions {
    pub id: Option<String>,
    pub backend: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub fd: Option<String>,
    pub localaddr: Option<String>,
    pub localport: Option<String>,
    pub to: Option<u64>,
    pub ipv4: Option<bool>,
    pub ipv6: Option<bool>,
    pub wait: Option<bool>,
    pub server: Option<bool>,
    /// Deprecated inverse of `nodelay`.
    pub delay: Option<bool>,
    pub nodelay: Option<bool>,
    pub reconnect: Option<u64>,
    pub reconnect_ms: Option<u64>,
    pub telnet: Option<bool>,
    pub tn3270: Option<bool>,
    pub websocket: Option<bool>,
    pub tls_creds: Option<String>,
    pub tls_authz: Option<String>,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub cols: Option<u64>,
    pub rows: Option<u64>,
    pub mux: Option<bool>,
    pub signal: Option<bool>,
    pub name: Option<String>,
    pub debug: Option<u64>,
    pub size: Option<Size>,
    pub chardev: Option<String>,
    pub append: Option<bool>,
    pub logfile: Option<String>,
    pub logappend: Option<bool>,
    pub mouse: Option<bool>,
    pub clipboard: Option<bool>,
    pub r#abstract: Option<bool>,
    pub tight: Option<bool>,
    pub input_path: Option<String>,
}

/// One element of `query-chardev` (`ChardevInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevInfo {
    pub label: String,
    pub filename: String,
    pub frontend_open: bool,
}

/// One element of `query-chardev-backends` (`ChardevBackendInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct ChardevBackendInfo {
    pub name: String,
}

/// The protocol a monitor speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorMode {
    /// The human monitor; QSD has none and refuses it.
    Readline,
    #[default]
    Control,
}

/// `--monitor [chardev=]ID[,id=...][,mode=control][,pretty=on|off]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct MonitorOptions {
    pub id: Option<String>,
    pub mode: Option<MonitorMode>,
    pub pretty: Option<bool>,
    pub chardev: String,
}

//! Character devices and monitors on the command line: `--chardev` (QEMU's
//! older option syntax, see [`crate::qemuopts`]) and `--monitor` (keyval,
//! implied key `chardev`).

use crate::introspect::Introspect;
use serde::{Deserialize, Serialize};

use crate::de::union::qapi_union;
use crate::size::Size;
use crate::sockets::{SocketAddressLegacy, Wrapped};

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
    /// The chardevs a `hub` backend joins; storaged has no `hub`, but
    /// accepts them with other backends (which ignore them), as QEMU.
    #[serde(rename = "chardevs.0")]
    pub chardevs_0: Option<String>,
    #[serde(rename = "chardevs.1")]
    pub chardevs_1: Option<String>,
    #[serde(rename = "chardevs.2")]
    pub chardevs_2: Option<String>,
    #[serde(rename = "chardevs.3")]
    pub chardevs_3: Option<String>,
}

/// What every chardev backend takes (`ChardevCommon`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevCommon {
    pub logfile: Option<String>,
    pub logappend: Option<bool>,
}

/// A ring buffer (`ChardevRingbuf`): `size` bytes, a power of two
/// (default 65536).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevRingbuf {
    pub logfile: Option<String>,
    pub logappend: Option<bool>,
    pub size: Option<i64>,
}

/// A file (`ChardevFile`): output to `out`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevFile {
    pub logfile: Option<String>,
    pub logappend: Option<bool>,
    pub r#in: Option<String>,
    pub out: String,
    pub append: Option<bool>,
}

/// A socket (`ChardevSocket`): listening (`server`, QMP's default) or
/// connecting to `addr`.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevSocket {
    pub logfile: Option<String>,
    pub logappend: Option<bool>,
    pub addr: SocketAddressLegacy,
    pub tls_creds: Option<String>,
    pub tls_authz: Option<String>,
    pub server: Option<bool>,
    pub wait: Option<bool>,
    pub nodelay: Option<bool>,
    pub telnet: Option<bool>,
    pub tn3270: Option<bool>,
    pub websocket: Option<bool>,
    #[introspect(features("deprecated"))]
    pub reconnect: Option<i64>,
    pub reconnect_ms: Option<i64>,
}

/// A host device (`ChardevHostdev`): for `pipe`, the FIFO `device` (or
/// `device.in` and `device.out`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevHostdev {
    pub logfile: Option<String>,
    pub logappend: Option<bool>,
    pub device: String,
}

/// Standard input and output (`ChardevStdio`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevStdio {
    pub logfile: Option<String>,
    pub logappend: Option<bool>,
    pub signal: Option<bool>,
}

qapi_union! {
    /// A chardev backend as `chardev-add` and `chardev-change` take it
    /// (QAPI's legacy `{"type", "data"}` union, `ChardevBackend`); the
    /// backends storaged can create at run time.
    pub struct ChardevBackend {
    }
    /// The backend and its options.
    discriminator "type" => pub kind: ChardevBackendKind {
        "file" => File(Wrapped<ChardevFile>),
        "pipe" => Pipe(Wrapped<ChardevHostdev>),
        "socket" => Socket(Wrapped<ChardevSocket>),
        "null" => Null(Wrapped<ChardevCommon>),
        "stdio" => Stdio(Wrapped<ChardevStdio>),
        "ringbuf" => Ringbuf(Wrapped<ChardevRingbuf>),
        "memory" => Memory(Wrapped<ChardevRingbuf>) features ["deprecated"],
    }
}

impl ChardevBackendKind {
    /// The file the backend's output is logged to (`logfile`).
    pub fn logfile(&self) -> Option<&str> {
        match self {
            Self::File(w) => w.data.logfile.as_deref(),
            Self::Pipe(w) => w.data.logfile.as_deref(),
            Self::Socket(w) => w.data.logfile.as_deref(),
            Self::Null(w) => w.data.logfile.as_deref(),
            Self::Stdio(w) => w.data.logfile.as_deref(),
            Self::Ringbuf(w) | Self::Memory(w) => w.data.logfile.as_deref(),
        }
    }
}

/// `chardev-add` and `chardev-change`.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
pub struct ChardevAddArgs {
    pub id: String,
    pub backend: ChardevBackend,
}

/// What `chardev-add` and `chardev-change` return (`ChardevReturn`; `pty`
/// only for pty backends, which storaged has not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Introspect)]
pub struct ChardevReturn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<String>,
}

/// `chardev-remove` and `chardev-send-break`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct ChardevIdArgs {
    pub id: String,
}

/// How `ringbuf-write` and `ringbuf-read` encode data (`DataFormat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    #[default]
    Utf8,
    Base64,
}

/// `ringbuf-write`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct RingbufWriteArgs {
    pub device: String,
    pub data: String,
    pub format: Option<DataFormat>,
}

/// `ringbuf-read`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct RingbufReadArgs {
    pub device: String,
    pub size: i64,
    pub format: Option<DataFormat>,
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

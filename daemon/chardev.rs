//! `--chardev` and `--monitor`: character devices as far as a QMP monitor
//! needs them, and the monitors attached to them.
//!
//! storaged has character devices only to carry monitors: a listening
//! socket (`socket,path=...` or `socket,host=...,port=...` with
//! `server=on`) or the daemon's standard streams (`stdio`). A chardev is
//! checked when `--chardev` is read and opened when a `--monitor` attaches
//! to it; each chardev carries at most one monitor, as in QEMU.

use std::collections::HashMap;

use schema::char::{ChardevOptions, MonitorMode, MonitorOptions, CHARDEV_IMPLIED_KEY};
use schema::qemuopts::{self, Request};
use schema::qemuopts_help;

use crate::startup::Help;

/// QEMU's character device backends, for telling a backend storaged does
/// not offer from one that does not exist.
const QEMU_BACKENDS: &[&str] = &[
    "pty", "file", "udp", "memory", "stdio", "socket", "ringbuf", "null", "parallel", "pipe",
    "mux", "serial", "hub",
];

/// The backends storaged offers (`query-chardev-backends`): those of the
/// command line and those `chardev-add` creates.
pub const BACKENDS: &[&str] = &["socket", "stdio", "ringbuf", "memory", "null", "file"];

/// A chardev as the daemon's state keeps it for `query-chardev` and the
/// QOM tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevRow {
    pub id: String,
    /// `chardev-socket` or `chardev-stdio`.
    pub qom_type: &'static str,
    /// QEMU's description (`unix:/path,server=on`, `stdio`).
    pub filename: String,
    /// A monitor uses it.
    pub frontend_open: bool,
}

/// QEMU's `filename` of a chardev; a socket without a monitor (which
/// storaged does not open) is `disconnected:`, as QEMU shows a socket with
/// no peer. A monitor's socket shows as connected.
fn filename(backend: &Backend, in_use: bool) -> String {
    let address = |address: &qmp::ListenAddress| match address {
        qmp::ListenAddress::Unix(path) => format!("unix:{}", path.display()),
        qmp::ListenAddress::Tcp { host, port } => format!("tcp:{host}:{port}"),
        qmp::ListenAddress::Fd(fd) => format!("fd:{fd}"),
    };
    let state = if in_use { "" } else { "disconnected:" };
    match backend {
        Backend::Listen { address: a, .. } => format!("{state}{},server=on", address(a)),
        Backend::Connect { address: a, .. } => format!("{state}{}", address(a)),
        Backend::Stdio => "stdio".to_owned(),
    }
}

/// The backends `--chardev` creates (the others only `chardev-add`).
const COMMAND_LINE_BACKENDS: &[&str] = &["stdio", "socket"];

/// The help `--chardev` asks for, as QSD gives it: `--chardev help` (the
/// backend `help`) lists the backends `--chardev` creates and succeeds;
/// a bare `help` item (`--chardev socket,help`, whatever the backend)
/// lists every option of `--chardev` and fails. `None` when the option
/// asks for no help, or is wrong before it asks (reported when applied).
pub fn chardev_help(option: &str) -> Option<Help> {
    match qemuopts::parse_or_help::<ChardevOptions>(option, Some(CHARDEV_IMPLIED_KEY)).ok()? {
        Request::Help { warnings } => Some(Help {
            text: qemuopts_help::print_help::<ChardevOptions>("chardev"),
            warnings,
            success: false,
        }),
        Request::Options(parsed)
            if matches!(parsed.options.backend.as_deref(), Some("help" | "?")) =>
        {
            let list: String = COMMAND_LINE_BACKENDS
                .iter()
                .map(|name| format!("  {name}\n"))
                .collect();
            Some(Help {
                text: format!("Available chardev backend types: \n{list}"),
                warnings: parsed.warnings,
                success: true,
            })
        }
        Request::Options(_) => None,
    }
}

/// The most chardevs a command line may define.
pub const MAX_CHARDEVS: usize = 256;

/// Where a chardev's bytes come from and go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A listening socket; `wait` (QEMU's `wait=on`, the default) holds
    /// startup until a first client connects.
    Listen {
        address: qmp::ListenAddress,
        wait: bool,
    },
    /// A socket the daemon connects to (`server=off`, QEMU's default):
    /// the peer listens. With `reconnect`, a closed or failed connection
    /// is made again after that delay.
    Connect {
        address: qmp::ListenAddress,
        reconnect: Option<std::time::Duration>,
    },
    /// Standard input and output.
    Stdio,
}

/// A chardev and whether a monitor uses it.
#[derive(Debug)]
struct Chardev {
    backend: Backend,
    in_use: bool,
}

/// The chardevs of the command line.
#[derive(Debug, Default)]
pub struct Chardevs {
    by_id: HashMap<String, Chardev>,
}

impl Chardevs {
    pub fn new() -> Self {
        Self::default()
    }

    /// `--chardev`: checks the options and remembers the chardev. Returns
    /// warnings about deprecated syntax, to print.
    pub fn define(&mut self, text: &str, daemonize: bool) -> Result<Vec<String>, String> {
        let parsed = qemuopts::parse::<ChardevOptions>(text, Some(CHARDEV_IMPLIED_KEY))
            .map_err(|error| error.desc)?;
        let options = parsed.options;
        let id = options
            .id
            .clone()
            .ok_or_else(|| "chardev: no id specified".to_owned())?;
        let backend_name = options.backend.clone().unwrap_or_default();
        let backend = match backend_name.as_str() {
            "socket" => socket_backend(&options)?,
            "stdio" if daemonize => return Err("cannot use stdio with -daemonize".to_owned()),
            "stdio" => Backend::Stdio,
            name if QEMU_BACKENDS.contains(&name) => {
                return Err(format!(
                    "chardev backend '{name}' is not supported by storaged (use socket or stdio)"
                ))
            }
            name => return Err(format!("'{name}' is not a valid char driver name")),
        };
        if self.by_id.contains_key(&id) {
            return Err(format!(
                "attempt to add duplicate property '{id}' to object (type 'container')"
            ));
        }
        if self.by_id.len() >= MAX_CHARDEVS {
            return Err(format!("too many chardevs (at most {MAX_CHARDEVS})"));
        }
        self.by_id.insert(
            id,
            Chardev {
                backend,
                in_use: false,
            },
        );
        Ok(parsed.warnings)
    }

    /// `--monitor`: the chardev to serve a monitor on, and its options.
    /// Marks the chardev used.
    pub fn attach_monitor(&mut self, text: &str) -> Result<(Backend, qmp::MonitorOptions), String> {
        let options: MonitorOptions =
            schema::parse_option(text, Some(schema::char::MONITOR_IMPLIED_KEY))
                .map_err(|error| error.desc)?;
        if options.mode == Some(MonitorMode::Readline) {
            return Err("Only QMP is supported".to_owned());
        }
        let name = &options.chardev;
        let chardev = self
            .by_id
            .get_mut(name)
            .ok_or_else(|| format!("chardev \"{name}\" not found"))?;
        if chardev.in_use {
            return Err(format!("chardev '{name}' is already in use"));
        }
        chardev.in_use = true;
        Ok((
            chardev.backend.clone(),
            qmp::MonitorOptions {
                pretty: options.pretty.unwrap_or(false),
            },
        ))
    }

    /// Every chardev as `query-chardev` and the QOM tree show it, by id.
    pub fn rows(&self) -> Vec<ChardevRow> {
        let mut rows: Vec<ChardevRow> = self
            .by_id
            .iter()
            .map(|(id, chardev)| ChardevRow {
                id: id.clone(),
                qom_type: match chardev.backend {
                    Backend::Listen { .. } | Backend::Connect { .. } => "chardev-socket",
                    Backend::Stdio => "chardev-stdio",
                },
                filename: filename(&chardev.backend, chardev.in_use),
                frontend_open: chardev.in_use,
            })
            .collect();
        rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        rows
    }

    /// The ids of chardevs no monitor uses (storaged opens nothing for
    /// them).
    pub fn unused(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .by_id
            .iter()
            .filter(|(_, chardev)| !chardev.in_use)
            .map(|(id, _)| id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// The server forms of QEMU's socket chardev.
fn socket_backend(options: &ChardevOptions) -> Result<Backend, String> {
    let server = options.server == Some(true);
    let unsupported = [
        ("telnet", options.telnet == Some(true)),
        ("tn3270", options.tn3270 == Some(true)),
        ("websocket", options.websocket == Some(true)),
        ("tls-creds", options.tls_creds.is_some()),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(format!(
            "socket chardev option '{name}' is not supported by storaged"
        ));
    }
    if server && (options.reconnect.is_some() || options.reconnect_ms.is_some()) {
        return Err(
            "'reconnect' option is incompatible with socket in server listen mode".to_owned(),
        );
    }
    if !server {
        return client_backend(options);
    }
    let wait = options.wait.unwrap_or(true);
    if let Some(name) = &options.fd {
        // A listening socket inherited by name (systemd) or number.
        let fd = crate::socket_activation::resolve(name)?;
        return Ok(Backend::Listen {
            address: qmp::ListenAddress::Fd(fd),
            wait,
        });
    }
    if let Some(path) = &options.path {
        return Ok(Backend::Listen {
            address: qmp::ListenAddress::Unix(path.into()),
            wait,
        });
    }
    let host = options.host.clone().unwrap_or_default();
    let port = options
        .port
        .as_deref()
        .ok_or_else(|| "chardev: socket: no port given".to_owned())?;
    let port = port.parse::<u16>().map_err(|_| {
        format!(
            "address resolution failed for {host}:{port}: Servname not supported for ai_socktype"
        )
    })?;
    Ok(Backend::Listen {
        address: qmp::ListenAddress::Tcp { host, port },
        wait,
    })
}

/// A client-mode socket: where to connect, and how soon to connect again.
fn client_backend(options: &ChardevOptions) -> Result<Backend, String> {
    let reconnect = match (options.reconnect, options.reconnect_ms) {
        (Some(_), Some(_)) => {
            return Err("'reconnect' and 'reconnect-ms' are mutually exclusive".to_owned())
        }
        (Some(seconds), None) => Some(std::time::Duration::from_secs(seconds)),
        (None, Some(ms)) => Some(std::time::Duration::from_millis(ms)),
        (None, None) => None,
    }
    .filter(|delay| !delay.is_zero());
    let address = match (&options.path, &options.port) {
        (Some(path), _) => qmp::ListenAddress::Unix(path.into()),
        (None, Some(port)) => qmp::ListenAddress::Tcp {
            host: options.host.clone().unwrap_or_else(|| "localhost".to_owned()),
            port: port.parse().map_err(|_| {
                format!("address resolution failed for {}:{port}: Servname not supported for ai_socktype", options.host.as_deref().unwrap_or(""))
            })?,
        },
        (None, None) => return Err("chardev: socket: no port given".to_owned()),
    };
    Ok(Backend::Connect { address, reconnect })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_and_tcp_server_sockets() {
        let mut chardevs = Chardevs::new();
        chardevs
            .define("socket,id=a,path=/tmp/a.sock,server=on,wait=off", false)
            .expect("unix socket");
        chardevs
            .define("socket,id=b,host=127.0.0.1,port=4444,server=on", false)
            .expect("tcp socket");
        let (backend, options) = chardevs.attach_monitor("a,pretty=on").expect("monitor");
        assert_eq!(
            backend,
            Backend::Listen {
                address: qmp::ListenAddress::Unix("/tmp/a.sock".into()),
                wait: false
            }
        );
        assert!(options.pretty);
        let (backend, _) = chardevs.attach_monitor("chardev=b").expect("monitor");
        assert_eq!(
            backend,
            Backend::Listen {
                address: qmp::ListenAddress::Tcp {
                    host: "127.0.0.1".into(),
                    port: 4444
                },
                wait: true
            }
        );
    }

    #[test]
    fn qemu_messages() {
        let mut chardevs = Chardevs::new();
        let mut define = |text: &str| chardevs.define(text, false).map(drop);
        assert_eq!(
            define("socket,path=/tmp/x,server=on"),
            Err("chardev: no id specified".into())
        );
        assert_eq!(
            define("bogus,id=x"),
            Err("'bogus' is not a valid char driver name".into())
        );
        assert_eq!(
            define("socket,id=x,host=127.0.0.1,server=on"),
            Err("chardev: socket: no port given".into())
        );
        define("socket,id=m,path=/tmp/x,server=on,wait=off").expect("valid");
        assert_eq!(
            chardevs.attach_monitor("nope").map(drop),
            Err("chardev \"nope\" not found".into())
        );
        assert_eq!(
            chardevs.attach_monitor("m,mode=readline").map(drop),
            Err("Only QMP is supported".into())
        );
        chardevs.attach_monitor("m").expect("first monitor");
        assert_eq!(
            chardevs.attach_monitor("m").map(drop),
            Err("chardev 'm' is already in use".into())
        );
        assert_eq!(
            chardevs.define("stdio,id=s", true).map(drop),
            Err("cannot use stdio with -daemonize".into())
        );
    }
}

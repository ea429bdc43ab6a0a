//! `--chardev` and `--monitor`: the command line's character devices and
//! the monitors attached to them, and `--chardev help`. Socket options
//! are read by [`crate::chardev_socket`], as `chardev-add`'s are.
//!
//! The command line has character devices to carry monitors: a socket
//! (`socket,path=...` or `socket,host=...,port=...`, listening with
//! `server=on`) or the daemon's standard streams (`stdio`). A socket is
//! opened when `--chardev` is read, as QSD does (`wait=on` waits there for
//! a first client), and served by the monitor a `--monitor` attaches; each
//! chardev carries at most one monitor, as in QEMU. Sockets no monitor
//! took are served without one once startup is done
//! ([`crate::chardev_table`]). The other backends `chardev-add` creates
//! (`ringbuf`, `memory`, `null`, `file`, `pipe`) are read into the same
//! `ChardevBackend` it takes and created by the same code; they carry no
//! monitor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use qmp::socket::Opened;
use qmp::SocketSpec;
use schema::char::{
    ChardevBackend, ChardevBackendKind, ChardevCommon, ChardevFile, ChardevHostdev, ChardevOptions,
    ChardevRingbuf, MonitorMode, MonitorOptions, CHARDEV_IMPLIED_KEY,
};
use schema::qemuopts::{self, Request};
use schema::qemuopts_help;
use schema::sockets::Wrapped;
use serde_json::Value as Json;

use crate::chardev_socket::{
    open_error, socket_address, socket_backend, socket_description, waiting_message,
};
use crate::startup::Help;

/// QEMU's character device backends, for telling a backend storaged does
/// not offer from one that does not exist.
const QEMU_BACKENDS: &[&str] = &[
    "pty", "file", "udp", "memory", "stdio", "socket", "ringbuf", "null", "parallel", "pipe",
    "mux", "serial", "hub",
];

/// The backends storaged offers (`query-chardev-backends`): those of the
/// command line and those `chardev-add` creates.
pub const BACKENDS: &[&str] = &[
    "socket", "stdio", "ringbuf", "memory", "null", "file", "pipe",
];

/// A chardev as the daemon's state keeps it for `query-chardev` and the
/// QOM tree.
#[derive(Debug, Clone)]
pub struct ChardevRow {
    pub id: String,
    /// `chardev-socket` or `chardev-stdio`.
    pub qom_type: &'static str,
    /// QEMU's description (`unix:/path,server=on`, `stdio`).
    description: String,
    /// A monitor uses it.
    pub frontend_open: bool,
    /// A socket's `addr`, and whether its monitor has a client.
    socket: Option<(Json, Option<Arc<AtomicBool>>)>,
}

impl ChardevRow {
    /// Whether a socket's monitor has a client now.
    fn connected(&self) -> bool {
        self.socket
            .as_ref()
            .and_then(|(_, connected)| connected.as_ref())
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// QEMU's `filename`: a socket with no client is `disconnected:`.
    pub fn filename(&self) -> String {
        match &self.socket {
            Some(_) if !self.connected() => format!("disconnected:{}", self.description),
            _ => self.description.clone(),
        }
    }

    /// A socket's `connected` and `addr` properties.
    pub fn socket(&self) -> Option<(bool, Json)> {
        let (addr, _) = self.socket.as_ref()?;
        Some((self.connected(), addr.clone()))
    }
}

/// The help `--chardev` asks for, as QSD gives it: `--chardev help` (the
/// backend `help`) lists the backends storaged creates, in QSD's order,
/// and succeeds;
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
            let list: String = QEMU_BACKENDS
                .iter()
                .filter(|name| BACKENDS.contains(name))
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
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// A socket, listening or connecting.
    Socket(SocketSpec),
    /// Standard input and output.
    Stdio,
    /// A backend as `chardev-add` creates it, in the chardev table.
    Table(ChardevBackend),
}

/// A chardev and whether a monitor uses it.
#[derive(Debug)]
struct Chardev {
    backend: Backend,
    in_use: bool,
    /// A socket's, until a monitor (or the end of startup) takes it.
    opened: Option<Opened>,
    /// A socket's `addr`, once open.
    addr: Option<Json>,
    /// Whether its monitor has a client.
    connected: Option<Arc<AtomicBool>>,
}

/// What a monitor is served on.
#[derive(Debug)]
pub enum MonitorSource {
    Socket(Opened),
    Stdio,
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

    /// `--chardev`: checks the options and remembers the chardev (see
    /// [`Chardevs::open`]). Returns its id and warnings about deprecated
    /// syntax, to print.
    pub fn define(&mut self, text: &str, daemonize: bool) -> Result<(String, Vec<String>), String> {
        let parsed = qemuopts::parse::<ChardevOptions>(text, Some(CHARDEV_IMPLIED_KEY))
            .map_err(|error| error.desc)?;
        let options = parsed.options;
        let id = options
            .id
            .clone()
            .ok_or_else(|| "chardev: no id specified".to_owned())?;
        let backend_name = options.backend.clone().unwrap_or_default();
        let backend = match backend_name.as_str() {
            "socket" => Backend::Socket(socket_backend(&options)?),
            "stdio" if daemonize => return Err("cannot use stdio with -daemonize".to_owned()),
            "stdio" => Backend::Stdio,
            name => match table_backend(name, &options)? {
                Some(kind) => Backend::Table(ChardevBackend { kind }),
                None if QEMU_BACKENDS.contains(&name) => {
                    return Err(format!(
                        "chardev backend '{name}' is not supported by storaged"
                    ))
                }
                None => return Err(format!("'{name}' is not a valid char driver name")),
            },
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
            id.clone(),
            Chardev {
                backend,
                in_use: false,
                opened: None,
                addr: None,
                connected: None,
            },
        );
        Ok((id, parsed.warnings))
    }

    /// Opens chardev `id`'s socket, if it is one, with QEMU's message; the
    /// chardev is forgotten if it cannot be opened. `info` gets what to
    /// print before `wait=on` waits.
    pub async fn open(&mut self, id: &str, info: impl FnOnce(String)) -> Result<(), String> {
        let Some(Backend::Socket(spec)) = self.by_id.get(id).map(|c| c.backend.clone()) else {
            return Ok(());
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let waiting = |bound: &qmp::BoundAddress| info(waiting_message(&spec, bound));
        match qmp::socket::open(&spec, &cancel, waiting).await {
            Ok(opened) => {
                if let Some(chardev) = self.by_id.get_mut(id) {
                    chardev.addr = Some(socket_address(&spec, opened.bound.as_ref()));
                    chardev.opened = Some(opened);
                }
                Ok(())
            }
            Err(error) => {
                self.by_id.remove(id);
                Err(open_error(&spec, &error))
            }
        }
    }

    /// `--monitor`: what to serve a monitor on, and its options. Marks the
    /// chardev used.
    pub fn attach_monitor(
        &mut self,
        text: &str,
    ) -> Result<(String, MonitorSource, qmp::MonitorOptions), String> {
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
        let source = match (&chardev.backend, chardev.opened.take()) {
            (_, Some(opened)) => MonitorSource::Socket(opened),
            (Backend::Stdio, None) => MonitorSource::Stdio,
            (Backend::Table(_), None) => {
                return Err(format!(
                    "chardev '{name}' cannot carry a monitor in storaged (use socket or stdio)"
                ))
            }
            (Backend::Socket(_), None) => return Err(format!("chardev '{name}' is not open")),
        };
        chardev.in_use = true;
        Ok((
            name.clone(),
            source,
            qmp::MonitorOptions {
                pretty: options.pretty.unwrap_or(false),
            },
        ))
    }

    /// The backend chardev `id` takes from the chardev table, if it does.
    pub fn table_backend(&self, id: &str) -> Option<&ChardevBackend> {
        match &self.by_id.get(id)?.backend {
            Backend::Table(backend) => Some(backend),
            _ => None,
        }
    }

    /// Every chardev that carries or may carry a monitor as
    /// `query-chardev` and the QOM tree show it, by id (the others are
    /// the chardev table's).
    pub fn rows(&self) -> Vec<ChardevRow> {
        let mut rows: Vec<ChardevRow> = self
            .by_id
            .iter()
            .filter_map(|(id, chardev)| {
                let (qom_type, description) = match &chardev.backend {
                    Backend::Socket(spec) => ("chardev-socket", socket_description(spec, None)),
                    Backend::Stdio => ("chardev-stdio", "stdio".to_owned()),
                    Backend::Table(_) => return None,
                };
                Some(ChardevRow {
                    id: id.clone(),
                    qom_type,
                    description,
                    frontend_open: chardev.in_use,
                    socket: chardev
                        .addr
                        .clone()
                        .map(|addr| (addr, chardev.connected.clone())),
                })
            })
            .collect();
        rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        rows
    }

    /// Chardev `id`'s monitor tells whether it has a client.
    pub fn monitor_serves(&mut self, id: &str, connected: Arc<AtomicBool>) {
        if let Some(chardev) = self.by_id.get_mut(id) {
            chardev.connected = Some(connected);
        }
    }

    /// The sockets no monitor took, to serve without one, by id.
    pub fn take_unused(&mut self) -> Vec<(String, SocketSpec, Opened)> {
        let mut unused: Vec<(String, SocketSpec, Opened)> = self
            .by_id
            .iter_mut()
            .filter_map(
                |(id, chardev)| match (&chardev.backend, chardev.opened.take()) {
                    (Backend::Socket(spec), Some(opened)) => {
                        Some((id.clone(), spec.clone(), opened))
                    }
                    _ => None,
                },
            )
            .collect();
        unused.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        unused
    }
}

/// QEMU's `qemu_chr_parse_*` of the backends `chardev-add` also creates:
/// the `ChardevBackend` `--chardev NAME,...` stands for, if it is one.
fn table_backend(
    name: &str,
    options: &ChardevOptions,
) -> Result<Option<ChardevBackendKind>, String> {
    let logfile = options.logfile.clone();
    let logappend = options.logappend;
    let ring = || Wrapped {
        data: ChardevRingbuf {
            logfile: logfile.clone(),
            logappend,
            size: options
                .size
                .map(|size| i64::try_from(size.bytes()).unwrap_or(i64::MAX)),
        },
    };
    Ok(Some(match name {
        "ringbuf" => ChardevBackendKind::Ringbuf(ring()),
        "memory" => ChardevBackendKind::Memory(ring()),
        "null" => ChardevBackendKind::Null(Wrapped {
            data: ChardevCommon { logfile, logappend },
        }),
        "file" => ChardevBackendKind::File(Wrapped {
            data: ChardevFile {
                logfile,
                logappend,
                r#in: options.input_path.clone(),
                out: options
                    .path
                    .clone()
                    .ok_or_else(|| "chardev: file: no filename given".to_owned())?,
                append: options.append,
            },
        }),
        "pipe" => ChardevBackendKind::Pipe(Wrapped {
            data: ChardevHostdev {
                logfile,
                logappend,
                device: options
                    .path
                    .clone()
                    .ok_or_else(|| "chardev: pipe: no device path given".to_owned())?,
            },
        }),
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmp::ListenAddress;
    use std::time::Duration;

    #[test]
    fn unix_and_tcp_server_sockets() {
        let mut chardevs = Chardevs::new();
        chardevs
            .define("socket,id=a,path=/tmp/a.sock,server=on,wait=off", false)
            .expect("unix socket");
        chardevs
            .define("socket,id=b,host=127.0.0.1,port=4444,server=on", false)
            .expect("tcp socket");
        chardevs
            .define("socket,id=c,path=/tmp/c.sock,reconnect-ms=500", false)
            .expect("client socket");
        let backend = |id: &str| chardevs.by_id[id].backend.clone();
        assert_eq!(
            backend("a"),
            Backend::Socket(SocketSpec::Listen {
                address: ListenAddress::Unix("/tmp/a.sock".into()),
                wait: false
            })
        );
        assert_eq!(
            backend("b"),
            Backend::Socket(SocketSpec::Listen {
                address: ListenAddress::Tcp {
                    host: "127.0.0.1".into(),
                    port: 4444
                },
                wait: true
            })
        );
        assert_eq!(
            backend("c"),
            Backend::Socket(SocketSpec::Connect {
                address: ListenAddress::Unix("/tmp/c.sock".into()),
                reconnect: Some(Duration::from_millis(500))
            })
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
        define("stdio,id=m").expect("valid");
        assert_eq!(
            chardevs.attach_monitor("nope").map(drop),
            Err("chardev \"nope\" not found".into())
        );
        assert_eq!(
            chardevs.attach_monitor("m,mode=readline").map(drop),
            Err("Only QMP is supported".into())
        );
        let (_, source, options) = chardevs
            .attach_monitor("m,pretty=on")
            .expect("first monitor");
        assert!(matches!(source, MonitorSource::Stdio));
        assert!(options.pretty);
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

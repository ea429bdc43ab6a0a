//! QEMU's socket chardev as its options read and it describes itself:
//! `--chardev socket,...` and `chardev-add`'s `ChardevSocket` both become
//! one [`SocketSpec`], which [`qmp::socket`] opens; and QEMU's words for
//! it (`query-chardev`'s description, the `addr` property, the message
//! while `wait=on` waits, the errors of a socket that cannot be opened).

use std::time::Duration;

use block::error::os_error_text;
use qmp::{ListenAddress, SocketSpec};
use schema::char::{ChardevOptions, ChardevSocket};
use schema::sockets::SocketAddressLegacyKind;
use serde_json::{json, Value as Json};

/// QEMU's description of a socket chardev (`unix:/path,server=on`,
/// `tcp:host:port`), with the port a listener bound to if known.
pub fn socket_description(spec: &SocketSpec, bound: Option<&qmp::BoundAddress>) -> String {
    let (address, server) = match spec {
        SocketSpec::Listen { address, .. } => (address, ",server=on"),
        SocketSpec::Connect { address, .. } => (address, ""),
    };
    let address = match (address, bound) {
        (_, Some(qmp::BoundAddress::Tcp(bound))) => format!("tcp:{}:{}", bound.ip(), bound.port()),
        (ListenAddress::Unix(path), _) => format!("unix:{}", path.display()),
        (ListenAddress::Tcp { host, port }, _) => format!("tcp:{host}:{port}"),
        (ListenAddress::Fd(fd), _) => format!("fd:{fd}"),
    };
    format!("{address}{server}")
}

/// QEMU's `addr` property of a socket chardev (a flat `SocketAddress`):
/// where it listens, else where it connects.
pub fn socket_address(spec: &SocketSpec, bound: Option<&qmp::BoundAddress>) -> Json {
    let (SocketSpec::Listen { address, .. } | SocketSpec::Connect { address, .. }) = spec;
    match (bound, address) {
        (Some(qmp::BoundAddress::Unix(path)), _) | (None, ListenAddress::Unix(path)) => {
            json!({"type": "unix", "path": path.display().to_string()})
        }
        (Some(qmp::BoundAddress::Tcp(bound)), _) => {
            let family = if bound.is_ipv4() { "ipv4" } else { "ipv6" };
            json!({"type": "inet", "host": bound.ip().to_string(),
                   "port": bound.port().to_string(), family: true})
        }
        (None, ListenAddress::Tcp { host, port }) => {
            json!({"type": "inet", "host": host, "port": port.to_string()})
        }
        (None, ListenAddress::Fd(fd)) => json!({"type": "fd", "str": fd.to_string()}),
    }
}

/// What QEMU prints while `wait=on` waits for a first client.
pub fn waiting_message(spec: &SocketSpec, bound: &qmp::BoundAddress) -> String {
    format!(
        "QEMU waiting for connection on: disconnected:{}",
        socket_description(spec, Some(bound))
    )
}

/// QEMU's wording of a socket chardev that could not be opened.
pub fn open_error(spec: &SocketSpec, error: &std::io::Error) -> String {
    match spec {
        SocketSpec::Connect { address, .. } => {
            let target = match address {
                ListenAddress::Unix(path) => path.display().to_string(),
                ListenAddress::Tcp { host, port } => format!("{host}:{port}"),
                ListenAddress::Fd(fd) => fd.to_string(),
            };
            format!("Failed to connect to '{target}': {}", os_error_text(error))
        }
        SocketSpec::Listen { address, .. } => match address {
            ListenAddress::Unix(path) => format!(
                "Failed to bind socket to {}: {}",
                path.display(),
                os_error_text(error)
            ),
            ListenAddress::Tcp { host, port } => format!(
                "Failed to bind socket to {host}:{port}: {}",
                os_error_text(error)
            ),
            // QEMU's words when the descriptor is no socket.
            ListenAddress::Fd(fd) => format!("File descriptor '{fd}' is not a socket"),
        },
    }
}

/// Refuses the socket options storaged does not offer.
fn refuse_unsupported(options: [(&str, Option<bool>); 3], tls_creds: bool) -> Result<(), String> {
    let set = options
        .iter()
        .map(|&(name, value)| (name, value == Some(true)))
        .chain([("tls-creds", tls_creds)]);
    match set.into_iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(format!(
            "socket chardev option '{name}' is not supported by storaged"
        )),
        None => Ok(()),
    }
}

/// A client's delay before connecting again (`reconnect` seconds or
/// `reconnect-ms`); none for zero.
fn reconnect_delay(seconds: Option<u64>, ms: Option<u64>) -> Result<Option<Duration>, String> {
    Ok(match (seconds, ms) {
        (Some(_), Some(_)) => {
            return Err("'reconnect' and 'reconnect-ms' are mutually exclusive".to_owned())
        }
        (Some(seconds), None) => Some(Duration::from_secs(seconds)),
        (None, Some(ms)) => Some(Duration::from_millis(ms)),
        (None, None) => None,
    }
    .filter(|delay| !delay.is_zero()))
}

/// A TCP port as QEMU's address resolution reads it.
fn parse_port(host: &str, port: &str) -> Result<u16, String> {
    port.parse().map_err(|_| {
        format!(
            "address resolution failed for {host}:{port}: Servname not supported for ai_socktype"
        )
    })
}

const RECONNECT_WITH_SERVER: &str =
    "'reconnect' option is incompatible with socket in server listen mode";

/// `--chardev socket,...`: listening with `server=on` (`wait` on by
/// default), else connecting.
pub fn socket_backend(options: &ChardevOptions) -> Result<SocketSpec, String> {
    refuse_unsupported(
        [
            ("telnet", options.telnet),
            ("tn3270", options.tn3270),
            ("websocket", options.websocket),
        ],
        options.tls_creds.is_some(),
    )?;
    let server = options.server == Some(true);
    if server && (options.reconnect.is_some() || options.reconnect_ms.is_some()) {
        return Err(RECONNECT_WITH_SERVER.to_owned());
    }
    if !server {
        return client_backend(options);
    }
    let wait = options.wait.unwrap_or(true);
    if let Some(name) = &options.fd {
        // A listening socket inherited by name (systemd) or number.
        let fd = crate::socket_activation::resolve(name)?;
        return Ok(SocketSpec::Listen {
            address: ListenAddress::Fd(fd),
            wait,
        });
    }
    if let Some(path) = &options.path {
        return Ok(SocketSpec::Listen {
            address: ListenAddress::Unix(path.into()),
            wait,
        });
    }
    let host = options.host.clone().unwrap_or_default();
    let port = options
        .port
        .as_deref()
        .ok_or_else(|| "chardev: socket: no port given".to_owned())?;
    let port = parse_port(&host, port)?;
    Ok(SocketSpec::Listen {
        address: ListenAddress::Tcp { host, port },
        wait,
    })
}

/// A client-mode socket: where to connect, and how soon to connect again.
fn client_backend(options: &ChardevOptions) -> Result<SocketSpec, String> {
    let reconnect = reconnect_delay(options.reconnect, options.reconnect_ms)?;
    let address = match (&options.path, &options.port) {
        (Some(path), _) => ListenAddress::Unix(path.into()),
        (None, Some(port)) => ListenAddress::Tcp {
            host: options
                .host
                .clone()
                .unwrap_or_else(|| "localhost".to_owned()),
            port: parse_port(options.host.as_deref().unwrap_or(""), port)?,
        },
        (None, None) => return Err("chardev: socket: no port given".to_owned()),
    };
    Ok(SocketSpec::Connect { address, reconnect })
}

/// `chardev-add`'s socket, with QMP's defaults (`server` on, `wait` off;
/// a listener ignores `reconnect-ms`, as QEMU 10).
pub fn qmp_socket_spec(socket: &ChardevSocket) -> Result<SocketSpec, String> {
    refuse_unsupported(
        [
            ("telnet", socket.telnet),
            ("tn3270", socket.tn3270),
            ("websocket", socket.websocket),
        ],
        socket.tls_creds.is_some(),
    )?;
    let server = socket.server.unwrap_or(true);
    if server && socket.reconnect.is_some() {
        return Err(RECONNECT_WITH_SERVER.to_owned());
    }
    let address = match &socket.addr.addr {
        SocketAddressLegacyKind::Unix(unix) if unix.data.r#abstract == Some(true) => {
            return Err("abstract Unix socket addresses are not supported by storaged".to_owned())
        }
        SocketAddressLegacyKind::Unix(unix) => ListenAddress::Unix(unix.data.path.clone().into()),
        SocketAddressLegacyKind::Inet(inet) => ListenAddress::Tcp {
            host: inet.data.host.clone(),
            port: parse_port(&inet.data.host, &inet.data.port)?,
        },
        SocketAddressLegacyKind::Fd(fd)
            if !fd.data.str.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            return Err("only QEMU supports file descriptor passing".to_owned())
        }
        SocketAddressLegacyKind::Fd(_) => {
            return Err(
                "descriptor addresses are not supported by storaged in chardev-add".to_owned(),
            )
        }
        SocketAddressLegacyKind::Vsock(_) => {
            return Err("vsock addresses are not supported by storaged".to_owned())
        }
    };
    if server {
        return Ok(SocketSpec::Listen {
            address,
            wait: socket.wait.unwrap_or(false),
        });
    }
    let non_negative = |value: Option<i64>| value.map(|v| u64::try_from(v).unwrap_or(0));
    let reconnect = reconnect_delay(
        non_negative(socket.reconnect),
        non_negative(socket.reconnect_ms),
    )?;
    Ok(SocketSpec::Connect { address, reconnect })
}

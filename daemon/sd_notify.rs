//! The systemd notification protocol (`sd_notify`), for `Type=notify`
//! services: `READY=1` once every option of the command line is in force
//! (every export and monitor listens), `STOPPING=1` when the daemon begins
//! to stop, and `STATUS=` lines saying what it does, as one datagram each
//! to the Unix socket `$NOTIFY_SOCKET` names (a path, or an abstract name
//! after `@`).
//!
//! [`adopt_from_environment`] reads the variable once, at the start of
//! `main`, and removes it so nothing the daemon runs inherits it. Without
//! it every notification is a no-op; a notification that cannot be sent
//! is logged and otherwise ignored, as `sd_notify` callers do.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

static SOCKET: OnceLock<Option<String>> = OnceLock::new();

/// Reads `NOTIFY_SOCKET` and removes it from the environment. Call it
/// first thing in `main`, before any thread exists.
pub fn adopt_from_environment() {
    let socket = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty());
    std::env::remove_var("NOTIFY_SOCKET");
    let _ = SOCKET.set(socket);
}

/// The daemon serves: every export and monitor listens.
pub fn ready(status: &str) {
    notify(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
}

/// The daemon begins to stop.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=Stopping");
}

/// Startup failed with `message` (the daemon exits next).
pub fn failed(message: &str) {
    notify(&format!("STATUS=Failed to start: {message}"));
}

fn notify(message: &str) {
    let Some(Some(path)) = SOCKET.get() else {
        return;
    };
    if let Err(error) = send(path, message) {
        tracing::warn!("cannot notify the service manager at {path}: {error}");
    }
}

fn send(path: &str, message: &str) -> std::io::Result<()> {
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(message.as_bytes(), &address)?;
    Ok(())
}

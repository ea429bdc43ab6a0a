//! systemd socket activation (`sd_listen_fds_with_names`): the listening
//! sockets a service manager passed to the daemon, by name.
//!
//! systemd (or `systemd-socket-activate`) starts the daemon with the
//! sockets of its `.socket` unit open from descriptor 3 on, and sets
//! `LISTEN_PID` (the daemon's pid), `LISTEN_FDS` (how many) and
//! `LISTEN_FDNAMES` (their `FileDescriptorName=`s, colon-separated;
//! `unknown` where none is given). [`adopt_from_environment`] reads them
//! once, at the very start of `main` while only one thread exists, marks
//! the descriptors close-on-exec and removes the variables, so nothing the
//! daemon runs inherits them.
//!
//! Where QEMU's options take a descriptor (`--nbd-server
//! addr.type=fd,addr.str=NAME`, `--chardev socket,fd=NAME`), `NAME` may be
//! such a name: [`resolve`] hands out the first socket of that name not yet
//! used (so a name given to several sockets serves several options), or a
//! descriptor number as QEMU accepts. This module owns nothing else: the
//! server or monitor that adopts a socket owns it from then on.

use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The most descriptors accepted from the environment (systemd's own limit
/// on a socket unit's is far lower); bounds the table.
const MAX_LISTEN_FDS: usize = 1024;

/// An inherited socket: its name, and its descriptor until an option
/// takes it.
struct Inherited {
    name: String,
    fd: Option<RawFd>,
}

fn inherited() -> &'static Mutex<Vec<Inherited>> {
    static INHERITED: OnceLock<Mutex<Vec<Inherited>>> = OnceLock::new();
    INHERITED.get_or_init(Mutex::default)
}

/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` if they are meant
/// for this process, and removes them from the environment. Call it first
/// thing in `main`, before any thread exists.
pub fn adopt_from_environment() {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(variable);
    }
    let for_us = pid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = count.and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
    if !for_us || count == 0 {
        return;
    }
    let count = count.min(MAX_LISTEN_FDS);
    let names: Vec<&str> = names
        .as_deref()
        .map_or(Vec::new(), |n| n.split(':').collect());
    let mut table = inherited().lock().unwrap_or_else(|e| e.into_inner());
    for index in 0..count {
        let fd = LISTEN_FDS_START + index as RawFd;
        // SAFETY: F_SETFD on a descriptor number changes only its flags;
        // a number that is not open fails with EBADF and is skipped.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            continue;
        }
        let name = names.get(index).copied().unwrap_or("unknown");
        table.push(Inherited {
            name: name.to_owned(),
            fd: Some(fd),
        });
    }
}

/// The descriptor an option names: the first unused inherited socket
/// called `name`, or else `name` as a number (QEMU's syntax). The caller
/// takes the socket over.
pub fn resolve(name: &str) -> Result<RawFd, String> {
    let mut table = inherited().lock().unwrap_or_else(|e| e.into_inner());
    let unused = table
        .iter_mut()
        .find(|socket| socket.name == name && socket.fd.is_some());
    if let Some(socket) = unused {
        return socket.fd.take().ok_or_else(|| unparsable(name));
    }
    name.parse::<RawFd>().map_err(|_| unparsable(name))
}

/// QEMU's message for a descriptor name it does not know.
fn unparsable(name: &str) -> String {
    format!("Unable to parse FD number {name}")
}

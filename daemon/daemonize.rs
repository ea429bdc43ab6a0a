//! `--daemonize`, as QEMU's `os_daemonize` and `os_setup_post` do it.
//!
//! The process forks before anything else starts (no threads may exist at
//! a fork: the tokio runtime is built afterwards). The parent waits on a
//! pipe: it exits 0 when the daemon writes a zero byte (startup complete),
//! and 1 when the pipe closes without it (startup failed; the daemon has
//! printed why on the stderr they share). The child starts a new session
//! and forks again so the daemon can never reacquire a terminal; the
//! daemon sets umask 027 and, once ready, changes to `/` and points its
//! standard streams at `/dev/null`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The write end of the pipe the original parent waits on.
#[derive(Debug)]
pub struct ReadyNotifier {
    pipe: File,
}

/// Daemonizes. Returns only in the daemon (the grandchild); the original
/// process and the intermediate child exit here.
///
/// Must be called while the process has a single thread.
pub fn daemonize() -> std::io::Result<ReadyNotifier> {
    let (read_end, write_end) = pipe()?;
    match fork()? {
        Fork::Parent => {
            drop(write_end);
            std::process::exit(wait_for_ready(read_end));
        }
        Fork::Child => drop(read_end),
    }
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    match fork()? {
        // The intermediate child: its exit reparents the daemon to init.
        // `_exit` skips the atexit handlers and buffers the daemon owns.
        // SAFETY: _exit never returns and has no preconditions.
        Fork::Parent => unsafe { libc::_exit(0) },
        Fork::Child => {}
    }
    // SAFETY: umask has no memory-safety preconditions.
    unsafe { libc::umask(0o027) };
    ignore_terminal_signals();
    Ok(ReadyNotifier {
        pipe: File::from(write_end),
    })
}

impl ReadyNotifier {
    /// Startup is complete: release the parent with status 0, move to `/`
    /// and detach the standard streams.
    pub fn ready(mut self) -> std::io::Result<()> {
        std::env::set_current_dir("/")?;
        self.pipe.write_all(&[0])?;
        redirect_stdio_to_null()
    }
}

/// The exit status for the waiting parent: 0 only if the daemon reported
/// success.
fn wait_for_ready(read_end: OwnedFd) -> i32 {
    let mut pipe = File::from(read_end);
    let mut status = [0u8; 1];
    loop {
        match pipe.read(&mut status) {
            Ok(1) if status[0] == 0 => return 0,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return 1,
        }
    }
}

enum Fork {
    Parent,
    Child,
}

fn fork() -> std::io::Result<Fork> {
    // SAFETY: the caller guarantees the process is single-threaded, so the
    // child's copy of the address space is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        _ => Ok(Fork::Parent),
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn ignore_terminal_signals() {
    for signal in [libc::SIGTSTP, libc::SIGTTOU, libc::SIGTTIN] {
        // SAFETY: SIG_IGN is a valid disposition for these signals.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

fn redirect_stdio_to_null() -> std::io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: both descriptors are open; dup2 replaces `target`
        // atomically.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

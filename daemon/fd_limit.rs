//! The open-file limit: raised at start from the soft limit (often 1024,
//! or less under a service manager) to the hard one, as QEMU does, so
//! that the daemon's own ceiling on clients (`max-connections`, one
//! frontend per vhost-user socket, ...) is what limits it, not a default
//! meant for interactive shells.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; a failure leaves
/// the limit as it was (and is logged at debug level).
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads one rlimit from `limit`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        tracing::debug!(
            "cannot raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

//! Running a blocking system call from async code without stalling the
//! runtime and without giving up borrowed buffers.
//!
//! On tokio's multi-threaded runtime, `block_in_place` hands the worker's
//! other tasks to another thread while this one blocks; the call runs on
//! the current thread, so it may borrow the caller's buffer (no copy, no
//! `'static` bound). Elsewhere (a current-thread runtime, or no runtime)
//! the call simply runs inline.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, which may block, from an async context.
pub(crate) fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

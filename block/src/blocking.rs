//! Running system calls that may block (a page-cache miss, `fdatasync`,
//! `fallocate` on a slow file system) so that no event loop stalls on a
//! disk.
//!
//! At most [`MAX_BLOCKING_CALLS`] run at a time across the daemon (more
//! wait their turn), so a flood of slow requests cannot take hundreds of
//! threads. On a single-threaded event loop (an NBD connection's loop, an
//! iothread) the call goes to tokio's blocking thread pool; it
//! owns what it uses (an [`crate::IoBuf`] view, a shared descriptor), so
//! if the request is dropped meanwhile the call finishes on its own and
//! its memory lives until then. On the daemon's multi-threaded runtime
//! the call runs in place (`block_in_place`): the worker hands its other
//! tasks to another thread while it waits, and the request saves two
//! thread hand-overs (measured: cold 4 KiB random reads over NBD at depth
//! 32 cost 55 µs of server CPU per request through the pool, 35 in
//! place). Outside a runtime (tools, some tests) the call runs inline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

thread_local! {
    /// Calls this thread has handed to the blocking pool so far.
    static HANDED_OVER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Set while this thread polls requests that must not block it (see
    /// [`polling_without_blocking`]).
    static MUST_NOT_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `poll` (which polls request futures on a thread outside the
/// runtime's workers, such as a virtqueue's thread) so that a call that
/// would block goes to the blocking pool instead of running in place:
/// the future then waits, and its caller hands it to the runtime.
fn polling_without_blocking<R>(poll: impl FnOnce() -> R) -> R {
    let before = MUST_NOT_BLOCK.with(|flag| flag.replace(true));
    let result = poll();
    MUST_NOT_BLOCK.with(|flag| flag.set(before));
    result
}

/// Polls `future` once, here, within `runtime`'s context and without
/// blocking (see [`polling_without_blocking`]): a request that needs no
/// waiting (a page-cache hit, cached metadata) is done on the thread that
/// received it, with no hand-over. On `Pending` the caller hands the
/// future to `runtime`, whose first poll registers the waker that counts
/// (this one wakes nothing).
pub fn poll_here<F: Future + ?Sized>(runtime: &Handle, future: Pin<&mut F>) -> Poll<F::Output> {
    let _runtime = runtime.enter();
    let mut cx = Context::from_waker(Waker::noop());
    polling_without_blocking(|| future.poll(&mut cx))
}

/// How many blocking calls this thread has handed to the pool so far: a
/// caller that sees it grow across a poll knows the request waits for a
/// disk (not, say, for a lock), and can plan for more such waits.
pub fn handed_over() -> u64 {
    HANDED_OVER.with(|n| n.get())
}

/// Blocking calls in progress at once, daemon-wide.
pub(crate) const MAX_BLOCKING_CALLS: usize = 64;

fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(MAX_BLOCKING_CALLS))
}

/// Runs `f`, which may block, on the blocking pool and waits for its
/// result. Cancel-safe: dropping the future lets a started call finish.
pub(crate) async fn offload<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let Ok(handle) = Handle::try_current() else {
        return f();
    };
    // Either way the call takes a thread of its own while it blocks (in
    // place, tokio starts another worker): the slots bound them.
    let _slot = slots()
        .acquire()
        .await
        .map_err(|_| io::Error::other("blocking pool closed"))?;
    let in_place = handle.runtime_flavor() == RuntimeFlavor::MultiThread
        && !MUST_NOT_BLOCK.with(|flag| flag.get());
    if in_place {
        return tokio::task::block_in_place(f);
    }
    HANDED_OVER.with(|n| n.set(n.get() + 1));
    match handle.spawn_blocking(f).await {
        Ok(result) => result,
        // The runtime is shutting down, or the call panicked.
        Err(e) => Err(io::Error::other(format!("blocking call failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn calls_leave_a_single_threaded_loop() {
        let polling = std::thread::current().id();
        let ran_on = offload(|| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(ran_on, polling);
    }

    #[test]
    fn without_a_runtime_calls_run_inline() {
        let here = std::thread::current().id();
        let ran_on = poll_once(offload(|| Ok(std::thread::current().id())));
        assert_eq!(ran_on.unwrap(), here);
    }

    /// Polls a future that completes without waiting.
    fn poll_once<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("the inline call waited"),
        }
    }
}

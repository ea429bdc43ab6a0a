//! Event loops: a thread running a single-threaded tokio runtime, in the
//! manner of QEMU's `AioContext` in an iothread. The NBD server's own pool
//! and the `iothread` objects are both made of these.
//!
//! A loop counts the connections seated on it, so that a connection alone
//! on its loop may poll its socket between requests (nobody else waits
//! on that loop). A loop runs until its [`EventLoop`] is dropped; tasks
//! still on it are then dropped with its runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// One thread and its event loop.
pub struct EventLoop {
    handle: Handle,
    /// The thread's id (as `gettid` gives it).
    thread_id: i64,
    connections: AtomicUsize,
    /// Cancelled when the loop must end.
    stop: CancellationToken,
}

impl EventLoop {
    /// Starts a loop on a new thread named `name`.
    pub fn start(name: &str) -> std::io::Result<Arc<EventLoop>> {
        // The runtime is built, run and dropped on its own thread: dropping
        // one on a thread of another runtime is not allowed.
        let (started, handle) = std::sync::mpsc::channel();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let thread_id = i64::from(unsafe { libc::gettid() });
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = started.send(Ok((runtime.handle().clone(), thread_id)));
                        runtime.block_on(stopped.cancelled());
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                }
            })?;
        let (handle, thread_id) = handle
            .recv()
            .map_err(|_| std::io::Error::other("the event loop thread ended"))??;
        Ok(Arc::new(EventLoop {
            handle,
            thread_id,
            connections: AtomicUsize::new(0),
            stop,
        }))
    }

    /// Where to spawn the loop's tasks.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn thread_id(&self) -> i64 {
        self.thread_id
    }

    /// Connections seated on the loop now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Seats a connection on the loop until the seat is dropped.
    pub fn seat(self: &Arc<Self>) -> Seat {
        self.connections.fetch_add(1, Ordering::Relaxed);
        Seat(Arc::clone(self))
    }

    /// A loop that is the current runtime (for tests).
    #[cfg(test)]
    pub fn current() -> Arc<EventLoop> {
        Arc::new(EventLoop {
            handle: Handle::current(),
            thread_id: 0,
            connections: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        })
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A connection's place on a loop, given up when dropped.
pub struct Seat(Arc<EventLoop>);

impl Seat {
    pub fn event_loop(&self) -> &Arc<EventLoop> {
        &self.0
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

//! The event loops NBD connections run on.
//!
//! Connections are spread over a few threads, each with an event loop of
//! its own (in the manner of QEMU's iothreads); a new connection joins
//! the loop with the fewest. A connection alone on its
//! loop may poll its socket between requests (`poll`): nobody else waits
//! on that loop, and no other thread is woken for its packets, which is
//! what makes polling cheap; so at most one connection per loop polls. Connections share the daemon's runtime only
//! if no loop could be started.
//!
//! Request handlers that may wait (large or blocking I/O) run on the
//! daemon's runtime either way (`ConnectionConfig::runtime`), whose
//! threads may block without stalling a loop.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

/// One thread and its event loop.
pub struct EventLoop {
    handle: Handle,
    connections: AtomicUsize,
}

/// Where a connection runs.
#[derive(Clone)]
pub enum Placement {
    /// On an event loop of the pool.
    Loop(Arc<EventLoop>),
    /// On the daemon's runtime, among its other tasks.
    Shared,
}

impl Placement {
    /// Whether the connection may poll its socket now: only while it is
    /// alone on its loop.
    pub fn may_poll(&self) -> bool {
        match self {
            Placement::Loop(event_loop) => event_loop.connections.load(Ordering::Relaxed) == 1,
            Placement::Shared => false,
        }
    }
}

#[cfg(test)]
impl Placement {
    /// A connection alone on a loop made of the current runtime.
    pub fn alone() -> Placement {
        Placement::Loop(Arc::new(EventLoop {
            handle: Handle::current(),
            connections: AtomicUsize::new(1),
        }))
    }
}

/// Starts `connection` on the least busy event loop (or on `runtime` if
/// there is none). `connection` makes its future on the loop it will run
/// on, since sockets register with the event loop current when they are
/// made. `tasks` tracks it.
pub fn spawn_connection<F, Fut>(runtime: &Handle, tasks: &TaskTracker, connection: F)
where
    F: FnOnce(Placement) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(event_loop) = event_loops()
        .iter()
        .min_by_key(|l| l.connections.load(Ordering::Relaxed))
    else {
        tasks.spawn_on(connection(Placement::Shared), runtime);
        return;
    };
    let seat = Seat::take(event_loop);
    let placement = Placement::Loop(Arc::clone(event_loop));
    tasks.spawn_on(
        async move {
            connection(placement).await;
            drop(seat);
        },
        &event_loop.handle,
    );
}

/// A connection's place on a loop, given up when dropped.
struct Seat(Arc<EventLoop>);

impl Seat {
    fn take(event_loop: &Arc<EventLoop>) -> Seat {
        event_loop.connections.fetch_add(1, Ordering::Relaxed);
        Seat(Arc::clone(event_loop))
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pool, started on first use: a loop per two CPUs (at least one),
/// which leaves CPUs to the request handlers and to local clients (and,
/// with few loops, their replies coincide less with clients reading
/// theirs: loopback TCP costs the client more when they do). Loops run
/// until the process ends.
fn event_loops() -> &'static [Arc<EventLoop>] {
    static LOOPS: OnceLock<Vec<Arc<EventLoop>>> = OnceLock::new();
    LOOPS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = (cpus / 2).max(1);
        (0..count)
            .filter_map(|index| match start_loop(index) {
                Ok(event_loop) => Some(event_loop),
                Err(e) => {
                    tracing::warn!("cannot start NBD event loop {index}: {e}");
                    None
                }
            })
            .collect()
    })
}

fn start_loop(index: usize) -> std::io::Result<Arc<EventLoop>> {
    // The runtime is built, run and dropped on its own thread: dropping
    // one on a thread of the daemon's runtime is not allowed.
    let (started, handle) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("nbd-loop-{index}"))
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let _ = started.send(Ok(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                }
            }
        })?;
    let handle = handle
        .recv()
        .map_err(|_| std::io::Error::other("the event loop thread ended"))??;
    Ok(Arc::new(EventLoop {
        handle,
        connections: AtomicUsize::new(0),
    }))
}

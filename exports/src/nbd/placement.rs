//! The event loops NBD connections run on.
//!
//! Connections are spread over a pool of event loops
//! ([`crate::event_loop`]), a loop per CPU; a new connection joins the
//! loop with the fewest for its handshake. A loop copies its connections'
//! payloads between socket and file (and, with TLS, encrypts them): with
//! fewer loops than CPUs, a client's connections took turns on one CPU
//! while another idled, and each received payload was read from the
//! cache of the CPU the client had written it on. A connection to an
//! export with an `iothread` then moves to that iothread's loop for its
//! transmission. A connection alone on its loop may poll its socket
//! between requests (`poll`): nobody else waits on that loop, and no
//! other thread is woken for its packets, which is what makes polling
//! cheap; so at most one connection per loop polls. Connections share the
//! daemon's runtime only if no loop could be started.
//!
//! Request handlers that may wait (large or blocking I/O) run on the
//! daemon's runtime either way (`ConnectionConfig::runtime`), whose
//! threads may block without stalling a loop.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::event_loop::{EventLoop, Seat};

/// Where a connection runs.
pub enum Placement {
    /// On an event loop (of the pool, or an export's iothread).
    Loop(Seat),
    /// On the daemon's runtime, among its other tasks.
    Shared,
}

impl Placement {
    /// Whether the connection may poll its socket now: only while it is
    /// alone on its loop.
    pub fn may_poll(&self) -> bool {
        match self {
            Placement::Loop(seat) => seat.event_loop().connections() == 1,
            Placement::Shared => false,
        }
    }

    /// Whether the connection runs on `event_loop`.
    pub fn is_on(&self, event_loop: &Arc<EventLoop>) -> bool {
        match self {
            Placement::Loop(seat) => Arc::ptr_eq(seat.event_loop(), event_loop),
            Placement::Shared => false,
        }
    }
}

#[cfg(test)]
impl Placement {
    /// A connection alone on a loop made of the current runtime.
    pub fn alone() -> Placement {
        Placement::Loop(EventLoop::current().seat())
    }
}

/// Starts `connection` on the least busy event loop of the pool (or on
/// `runtime` if there is none). `connection` makes its future on the loop
/// it will run on, since sockets register with the event loop current
/// when they are made. `tasks` tracks it.
pub fn spawn_connection<F, Fut>(runtime: &Handle, tasks: &TaskTracker, connection: F)
where
    F: FnOnce(Placement) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match event_loops().iter().min_by_key(|l| l.connections()) {
        Some(event_loop) => spawn_on(event_loop, tasks, connection),
        None => {
            tasks.spawn_on(connection(Placement::Shared), runtime);
        }
    }
}

/// Starts `connection` on `event_loop` (an export's iothread, or one of
/// the pool), seated there while it runs.
pub fn spawn_on<F, Fut>(event_loop: &Arc<EventLoop>, tasks: &TaskTracker, connection: F)
where
    F: FnOnce(Placement) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let placement = Placement::Loop(event_loop.seat());
    tasks.spawn_on(
        async move { connection(placement).await },
        event_loop.handle(),
    );
}

/// The pool, started on first use: a loop per CPU, named `nbd-loop-N`,
/// less those that cannot start. Loops run until the process ends.
fn event_loops() -> &'static [Arc<EventLoop>] {
    static LOOPS: OnceLock<Vec<Arc<EventLoop>>> = OnceLock::new();
    LOOPS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..cpus)
            .filter_map(|index| {
                let name = format!("nbd-loop-{index}");
                EventLoop::start(&name)
                    .inspect_err(|e| tracing::warn!("cannot start NBD event loop {name}: {e}"))
                    .ok()
            })
            .collect()
    })
}

//! Where a connection runs.
//!
//! Each connection gets a thread of its own, with an event loop of its
//! own, while fewer than [`MAX_CONNECTION_THREADS`] are running: its
//! socket is then watched by that thread alone, so the connection can
//! poll the socket between requests (`poll`) without another thread
//! being woken for every packet, and a busy connection never waits behind
//! another one. Past the limit, or when a thread's event loop cannot be
//! built, connections share the daemon's runtime and do not poll.
//!
//! Request handlers that may wait (large or blocking I/O) run on the
//! daemon's runtime either way (`ConnectionConfig::runtime`), whose
//! threads may block without stalling a connection.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

/// Connections of the whole daemon served on threads of their own.
pub const MAX_CONNECTION_THREADS: usize = 256;

/// How a connection was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Alone on its thread: it may poll its socket.
    OwnThread,
    /// On the daemon's runtime, among other tasks: it must not poll.
    Shared,
}

static CONNECTION_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Starts `connection` on a thread of its own if the limit allows, else
/// on `runtime`. `connection` builds its future on the runtime it will
/// run on (sockets register with the event loop current when they are
/// made). `tasks` tracks it either way.
pub fn spawn_connection<F, Fut>(runtime: &Handle, tasks: &TaskTracker, connection: F)
where
    F: FnOnce(Placement) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(slot) = ThreadSlot::claim() else {
        tasks.spawn_on(connection(Placement::Shared), runtime);
        return;
    };
    let event_loop = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(event_loop) => event_loop,
        Err(e) => {
            tracing::warn!("NBD connection shares the daemon's runtime: {e}");
            tasks.spawn_on(connection(Placement::Shared), runtime);
            return;
        }
    };
    let token = tasks.token();
    let started = std::thread::Builder::new()
        .name("nbd-connection".to_string())
        .spawn(move || {
            event_loop.block_on(connection(Placement::OwnThread));
            drop((token, slot));
        });
    if let Err(e) = started {
        tracing::warn!("NBD connection dropped: cannot start its thread: {e}");
    }
}

/// One of the [`MAX_CONNECTION_THREADS`], released when dropped.
struct ThreadSlot;

impl ThreadSlot {
    fn claim() -> Option<ThreadSlot> {
        CONNECTION_THREADS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CONNECTION_THREADS).then_some(n + 1)
            })
            .ok()
            .map(|_| ThreadSlot)
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        CONNECTION_THREADS.fetch_sub(1, Ordering::AcqRel);
    }
}

//! `iothread` objects: named event loops that exports run their requests
//! in (QSD's `--object iothread,id=...`). Each is a thread of its own
//! ([`EventLoop`]), started when the object is created and ended when the
//! object is deleted and no export uses it any more.
//!
//! The polling properties keep QEMU's meaning where storaged polls: an
//! NBD connection alone on the iothread polls its socket for at most
//! `poll-max-ns` between requests. `poll-grow`, `poll-shrink` and
//! `aio-max-batch` are kept and reported.

use std::sync::Arc;
use std::time::Duration;

use schema::introspect::Introspect;
use serde::Serialize;

use crate::event_loop::EventLoop;

/// QEMU's `poll-max-ns` when an iothread does not set it.
pub const DEFAULT_POLL_MAX_NS: u64 = 32768;

/// The tuning properties of an iothread (QEMU's defaults: 32768, 0, 0, 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoThreadPoll {
    pub poll_max_ns: u64,
    pub poll_grow: u64,
    pub poll_shrink: u64,
    pub aio_max_batch: u64,
}

impl Default for IoThreadPoll {
    fn default() -> Self {
        IoThreadPoll {
            poll_max_ns: DEFAULT_POLL_MAX_NS,
            poll_grow: 0,
            poll_shrink: 0,
            aio_max_batch: 0,
        }
    }
}

/// One row of `query-iothreads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct IoThreadInfo {
    pub id: String,
    pub thread_id: i64,
    pub poll_max_ns: u64,
    pub poll_grow: u64,
    pub poll_shrink: u64,
    pub aio_max_batch: u64,
}

/// A running iothread.
pub struct IoThread {
    id: String,
    event_loop: Arc<EventLoop>,
    poll: IoThreadPoll,
}

impl IoThread {
    /// Starts the thread of iothread `id` (named `IO <id>`, as QEMU's).
    pub fn start(id: &str, poll: IoThreadPoll) -> std::io::Result<Arc<IoThread>> {
        // Thread names are at most 15 bytes.
        let name: String = format!("IO {id}").chars().take(15).collect();
        Ok(Arc::new(IoThread {
            id: id.to_string(),
            event_loop: EventLoop::start(&name)?,
            poll,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn event_loop(&self) -> &Arc<EventLoop> {
        &self.event_loop
    }

    /// The longest an NBD connection alone here polls between requests.
    pub fn poll_limit(&self) -> Duration {
        Duration::from_nanos(self.poll.poll_max_ns)
    }

    pub fn info(&self) -> IoThreadInfo {
        IoThreadInfo {
            id: self.id.clone(),
            thread_id: self.event_loop.thread_id(),
            poll_max_ns: self.poll.poll_max_ns,
            poll_grow: self.poll.poll_grow,
            poll_shrink: self.poll.poll_shrink,
            aio_max_batch: self.poll.aio_max_batch,
        }
    }
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread")
            .field("id", &self.id)
            .field("thread_id", &self.event_loop.thread_id())
            .finish()
    }
}

/// Two handles are equal when they are the same thread.
impl PartialEq for IoThread {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for IoThread {}

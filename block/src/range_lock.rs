//! Ordering of requests that touch the same units of a node (qcow2's
//! guest clusters, the blocks of a node whose requests must be aligned).
//!
//! A request locks the range of units it touches, shared or exclusive
//! (qcow2: anything that changes an L2 entry; the node layer: a
//! read-modify-write of partial blocks). Requests on disjoint ranges
//! never wait for each other. Conflicting
//! requests are served in arrival order: a request waits for every earlier
//! conflicting one, granted or still waiting, so a stream of readers
//! cannot starve a writer and two writes to one cluster land in the order
//! they arrived.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

struct Entry {
    id: u64,
    start: u64,
    end: u64,
    exclusive: bool,
}

impl Entry {
    fn conflicts(&self, other: &Entry) -> bool {
        (self.exclusive || other.exclusive) && self.start < other.end && other.start < self.end
    }
}

#[derive(Default)]
struct LockState {
    /// Held and waiting locks in arrival order.
    entries: Vec<Entry>,
    next_id: u64,
}

/// Range locks over unit indices.
#[derive(Default)]
pub struct RangeLocks {
    state: Mutex<LockState>,
    released: Notify,
}

/// A held lock; released on drop.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.locks.state();
        state.entries.retain(|e| e.id != self.id);
        drop(state);
        self.locks.released.notify_waiters();
    }
}

impl RangeLocks {
    fn state(&self) -> MutexGuard<'_, LockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks units `[start, end)`. Cancel safe: a lock dropped
    /// while waiting leaves the queue.
    pub async fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let guard = {
            let mut state = self.state();
            let id = state.next_id;
            state.next_id += 1;
            state.entries.push(Entry {
                id,
                start,
                end,
                exclusive,
            });
            RangeGuard { locks: self, id }
        };
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.grantable(guard.id) {
                return guard;
            }
            released.await;
        }
    }

    /// Whether no earlier entry conflicts with entry `id`.
    fn grantable(&self, id: u64) -> bool {
        let state = self.state();
        let Some(pos) = state.entries.iter().position(|e| e.id == id) else {
            return false;
        };
        let me = &state.entries[pos];
        !state.entries[..pos].iter().any(|e| e.conflicts(me))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn shared_locks_coexist_and_exclusive_waits() {
        let locks = Arc::new(RangeLocks::default());
        let a = locks.lock(0, 4, false).await;
        let _b = locks.lock(2, 6, false).await;
        let _disjoint = locks.lock(10, 12, true).await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock(3, 4, true).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still blocked by the second reader");
        drop(_b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("granted")
            .unwrap();
    }

    #[tokio::test]
    async fn later_readers_queue_behind_a_waiting_writer() {
        let locks = Arc::new(RangeLocks::default());
        let reader = locks.lock(0, 1, false).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |exclusive: bool, tag: &'static str| {
            let locks = locks.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let _g = locks.lock(0, 1, exclusive).await;
                order.lock().unwrap().push(tag);
            })
        };
        let writer = spawn(true, "writer");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let late_reader = spawn(false, "reader");
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(reader);
        writer.await.unwrap();
        late_reader.await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["writer", "reader"]);
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_the_queue() {
        let locks = Arc::new(RangeLocks::default());
        let held = locks.lock(0, 1, true).await;
        let cancelled =
            tokio::time::timeout(Duration::from_millis(10), locks.lock(0, 1, true)).await;
        assert!(cancelled.is_err());
        drop(held);
        let _again = tokio::time::timeout(Duration::from_secs(1), locks.lock(0, 1, true))
            .await
            .expect("not blocked by the cancelled waiter");
    }
}

//! Requests in flight, and the gates that hold new ones back: what a
//! drained section (QEMU's `bdrv_drained_begin`/`end`) is made of.
//!
//! Every node counts the requests inside it ([`InFlight`]). Requests
//! enter the graph through backends, and each backend has a [`Gate`]: a
//! drained section closes the gates of every backend above a node, so no
//! new request starts, then waits until the node and every node above it
//! have nothing in flight. Requests already inside run to their end (a
//! parent's request may still call into its children): only entry is
//! held, never a request half way down, so a drain cannot deadlock on its
//! own requests. When the section ends the gates open and the held
//! requests go on, in the graph as it is then.
//!
//! The count and the gate meet in a handshake of sequentially consistent
//! operations: a request counts itself and then looks at the gate, a
//! drain closes the gate and then looks at the count, so one of the two
//! always sees the other.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

/// How many requests are inside a node, and who waits for none.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    /// Drains waiting for the count to reach zero.
    waiters: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Counts a request until the returned guard is dropped.
    pub(crate) fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, SeqCst);
        InFlightGuard(self)
    }

    /// Counts a request without a guard; [`InFlight::leave`] ends it.
    pub(crate) fn enter_unguarded(&self) {
        self.count.fetch_add(1, SeqCst);
    }

    /// Ends a request counted by [`InFlight::enter_unguarded`].
    pub(crate) fn leave(&self) {
        if self.count.fetch_sub(1, SeqCst) == 1 && self.waiters.load(SeqCst) > 0 {
            self.idle.notify_waiters();
        }
    }

    /// Requests inside now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(SeqCst)
    }

    /// Waits until no request is inside.
    pub(crate) async fn wait_idle(&self) {
        self.waiters.fetch_add(1, SeqCst);
        loop {
            let idle = self.idle.notified();
            let mut idle = std::pin::pin!(idle);
            // Registered before the check, so a wake-up in between is kept.
            idle.as_mut().enable();
            if self.count() == 0 {
                break;
            }
            idle.await;
        }
        self.waiters.fetch_sub(1, SeqCst);
    }
}

/// A request counted in a node's [`InFlight`].
pub(crate) struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The entry of a backend: open unless a drained section holds it.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Drained sections holding the gate closed.
    closed: AtomicUsize,
    opened: Notify,
}

impl Gate {
    /// Whether new requests must wait.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst) > 0
    }

    /// Waits until the gate is open (it may close again right after).
    pub(crate) async fn wait_open(&self) {
        loop {
            let opened = self.opened.notified();
            let mut opened = std::pin::pin!(opened);
            opened.as_mut().enable();
            if !self.is_closed() {
                return;
            }
            opened.await;
        }
    }

    /// A drained section holds new requests back.
    pub(crate) fn close(&self) {
        self.closed.fetch_add(1, SeqCst);
    }

    /// A drained section ends; the gate opens when no other holds it.
    pub(crate) fn open(&self) {
        if self.closed.fetch_sub(1, SeqCst) == 1 {
            self.opened.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn waiting_for_idle_ends_when_the_last_request_leaves() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.enter_unguarded();
        in_flight.enter_unguarded();
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.wait_idle().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        in_flight.leave();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        in_flight.leave();
        waiter.await.unwrap();
        assert_eq!(in_flight.count(), 0);
        // Nothing inside: no wait at all.
        in_flight.wait_idle().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_gate_opens_when_every_section_has_ended() {
        let gate = Arc::new(Gate::default());
        gate.close();
        gate.close();
        let entry = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait_open().await })
        };
        gate.open();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!entry.is_finished());
        gate.open();
        entry.await.unwrap();
        assert!(!gate.is_closed());
    }
}

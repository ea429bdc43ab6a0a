//! A node's write threshold (`block-set-write-threshold`): the first
//! write, write-zeroes or discard that reaches past it emits
//! `BLOCK_WRITE_THRESHOLD` and disables it, as QEMU does, so that a
//! management tool learns once that a thin volume fills up. Checking
//! costs one atomic load per write-side request; the compare-and-swap
//! that disables it makes sure only one request reports.

use std::sync::atomic::{AtomicU64, Ordering};

use schema::event::{EventSink, QmpEvent};
use schema::stats::BlockWriteThresholdData;

/// The threshold of one node, and where its event goes.
pub(crate) struct WriteThreshold {
    /// In bytes; 0 when disabled.
    offset: AtomicU64,
    events: Option<EventSink>,
}

impl WriteThreshold {
    pub(crate) fn new(events: Option<EventSink>) -> Self {
        WriteThreshold {
            offset: AtomicU64::new(0),
            events,
        }
    }

    /// The threshold in bytes; 0 when disabled.
    pub(crate) fn get(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Sets the threshold; 0 disables it.
    pub(crate) fn set(&self, offset: u64) {
        self.offset.store(offset, Ordering::Relaxed);
    }

    /// Called before a write-side request on `[offset, offset + len)` of
    /// node `node_name`: reports and disables a threshold it passes.
    pub(crate) fn check(&self, node_name: &str, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        let mut threshold = self.get();
        while threshold != 0 && end > threshold {
            match self.offset.compare_exchange_weak(
                threshold,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.report(node_name, end - threshold, threshold);
                    return;
                }
                Err(now) => threshold = now,
            }
        }
    }

    fn report(&self, node_name: &str, amount_exceeded: u64, write_threshold: u64) {
        let Some(events) = &self.events else { return };
        let data = BlockWriteThresholdData {
            node_name: node_name.to_string(),
            amount_exceeded,
            write_threshold,
        };
        events(QmpEvent::BlockWriteThreshold(data).into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use schema::event::Event;

    use super::*;

    #[test]
    fn reports_once_then_disables() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let threshold =
            WriteThreshold::new(Some(Arc::new(move |e: Event| sink.lock().unwrap().push(e))));
        threshold.check("n", 0, 1 << 20);
        threshold.set(4096);
        threshold.check("n", 0, 4096);
        assert!(seen.lock().unwrap().is_empty());
        threshold.check("n", 4000, 200);
        threshold.check("n", 8192, 4096);
        assert_eq!(threshold.get(), 0);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].data,
            serde_json::json!({"node-name": "n", "amount-exceeded": 104, "write-threshold": 4096})
        );
    }
}

//! I/O accounting of a node or a backend ([`IoStats`]): per kind of
//! request (read, write, flush, unmap) the requests that succeeded, their
//! bytes and time, a latency histogram, the failed and the invalid ones;
//! the highest offset written and when the last request ended.
//!
//! Counters are relaxed atomics: the request path adds to them and takes
//! no lock. A reader (`query-blockstats`, the metrics endpoint) sees each
//! counter exactly, but not all of them at one instant. As in QEMU with
//! `account-failed=off` and `account-invalid=off`, only successful
//! requests count in the times, the histogram and the idle time.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use schema::stats::BlockDeviceStats;

use crate::error::BlockResult;

/// A kind of request, as QEMU's accounting counts them (write-zeroes is a
/// write, discard is an unmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Flush,
    Unmap,
}

impl IoKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [IoKind; 4] = [IoKind::Read, IoKind::Write, IoKind::Flush, IoKind::Unmap];

    /// A lower-case name (`read`, `write`, `flush`, `unmap`).
    pub fn name(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Flush => "flush",
            IoKind::Unmap => "unmap",
        }
    }
}

/// The upper bounds (inclusive) of the latency histogram's buckets, in
/// nanoseconds; a last bucket takes everything slower.
pub const LATENCY_BOUNDS_NS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    10_000_000_000,
];

const BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

#[derive(Default)]
struct KindCounters {
    operations: AtomicU64,
    bytes: AtomicU64,
    total_ns: AtomicU64,
    failed: AtomicU64,
    invalid: AtomicU64,
    /// Successful requests per latency bucket (not cumulative).
    latency: [AtomicU64; BUCKETS],
}

/// What one kind of request has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindTotals {
    /// Successful requests.
    pub operations: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their time, summed.
    pub total_ns: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests refused before they started (out of range, read-only).
    pub invalid: u64,
    /// Successful requests per bucket of [`LATENCY_BOUNDS_NS`] (the last
    /// one past all bounds); not cumulative.
    pub latency: [u64; BUCKETS],
}

/// The I/O counters of a node or a backend.
#[derive(Default)]
pub struct IoStats {
    kinds: [KindCounters; 4],
    wr_highest_offset: AtomicU64,
    /// When the last counted request ended, in nanoseconds since
    /// [`epoch`] plus one; 0 before the first.
    last_access: AtomicU64,
}

/// The instant the process's clock for idle times starts at.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl IoStats {
    fn counters(&self, kind: IoKind) -> &KindCounters {
        &self.kinds[kind as usize]
    }

    /// Runs the request `make` makes and counts it as a `kind` of `bytes`:
    /// its time if it succeeds, a failure if not. Cancel safe: a request
    /// whose caller gives up (the future is dropped) is not counted.
    ///
    /// The request is made here rather than given: an async fn keeps a
    /// future it is given apart from the one it awaits, and through the
    /// layers of a request (backend, node, write hooks) those copies
    /// doubled its size at each (9 KiB per NBD request, moved to the heap
    /// each time).
    pub async fn account<T, F>(
        &self,
        kind: IoKind,
        bytes: u64,
        make: impl FnOnce() -> F,
    ) -> BlockResult<T>
    where
        F: Future<Output = BlockResult<T>>,
    {
        let start = Instant::now();
        let result = make().await;
        match result {
            Ok(_) => self.done(kind, bytes, start),
            Err(_) => self.count_failed(kind),
        }
        result
    }

    /// Counts a request that failed.
    pub fn count_failed(&self, kind: IoKind) {
        self.counters(kind).failed.fetch_add(1, Relaxed);
    }

    /// Counts a successful request that started at `start` and ends now.
    fn done(&self, kind: IoKind, bytes: u64, start: Instant) {
        let end = Instant::now();
        let counters = self.counters(kind);
        let ns = nanos(end.saturating_duration_since(start));
        counters.operations.fetch_add(1, Relaxed);
        counters.bytes.fetch_add(bytes, Relaxed);
        counters.total_ns.fetch_add(ns, Relaxed);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        counters.latency[bucket].fetch_add(1, Relaxed);
        self.touch(end);
    }

    /// Counts a read whose data is sent later, straight from a file (a
    /// zero-copy read): its operation and bytes, without a time.
    pub fn count_deferred_read(&self, bytes: u64) {
        let counters = self.counters(IoKind::Read);
        counters.operations.fetch_add(1, Relaxed);
        counters.bytes.fetch_add(bytes, Relaxed);
        self.touch(Instant::now());
    }

    /// Counts a request refused before it started.
    pub fn count_invalid(&self, kind: IoKind) {
        self.counters(kind).invalid.fetch_add(1, Relaxed);
    }

    /// Records a write (or write-zeroes) reaching up to `end`, whether or
    /// not it succeeds, as QEMU's `wr_highest_offset`.
    pub fn wrote_up_to(&self, end: u64) {
        // Most writes are below the mark: a load spares them a locked
        // read-modify-write on a line every request shares.
        if end > self.wr_highest_offset.load(Relaxed) {
            self.wr_highest_offset.fetch_max(end, Relaxed);
        }
    }

    /// Records `end` as the last access. A plain store: two requests that
    /// end together may leave the earlier time, which moves the idle time
    /// by their difference.
    fn touch(&self, end: Instant) {
        let at = nanos(end.saturating_duration_since(epoch())).saturating_add(1);
        self.last_access.store(at, Relaxed);
    }

    /// What requests of `kind` have done so far.
    pub fn totals(&self, kind: IoKind) -> KindTotals {
        let c = self.counters(kind);
        KindTotals {
            operations: c.operations.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            total_ns: c.total_ns.load(Relaxed),
            failed: c.failed.load(Relaxed),
            invalid: c.invalid.load(Relaxed),
            latency: std::array::from_fn(|i| c.latency[i].load(Relaxed)),
        }
    }

    /// The end of the highest write so far.
    pub fn wr_highest_offset(&self) -> u64 {
        self.wr_highest_offset.load(Relaxed)
    }

    /// The time since the last counted request ended; `None` before one.
    pub fn idle_time(&self) -> Option<Duration> {
        match self.last_access.load(Relaxed) {
            0 => None,
            at => Some(
                epoch()
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(at - 1)),
            ),
        }
    }

    /// The counters as `query-blockstats` reports them.
    pub fn device_stats(&self) -> BlockDeviceStats {
        let [rd, wr, flush, unmap] = IoKind::ALL.map(|kind| self.totals(kind));
        let n = saturating_i64;
        BlockDeviceStats {
            rd_bytes: n(rd.bytes),
            wr_bytes: n(wr.bytes),
            unmap_bytes: n(unmap.bytes),
            rd_operations: n(rd.operations),
            wr_operations: n(wr.operations),
            flush_operations: n(flush.operations),
            unmap_operations: n(unmap.operations),
            rd_total_time_ns: n(rd.total_ns),
            wr_total_time_ns: n(wr.total_ns),
            flush_total_time_ns: n(flush.total_ns),
            unmap_total_time_ns: n(unmap.total_ns),
            wr_highest_offset: n(self.wr_highest_offset()),
            idle_time_ns: self.idle_time().map(|t| n(nanos(t))),
            failed_rd_operations: n(rd.failed),
            failed_wr_operations: n(wr.failed),
            failed_flush_operations: n(flush.failed),
            failed_unmap_operations: n(unmap.failed),
            invalid_rd_operations: n(rd.invalid),
            invalid_wr_operations: n(wr.invalid),
            invalid_flush_operations: n(flush.invalid),
            invalid_unmap_operations: n(unmap.invalid),
            ..BlockDeviceStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BlockError, ErrorKind};

    #[tokio::test]
    async fn counts_successes_failures_and_refusals_apart() {
        let stats = IoStats::default();
        assert_eq!(stats.idle_time(), None);
        stats
            .account(IoKind::Write, 4096, || async { Ok(()) })
            .await
            .unwrap();
        let failed: BlockResult<()> = stats
            .account(IoKind::Write, 512, || async {
                Err(BlockError::new(ErrorKind::Io, "boom"))
            })
            .await;
        assert!(failed.is_err());
        stats.count_invalid(IoKind::Write);
        stats.count_deferred_read(8192);
        stats.wrote_up_to(65536);
        stats.wrote_up_to(4096);

        let wr = stats.totals(IoKind::Write);
        assert_eq!(
            (wr.operations, wr.bytes, wr.failed, wr.invalid),
            (1, 4096, 1, 1)
        );
        assert_eq!(wr.latency.iter().sum::<u64>(), 1);
        let rd = stats.totals(IoKind::Read);
        assert_eq!((rd.operations, rd.bytes, rd.total_ns), (1, 8192, 0));
        let reported = stats.device_stats();
        assert_eq!(reported.wr_highest_offset, 65536);
        assert!(reported.idle_time_ns.is_some());
        assert_eq!(reported.failed_wr_operations, 1);
        assert_eq!(reported.invalid_wr_operations, 1);
        assert!(!reported.account_failed && !reported.account_invalid);
    }
}

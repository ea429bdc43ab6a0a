//! The `speed` of a job: a limit in bytes per second, kept over slices of
//! 100 ms as QEMU's `ratelimit` does. A job counts the bytes it has
//! processed; once a slice's quota is used up it waits for the next slice.

use std::time::{Duration, Instant};

/// QEMU's `BLOCK_JOB_SLICE_TIME`.
const SLICE: Duration = Duration::from_millis(100);

/// A job's rate limit. `speed` 0 means no limit.
#[derive(Debug)]
pub(crate) struct RateLimit {
    speed: u64,
    slice_start: Instant,
    dispatched: u64,
}

impl RateLimit {
    pub(crate) fn new(speed: u64) -> Self {
        RateLimit {
            speed,
            slice_start: Instant::now(),
            dispatched: 0,
        }
    }

    pub(crate) fn speed(&self) -> u64 {
        self.speed
    }

    /// A new limit; the current slice starts over.
    pub(crate) fn set_speed(&mut self, speed: u64) {
        *self = RateLimit::new(speed);
    }

    /// Counts `bytes` as processed now.
    pub(crate) fn account(&mut self, bytes: u64) {
        self.dispatched = self.dispatched.saturating_add(bytes);
    }

    /// How long to wait before processing more (zero: go on), as of `now`.
    pub(crate) fn delay(&mut self, now: Instant) -> Duration {
        if self.speed == 0 {
            return Duration::ZERO;
        }
        let quota = (self.speed as u128 * SLICE.as_nanos() / 1_000_000_000).max(1) as u64;
        let elapsed = now.saturating_duration_since(self.slice_start);
        if elapsed >= SLICE {
            // Whole slices went by: what they allowed is spent.
            let slices = (elapsed.as_nanos() / SLICE.as_nanos()) as u64;
            self.dispatched = self.dispatched.saturating_sub(quota.saturating_mul(slices));
            self.slice_start += SLICE * slices.min(u32::MAX as u64) as u32;
        }
        if self.dispatched < quota {
            return Duration::ZERO;
        }
        // Over quota: wait until the slices the excess needs have passed.
        let slices_needed = self.dispatched / quota;
        let until = self.slice_start + SLICE * slices_needed.min(u32::MAX as u64) as u32;
        until.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_speed_never_waits() {
        let mut limit = RateLimit::new(0);
        limit.account(u64::MAX);
        assert_eq!(limit.delay(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn a_slice_allows_its_share_then_waits() {
        let mut limit = RateLimit::new(10 << 20);
        let start = limit.slice_start;
        // 1 MiB per 100 ms slice.
        limit.account(512 << 10);
        assert_eq!(limit.delay(start), Duration::ZERO);
        limit.account(512 << 10);
        assert_eq!(limit.delay(start), SLICE);
        // Four slices' worth waits four slices from the slice start.
        limit.account(3 << 20);
        assert_eq!(limit.delay(start), SLICE * 4);
        // Later, the slices that passed have paid for it.
        assert_eq!(limit.delay(start + SLICE * 4), Duration::ZERO);
    }
}

//! The arithmetic of a throttle group's limits, as QEMU's
//! `util/throttle.c` does it: the configuration a `throttle-group` object
//! sets (checked as `throttle_is_valid` checks it), and six leaky buckets
//! (bytes and operations; total, read and write) that fill with each
//! request let through and leak at their average rate.
//!
//! A request may go when none of the four buckets it counts in (bytes and
//! operations, total and its own direction) holds more than its burst
//! capacity; otherwise the time until it may go is computed from the
//! levels, never polled. A bucket with no average rate never holds
//! anything back. Without a burst rate (`-max`) a bucket holds a tenth of
//! a second of its average; with one it holds `max × max-length` units,
//! and a second level makes sure the burst itself runs at `max` units per
//! second. Nothing here sleeps, locks or reads a clock: the group
//! ([`super::group`]) owns the time and the queues.

use std::time::Duration;

use schema::object::{ThrottleGroupProperties, ThrottleLimits};
use tokio::time::Instant;

use crate::error::{BlockError, BlockResult, ErrorKind};

/// The largest value of a rate or a burst (QEMU's `THROTTLE_VALUE_MAX`).
const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;

const NANOS_PER_SECOND: f64 = 1e9;

/// Which way a request moves data: each way has its own buckets (besides
/// the totals) and its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

impl Direction {
    /// The index of the direction's queue.
    pub(crate) fn index(self) -> usize {
        match self {
            Direction::Read => 0,
            Direction::Write => 1,
        }
    }

    /// The buckets a request counts in: bytes (total, own direction),
    /// then operations (total, own direction).
    fn buckets(self) -> ([usize; 2], [usize; 2]) {
        match self {
            Direction::Read => ([BPS_TOTAL, BPS_READ], [OPS_TOTAL, OPS_READ]),
            Direction::Write => ([BPS_TOTAL, BPS_WRITE], [OPS_TOTAL, OPS_WRITE]),
        }
    }
}

// The buckets, in QEMU's order (`BucketType`).
const BPS_TOTAL: usize = 0;
const BPS_READ: usize = 1;
const BPS_WRITE: usize = 2;
const OPS_TOTAL: usize = 3;
const OPS_READ: usize = 4;
const OPS_WRITE: usize = 5;
const BUCKETS: usize = 6;

/// What one member of [`ThrottleLimits`] sets.
#[derive(Debug, Clone, Copy)]
enum Setting {
    Avg(usize),
    Max(usize),
    BurstLength(usize),
    IopsSize,
}

/// What each member of [`ThrottleLimits`] sets, in the order of
/// [`ThrottleLimits::NAMES`].
const SETTINGS: [Setting; ThrottleLimits::COUNT] = {
    use Setting::{Avg, BurstLength, IopsSize, Max};
    [
        Avg(OPS_TOTAL),
        Max(OPS_TOTAL),
        BurstLength(OPS_TOTAL),
        Avg(OPS_READ),
        Max(OPS_READ),
        BurstLength(OPS_READ),
        Avg(OPS_WRITE),
        Max(OPS_WRITE),
        BurstLength(OPS_WRITE),
        Avg(BPS_TOTAL),
        Max(BPS_TOTAL),
        BurstLength(BPS_TOTAL),
        Avg(BPS_READ),
        Max(BPS_READ),
        BurstLength(BPS_READ),
        Avg(BPS_WRITE),
        Max(BPS_WRITE),
        BurstLength(BPS_WRITE),
        IopsSize,
    ]
};

/// One bucket's limit as set: QEMU's unsigned fields, so that negative
/// values wrap and fail the range checks with QEMU's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limit {
    /// Units per second on average; 0 is no limit.
    avg: u64,
    /// Units per second during a burst; 0 is none set.
    max: u64,
    /// How many seconds a burst may last.
    burst_length: u64,
}

const NO_LIMIT: Limit = Limit {
    avg: 0,
    max: 0,
    burst_length: 1,
};

/// A throttle group's limits as set (QEMU's `ThrottleConfig`): six
/// buckets and the size an operation counts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    limits: [Limit; BUCKETS],
    /// With `iops-size`, a request of n × this size counts as n
    /// operations.
    op_size: u64,
}

impl Default for ThrottleConfig {
    /// No limits.
    fn default() -> Self {
        ThrottleConfig {
            limits: [NO_LIMIT; BUCKETS],
            op_size: 0,
        }
    }
}

impl ThrottleConfig {
    /// A new group's configuration from its object's properties: the flat
    /// `x-` members are checked one by one as QEMU's property setter
    /// checks them, then set over `limits`, and the whole is checked.
    pub fn from_properties(properties: &ThrottleGroupProperties) -> BlockResult<Self> {
        for ((name, value), setting) in ThrottleLimits::NAMES
            .iter()
            .zip(properties.flat_members())
            .zip(SETTINGS)
        {
            let Some(value) = value else { continue };
            if value < 0 {
                return Err(invalid("Property values cannot be negative"));
            }
            if matches!(setting, Setting::BurstLength(_)) && value > i64::from(u32::MAX) {
                // QEMU's message, without the space between "the" and
                // "range".
                return Err(invalid(format!(
                    "x-{name} value must be in therange [0, {}]",
                    u32::MAX
                )));
            }
        }
        ThrottleConfig::default().with_limits(&properties.effective_limits())
    }

    /// QEMU's `throttle_limits_to_config` and `throttle_is_valid`: this
    /// configuration with the members `limits` sets, if the result is
    /// valid.
    pub fn with_limits(&self, limits: &ThrottleLimits) -> BlockResult<Self> {
        let mut config = self.clone();
        for ((name, value), setting) in ThrottleLimits::NAMES
            .iter()
            .zip(limits.to_array())
            .zip(SETTINGS)
        {
            if let Some(value) = value {
                config.set(setting, name, value)?;
            }
        }
        config.check()?;
        Ok(config)
    }

    /// Every member, as `qom-get` shows a group's `limits` (QEMU's
    /// `throttle_config_to_limits`).
    pub fn to_limits(&self) -> ThrottleLimits {
        // Valid configurations hold values up to THROTTLE_VALUE_MAX.
        ThrottleLimits::from_array(SETTINGS.map(|setting| Some(self.get(setting) as i64)))
    }

    fn set(&mut self, setting: Setting, name: &str, value: i64) -> BlockResult<()> {
        match setting {
            Setting::Avg(bucket) => self.limits[bucket].avg = value as u64,
            Setting::Max(bucket) => self.limits[bucket].max = value as u64,
            Setting::BurstLength(bucket) => {
                if value > i64::from(u32::MAX) {
                    return Err(invalid(format!(
                        "{name} value must be in the range [0, {}]",
                        u32::MAX
                    )));
                }
                self.limits[bucket].burst_length = value as u64;
            }
            Setting::IopsSize => self.op_size = value as u64,
        }
        Ok(())
    }

    fn get(&self, setting: Setting) -> u64 {
        match setting {
            Setting::Avg(bucket) => self.limits[bucket].avg,
            Setting::Max(bucket) => self.limits[bucket].max,
            Setting::BurstLength(bucket) => self.limits[bucket].burst_length,
            Setting::IopsSize => self.op_size,
        }
    }

    /// QEMU's `throttle_is_valid`, in its order of checks.
    fn check(&self) -> BlockResult<()> {
        let limits = &self.limits;
        let conflict = |total: usize, read: usize, write: usize, pick: fn(&Limit) -> u64| {
            pick(&limits[total]) != 0 && (pick(&limits[read]) != 0 || pick(&limits[write]) != 0)
        };
        let avg = |limit: &Limit| limit.avg;
        let max = |limit: &Limit| limit.max;
        if conflict(BPS_TOTAL, BPS_READ, BPS_WRITE, avg)
            || conflict(OPS_TOTAL, OPS_READ, OPS_WRITE, avg)
            || conflict(BPS_TOTAL, BPS_READ, BPS_WRITE, max)
            || conflict(OPS_TOTAL, OPS_READ, OPS_WRITE, max)
        {
            return Err(invalid(
                "bps/iops/max total values and read/write values cannot be used at the same time",
            ));
        }
        if self.op_size != 0
            && [OPS_TOTAL, OPS_READ, OPS_WRITE]
                .iter()
                .all(|&b| limits[b].avg == 0)
        {
            return Err(invalid("iops size requires an iops value to be set"));
        }
        for limit in limits {
            if limit.avg > THROTTLE_VALUE_MAX || limit.max > THROTTLE_VALUE_MAX {
                return Err(invalid(format!(
                    "bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]"
                )));
            }
            if limit.burst_length == 0 {
                return Err(invalid("the burst length cannot be 0"));
            }
            if limit.burst_length > 1 && limit.max == 0 {
                return Err(invalid("burst length set without burst rate"));
            }
            if limit.max != 0 && limit.burst_length > THROTTLE_VALUE_MAX / limit.max {
                return Err(invalid("burst length too high for this burst rate"));
            }
            if limit.max != 0 && limit.avg == 0 {
                return Err(invalid(
                    "bps_max/iops_max require corresponding bps/iops values",
                ));
            }
            if limit.max != 0 && limit.max < limit.avg {
                return Err(invalid("bps_max/iops_max cannot be lower than bps/iops"));
            }
        }
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

/// One bucket at work.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    avg: u64,
    /// The burst rate: as set, or a tenth of the average where none is
    /// (QEMU's `throttle_fix_bucket`, for schedulers that send reads and
    /// writes in alternating batches).
    max: u64,
    burst_length: u64,
    /// Units let through and not yet leaked.
    level: f64,
    /// The same, leaking at the burst rate, for bursts longer than a
    /// second.
    burst_level: f64,
}

impl Bucket {
    fn new(limit: Limit) -> Self {
        let max = if limit.avg != 0 && limit.max == 0 {
            limit.avg / 10
        } else {
            limit.max
        };
        Bucket {
            avg: limit.avg,
            max,
            burst_length: limit.burst_length,
            level: 0.0,
            burst_level: 0.0,
        }
    }

    /// QEMU's `throttle_leak_bucket`.
    fn leak(&mut self, elapsed_ns: f64) {
        let leaked = self.avg as f64 * elapsed_ns / NANOS_PER_SECOND;
        self.level = (self.level - leaked).max(0.0);
        if self.burst_length > 1 {
            let leaked = self.max as f64 * elapsed_ns / NANOS_PER_SECOND;
            self.burst_level = (self.burst_level - leaked).max(0.0);
        }
    }

    /// QEMU's `throttle_compute_wait`: nanoseconds until the bucket lets
    /// the next request through.
    fn wait_ns(&self) -> f64 {
        if self.avg == 0 {
            return 0.0;
        }
        // The product is at most THROTTLE_VALUE_MAX (checked) or a tenth
        // of the average.
        let extra = self.level - (self.max * self.burst_length) as f64;
        if extra > 0.0 {
            return extra * NANOS_PER_SECOND / self.avg as f64;
        }
        if self.burst_length > 1 {
            // A tenth of the burst rate smooths the burst, as in QEMU
            // (integer division, as there).
            let extra = self.burst_level - (self.max / 10) as f64;
            if extra > 0.0 {
                return extra * NANOS_PER_SECOND / self.max as f64;
            }
        }
        0.0
    }

    fn fill(&mut self, units: f64) {
        if self.avg == 0 {
            // Never holds anything back; the levels start again from zero
            // when the limits change.
            return;
        }
        self.level += units;
        if self.burst_length > 1 {
            self.burst_level += units;
        }
    }
}

/// A group's buckets under its configuration (QEMU's `ThrottleState`).
#[derive(Debug, Clone)]
pub(crate) struct Buckets {
    config: ThrottleConfig,
    buckets: [Bucket; BUCKETS],
    /// When the buckets last leaked.
    previous_leak: Instant,
}

impl Buckets {
    /// Empty buckets for `config`, from `now`.
    pub(crate) fn new(config: ThrottleConfig, now: Instant) -> Self {
        Buckets {
            buckets: config.limits.map(Bucket::new),
            config,
            previous_leak: now,
        }
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// New limits, with empty buckets (QEMU's `throttle_config`).
    pub(crate) fn configure(&mut self, config: ThrottleConfig, now: Instant) {
        *self = Buckets::new(config, now);
    }

    /// Leaks what leaked since the last call.
    pub(crate) fn leak(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.previous_leak);
        self.previous_leak = self.previous_leak.max(now);
        if elapsed.is_zero() {
            return;
        }
        let elapsed_ns = elapsed.as_nanos() as f64;
        for bucket in &mut self.buckets {
            bucket.leak(elapsed_ns);
        }
    }

    /// How long a request in `direction` must wait, from the last leak,
    /// before it may go; zero if it may go now.
    pub(crate) fn wait(&self, direction: Direction) -> Duration {
        let (bytes, ops) = direction.buckets();
        let ns = bytes
            .into_iter()
            .chain(ops)
            .map(|bucket| self.buckets[bucket].wait_ns())
            .fold(0.0, f64::max);
        // QEMU truncates to whole nanoseconds.
        Duration::from_nanos(ns as u64)
    }

    /// Counts a request of `bytes` in `direction` that goes.
    pub(crate) fn account(&mut self, direction: Direction, bytes: u64) {
        let op_size = self.config.op_size;
        let units = if op_size != 0 && bytes > op_size {
            bytes as f64 / op_size as f64
        } else {
            1.0
        };
        let (bytes_buckets, ops_buckets) = direction.buckets();
        for bucket in bytes_buckets {
            self.buckets[bucket].fill(bytes as f64);
        }
        for bucket in ops_buckets {
            self.buckets[bucket].fill(units);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(limits: serde_json::Value) -> BlockResult<ThrottleConfig> {
        let limits: ThrottleLimits = serde_json::from_value(limits).expect("limits");
        ThrottleConfig::default().with_limits(&limits)
    }

    fn message(result: BlockResult<ThrottleConfig>) -> String {
        result.expect_err("invalid").message
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn limits_are_checked_as_qemu_checks_them() {
        assert!(config(json!({"iops-total": 100})).is_ok());
        assert_eq!(
            message(config(json!({"iops-total": 100, "iops-read": 5}))),
            "bps/iops/max total values and read/write values cannot be used at the same time"
        );
        assert_eq!(
            message(config(json!({"iops-total": -1}))),
            "bps/iops/max values must be within [0, 1000000000000000]"
        );
        assert_eq!(
            message(config(json!({"bps-total-max": 100}))),
            "bps_max/iops_max require corresponding bps/iops values"
        );
        assert_eq!(
            message(config(json!({"iops-total": 100, "iops-total-max": 50}))),
            "bps_max/iops_max cannot be lower than bps/iops"
        );
        assert_eq!(
            message(config(
                json!({"iops-total": 100, "iops-total-max": 200, "iops-total-max-length": 0})
            )),
            "the burst length cannot be 0"
        );
        assert_eq!(
            message(config(
                json!({"iops-total": 100, "iops-total-max-length": 5})
            )),
            "burst length set without burst rate"
        );
        assert_eq!(
            message(config(
                json!({"bps-total": 1, "bps-total-max": 1000000000000000_i64, "bps-total-max-length": 2})
            )),
            "burst length too high for this burst rate"
        );
        assert_eq!(
            message(config(json!({"iops-size": 100}))),
            "iops size requires an iops value to be set"
        );
        assert_eq!(
            message(config(json!({"bps-read-max-length": 5000000000_i64}))),
            "bps-read-max-length value must be in the range [0, 4294967295]"
        );
    }

    #[test]
    fn limits_change_only_the_members_given() {
        let first = config(json!({"iops-total": 50, "bps-read": 5})).unwrap();
        let second = first
            .with_limits(&serde_json::from_value(json!({"iops-total": 7})).unwrap())
            .unwrap();
        let shown = serde_json::to_value(second.to_limits()).unwrap();
        assert_eq!(shown["iops-total"], 7);
        assert_eq!(shown["bps-read"], 5);
        assert_eq!(shown["bps-total-max"], 0);
        assert_eq!(shown["iops-read-max-length"], 1);
        assert_eq!(shown.as_object().unwrap().len(), ThrottleLimits::COUNT);
        // An invalid change is refused as a whole.
        let conflicting = serde_json::from_value(json!({"bps-total": 100})).unwrap();
        assert!(second.with_limits(&conflicting).is_err());
    }

    #[test]
    fn flat_properties_are_checked_one_by_one() {
        let properties = |value: serde_json::Value| -> ThrottleGroupProperties {
            serde_json::from_value(value).unwrap()
        };
        let result = ThrottleConfig::from_properties(&properties(json!({"x-iops-total": -1})));
        assert_eq!(message(result), "Property values cannot be negative");
        let result = ThrottleConfig::from_properties(&properties(
            json!({"x-iops-total-max-length": 5000000000_i64}),
        ));
        assert_eq!(
            message(result),
            "x-iops-total-max-length value must be in therange [0, 4294967295]"
        );
        let both = ThrottleConfig::from_properties(&properties(
            json!({"limits": {"bps-total": 1000}, "x-bps-total": 5, "x-iops-read": 3}),
        ))
        .unwrap();
        let shown = both.to_limits();
        assert_eq!((shown.bps_total, shown.iops_read), (Some(5), Some(3)));
    }

    /// Lets `bytes` through in `chunk`-sized requests as soon as the
    /// buckets allow; returns when the last one went.
    fn pass(buckets: &mut Buckets, start: Instant, bytes: u64, chunk: u64) -> Duration {
        let mut now = start;
        let mut sent = 0;
        while sent < bytes {
            buckets.leak(now);
            let wait = buckets.wait(Direction::Read);
            if wait.is_zero() {
                buckets.account(Direction::Read, chunk);
                sent += chunk;
            } else {
                now += wait;
            }
        }
        now - start
    }

    #[test]
    fn the_average_rate_holds_after_a_tenth_of_a_second_of_burst() {
        let start = Instant::now();
        let mut buckets = Buckets::new(config(json!({"bps-total": 1_000_000})).unwrap(), start);
        // 100 kB (a tenth of a second) go at once, plus the request that
        // fills the bucket past it.
        assert_eq!(pass(&mut buckets, start, 100_000, 10_000), Duration::ZERO);
        buckets.account(Direction::Read, 10_000);
        assert!(!buckets.wait(Direction::Read).is_zero());
        // Then 1 MB takes a second.
        let mut buckets = Buckets::new(buckets.config().clone(), start);
        let took = pass(&mut buckets, start, 1_110_000, 10_000);
        assert!(
            took >= SECOND - Duration::from_millis(1) && took <= SECOND + Duration::from_millis(1),
            "{took:?}"
        );
    }

    #[test]
    fn a_burst_runs_at_its_rate_for_its_length() {
        let start = Instant::now();
        let limits = json!({"iops-total": 10, "iops-total-max": 100, "iops-total-max-length": 3});
        let mut buckets = Buckets::new(config(limits).unwrap(), start);
        // The burst: 300 operations at up to 100 per second, so ~2.9
        // seconds for them (11 go at once); not at once.
        let took = pass(&mut buckets, start, 300, 1);
        assert!(took >= Duration::from_millis(2800), "{took:?}");
        assert!(took <= Duration::from_millis(3100), "{took:?}");
        // Over a longer run the average holds: the bucket holds 300
        // operations (max × max-length) and
        // leaks 10 per second, so 400 operations take ~10 seconds.
        let mut buckets = Buckets::new(buckets.config().clone(), start);
        let took = pass(&mut buckets, start, 400, 1);
        assert!(took >= Duration::from_millis(9800), "{took:?}");
        assert!(took <= Duration::from_millis(10500), "{took:?}");
    }

    #[test]
    fn reads_and_writes_count_in_their_own_buckets() {
        let start = Instant::now();
        let limits = json!({"bps-read": 1000, "bps-write": 1000000});
        let mut buckets = Buckets::new(config(limits).unwrap(), start);
        buckets.account(Direction::Read, 5000);
        assert!(!buckets.wait(Direction::Read).is_zero());
        assert!(buckets.wait(Direction::Write).is_zero());
        // Totals count both ways.
        let mut buckets = Buckets::new(config(json!({"bps-total": 1000})).unwrap(), start);
        buckets.account(Direction::Write, 5000);
        assert!(!buckets.wait(Direction::Read).is_zero());
    }

    #[test]
    fn iops_size_counts_large_requests_as_several() {
        let start = Instant::now();
        let limits = json!({"iops-total": 100, "iops-size": 4096});
        let mut buckets = Buckets::new(config(limits).unwrap(), start);
        // One 64 KiB request is 16 operations: over the 10 the bucket
        // holds, so 6 / 100 s to wait.
        buckets.account(Direction::Write, 65536);
        assert_eq!(buckets.wait(Direction::Write), Duration::from_millis(60));
        // Small requests count as one.
        let mut buckets = Buckets::new(buckets.config().clone(), start);
        for _ in 0..11 {
            buckets.account(Direction::Write, 512);
        }
        assert_eq!(buckets.wait(Direction::Write), Duration::from_millis(10));
    }
}

//! `throttle-group` objects: their limits checked as QEMU's
//! `throttle_limits_to_config` and `throttle_is_valid` check them.

use schema::object::ThrottleLimits;
use schema::QmpError;

/// The largest value a throttle limit takes (QEMU's `THROTTLE_VALUE_MAX`).
const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;

/// One leaky bucket of a throttle configuration, as QEMU's
/// `throttle_is_valid` sees it (values converted as C converts them).
struct Bucket {
    avg: u64,
    max: u64,
    burst_length: u32,
}

/// QEMU's `throttle_limits_to_config` plus `throttle_is_valid`.
pub fn check_limits(limits: &ThrottleLimits) -> Result<(), QmpError> {
    // Negative values wrap as QEMU's unsigned fields do, and so fail the
    // range check below with QEMU's message.
    let value = |v: Option<i64>| v.unwrap_or(0) as u64;
    let burst = |name: &str, v: Option<i64>| match v {
        Some(length) if length > i64::from(u32::MAX) => Err(QmpError::generic(format!(
            "{name} value must be in the range [0, {}]",
            u32::MAX
        ))),
        Some(length) => Ok(length as u32),
        None => Ok(1),
    };
    // Order: QEMU's buckets (bps total/read/write, iops total/read/write).
    let buckets = [
        Bucket {
            avg: value(limits.bps_total),
            max: value(limits.bps_total_max),
            burst_length: burst("bps-total-max-length", limits.bps_total_max_length)?,
        },
        Bucket {
            avg: value(limits.bps_read),
            max: value(limits.bps_read_max),
            burst_length: burst("bps-read-max-length", limits.bps_read_max_length)?,
        },
        Bucket {
            avg: value(limits.bps_write),
            max: value(limits.bps_write_max),
            burst_length: burst("bps-write-max-length", limits.bps_write_max_length)?,
        },
        Bucket {
            avg: value(limits.iops_total),
            max: value(limits.iops_total_max),
            burst_length: burst("iops-total-max-length", limits.iops_total_max_length)?,
        },
        Bucket {
            avg: value(limits.iops_read),
            max: value(limits.iops_read_max),
            burst_length: burst("iops-read-max-length", limits.iops_read_max_length)?,
        },
        Bucket {
            avg: value(limits.iops_write),
            max: value(limits.iops_write_max),
            burst_length: burst("iops-write-max-length", limits.iops_write_max_length)?,
        },
    ];
    let [bps_total, bps_read, bps_write, ops_total, ops_read, ops_write] = &buckets;
    let conflict = |total: &Bucket, read: &Bucket, write: &Bucket, pick: fn(&Bucket) -> u64| {
        pick(total) != 0 && (pick(read) != 0 || pick(write) != 0)
    };
    if conflict(bps_total, bps_read, bps_write, |b| b.avg)
        || conflict(ops_total, ops_read, ops_write, |b| b.avg)
        || conflict(bps_total, bps_read, bps_write, |b| b.max)
        || conflict(ops_total, ops_read, ops_write, |b| b.max)
    {
        return Err(QmpError::generic(
            "bps/iops/max total values and read/write values cannot be used at the same time",
        ));
    }
    if value(limits.iops_size) != 0 && ops_total.avg == 0 && ops_read.avg == 0 && ops_write.avg == 0
    {
        return Err(QmpError::generic(
            "iops size requires an iops value to be set",
        ));
    }
    for bucket in &buckets {
        if bucket.avg > THROTTLE_VALUE_MAX || bucket.max > THROTTLE_VALUE_MAX {
            return Err(QmpError::generic(format!(
                "bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]"
            )));
        }
        if bucket.burst_length == 0 {
            return Err(QmpError::generic("the burst length cannot be 0"));
        }
        if bucket.burst_length > 1 && bucket.max == 0 {
            return Err(QmpError::generic("burst length set without burst rate"));
        }
        if bucket.max != 0 && u64::from(bucket.burst_length) > THROTTLE_VALUE_MAX / bucket.max {
            return Err(QmpError::generic(
                "burst length too high for this burst rate",
            ));
        }
        if bucket.max != 0 && bucket.avg == 0 {
            return Err(QmpError::generic(
                "bps_max/iops_max require corresponding bps/iops values",
            ));
        }
        if bucket.max != 0 && bucket.max < bucket.avg {
            return Err(QmpError::generic(
                "bps_max/iops_max cannot be lower than bps/iops",
            ));
        }
    }
    Ok(())
}

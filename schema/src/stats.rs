//! I/O statistics and the write threshold: the arguments and results of
//! `query-blockstats`, `query-block` and `block-set-write-threshold`, and
//! the data of `BLOCK_WRITE_THRESHOLD`. Member names, optionality and
//! order follow QSD 10.0's schema (`query-qmp-schema`); QEMU mixes
//! `snake_case` and `kebab-case` here and so do these types.

use serde::{Deserialize, Serialize};

use crate::block::BlockdevDriver;
use crate::info::BlockDeviceInfo;
use crate::introspect::{Empty, EnumValue, Introspect, Member, SchemaBuilder, Variant};

/// `query-blockstats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct QueryBlockstatsArgs {
    /// List every named node instead of the named backends. Default false.
    pub query_nodes: Option<bool>,
}

/// Counts of the I/O done over one interval (QEMU's `stats-intervals`,
/// which only guest devices configure; the list is empty here, as in QSD).
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct BlockDeviceTimedStats {
    pub interval_length: i64,
    pub min_rd_latency_ns: i64,
    pub max_rd_latency_ns: i64,
    pub avg_rd_latency_ns: i64,
    pub min_wr_latency_ns: i64,
    pub max_wr_latency_ns: i64,
    pub avg_wr_latency_ns: i64,
    pub min_zone_append_latency_ns: i64,
    pub max_zone_append_latency_ns: i64,
    pub avg_zone_append_latency_ns: i64,
    pub min_flush_latency_ns: i64,
    pub max_flush_latency_ns: i64,
    pub avg_flush_latency_ns: i64,
    pub avg_rd_queue_depth: f64,
    pub avg_wr_queue_depth: f64,
    pub avg_zone_append_queue_depth: f64,
}

/// A latency histogram set with `block-latency-histogram-set` (a guest
/// device command QSD does not have; never present here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockLatencyHistogramInfo {
    pub boundaries: Vec<u64>,
    pub bins: Vec<u64>,
}

/// The counters of one node or backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Introspect)]
pub struct BlockDeviceStats {
    pub rd_bytes: i64,
    pub wr_bytes: i64,
    pub zone_append_bytes: i64,
    pub unmap_bytes: i64,
    pub rd_operations: i64,
    pub wr_operations: i64,
    pub zone_append_operations: i64,
    pub flush_operations: i64,
    pub unmap_operations: i64,
    pub rd_total_time_ns: i64,
    pub wr_total_time_ns: i64,
    pub zone_append_total_time_ns: i64,
    pub flush_total_time_ns: i64,
    pub unmap_total_time_ns: i64,
    pub wr_highest_offset: i64,
    pub rd_merged: i64,
    pub wr_merged: i64,
    pub zone_append_merged: i64,
    pub unmap_merged: i64,
    /// Time since the last request completed; absent before the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_time_ns: Option<i64>,
    pub failed_rd_operations: i64,
    pub failed_wr_operations: i64,
    pub failed_zone_append_operations: i64,
    pub failed_flush_operations: i64,
    pub failed_unmap_operations: i64,
    pub invalid_rd_operations: i64,
    pub invalid_wr_operations: i64,
    pub invalid_zone_append_operations: i64,
    pub invalid_flush_operations: i64,
    pub invalid_unmap_operations: i64,
    /// Whether invalid requests count in `idle_time_ns`.
    pub account_invalid: bool,
    /// Whether failed requests count in the times and `idle_time_ns`.
    pub account_failed: bool,
    pub timed_stats: Vec<BlockDeviceTimedStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rd_latency_histogram: Option<BlockLatencyHistogramInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wr_latency_histogram: Option<BlockLatencyHistogramInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_append_latency_histogram: Option<BlockLatencyHistogramInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_latency_histogram: Option<BlockLatencyHistogramInfo>,
}

/// Discard counters of the `file` driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockStatsSpecificFile {
    pub discard_nb_ok: i64,
    pub discard_nb_failed: i64,
    pub discard_bytes_ok: i64,
}

/// Driver-specific counters, tagged by `driver`. Of storaged's drivers
/// only `file` has some (QEMU's `host_device` and `nvme`, which storaged
/// lacks, have too); for the others the member is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "driver")]
pub enum BlockStatsSpecific {
    #[serde(rename = "file")]
    File(BlockStatsSpecificFile),
}

/// As QEMU describes it: a union over every driver (the discriminator is
/// `blockdev-add`'s), `file` with its counters, the others with none.
impl Introspect for BlockStatsSpecific {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        schema.flat_union::<Self>(
            &[],
            |schema| {
                let values: Vec<EnumValue> = BlockdevDriver::NAMES
                    .iter()
                    .map(|name| EnumValue {
                        name,
                        features: &[],
                    })
                    .collect();
                let tag = schema.enumeration::<BlockdevDriver>(&[], &values);
                vec![Member {
                    name: "driver".to_owned(),
                    ty: tag,
                    default: None,
                    features: None,
                }]
            },
            "driver",
            |schema| {
                let variant = |schema: &mut SchemaBuilder, case: &str| Variant {
                    case: case.to_owned(),
                    ty: match case {
                        "file" => BlockStatsSpecificFile::introspect(schema),
                        _ => Empty::introspect(schema),
                    },
                };
                BlockdevDriver::NAMES
                    .iter()
                    .map(|case| variant(schema, case))
                    .collect()
            },
        )
    }
}

/// One entry of `query-blockstats`: a backend (`device`, `qdev`) or a
/// node, with the node's primary data child as `parent`, and for a
/// backend its backing chain as `backing`.
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct BlockStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    #[serde(rename = "node-name", skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub stats: BlockDeviceStats,
    #[serde(rename = "driver-specific", skip_serializing_if = "Option::is_none")]
    pub driver_specific: Option<BlockStatsSpecific>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Box<BlockStats>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing: Option<Box<BlockStats>>,
}

/// The I/O status of a backend that stops on errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockDeviceIoStatus {
    Ok,
    Failed,
    Nospace,
}

/// One entry of `query-block`: a named backend (a guest drive). QSD has
/// none, and neither has storaged: exports' backends are anonymous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockInfo {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    pub r#type: String,
    pub removable: bool,
    pub locked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockDeviceInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tray_open: Option<bool>,
    #[serde(rename = "io-status", skip_serializing_if = "Option::is_none")]
    pub io_status: Option<BlockDeviceIoStatus>,
}

/// `block-set-write-threshold`: 0 disables the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockSetWriteThresholdArgs {
    pub node_name: String,
    pub write_threshold: u64,
}

/// `BLOCK_WRITE_THRESHOLD`: a write reached past the node's threshold
/// (which is then disabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockWriteThresholdData {
    pub node_name: String,
    /// How far the write went past the threshold, in bytes.
    pub amount_exceeded: u64,
    pub write_threshold: u64,
}

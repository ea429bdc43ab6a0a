//! Statistics commands: `query-blockstats`, `query-block`,
//! `block-set-write-threshold`. The block layer keeps the counters and
//! the thresholds; these handlers read the arguments.

use schema::stats::{BlockInfo, BlockSetWriteThresholdArgs, BlockStats, QueryBlockstatsArgs};
use schema::QmpError;

use super::{command, Command, NoArguments};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("query-blockstats", query_blockstats),
    command!("query-block", query_block),
    command!("block-set-write-threshold", block_set_write_threshold),
];

async fn query_blockstats(
    daemon: &Daemon,
    QueryBlockstatsArgs { query_nodes }: QueryBlockstatsArgs,
) -> Result<Vec<BlockStats>, QmpError> {
    Ok(daemon.graph.query_blockstats(query_nodes.unwrap_or(false)))
}

/// QEMU lists the named backends (guest drives); QSD has none, and
/// neither has storaged: exports' backends are anonymous.
async fn query_block(_daemon: &Daemon, _: NoArguments) -> Result<Vec<BlockInfo>, QmpError> {
    Ok(Vec::new())
}

async fn block_set_write_threshold(
    daemon: &Daemon,
    BlockSetWriteThresholdArgs {
        node_name,
        write_threshold,
    }: BlockSetWriteThresholdArgs,
) -> Result<(), QmpError> {
    let node = daemon
        .graph
        .node(&node_name)
        .ok_or_else(|| QmpError::generic(format!("Device '{node_name}' not found")))?;
    node.set_write_threshold(write_threshold);
    Ok(())
}

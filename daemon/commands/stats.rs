//! Statistics commands: `query-blockstats`, `query-block`,
//! `block-set-write-threshold`. The block layer keeps the counters and
//! the thresholds; these handlers read the arguments.

use schema::stats::{BlockInfo, BlockSetWriteThresholdArgs, QueryBlockstatsArgs};
use schema::QmpError;
use serde_json::{Map, Value};

use super::{arguments, command, returning, Command, CommandResult, NoArguments};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("query-blockstats", query_blockstats),
    command!("query-block", query_block),
    command!("block-set-write-threshold", block_set_write_threshold),
];

async fn query_blockstats(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let QueryBlockstatsArgs { query_nodes } = arguments(args)?;
    returning(daemon.graph.query_blockstats(query_nodes.unwrap_or(false)))
}

/// QEMU lists the named backends (guest drives); QSD has none, and
/// neither has storaged: exports' backends are anonymous.
async fn query_block(_daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let NoArguments {} = arguments(args)?;
    returning(Vec::<BlockInfo>::new())
}

async fn block_set_write_threshold(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let BlockSetWriteThresholdArgs {
        node_name,
        write_threshold,
    } = arguments(args)?;
    let node = daemon
        .graph
        .node(&node_name)
        .ok_or_else(|| QmpError::generic(format!("Device '{node_name}' not found")))?;
    node.set_write_threshold(write_threshold);
    Ok(Value::Null)
}

//! Block node commands: `blockdev-add`, `blockdev-del`, `blockdev-reopen`,
//! `block_resize`, `change-backing-file`, `query-named-block-nodes`,
//! `x-debug-query-block-graph`.
//! The graph does the work and words the errors; these handlers read the
//! arguments.

use schema::block::{
    BlockResizeArgs, BlockdevDelArgs, BlockdevOptions, BlockdevReopenArgs, ChangeBackingFileArgs,
    QueryNamedBlockNodesArgs,
};
use schema::info::{BlockDeviceInfo, XDbgBlockGraph};
use schema::QmpError;

use super::{command, Command, NoArguments};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-add", qmp_blockdev_add),
    command!("blockdev-del", blockdev_del),
    command!("blockdev-reopen", blockdev_reopen),
    command!("block_resize", block_resize),
    command!("change-backing-file", change_backing_file),
    command!("query-named-block-nodes", query_named_block_nodes),
    command!("x-debug-query-block-graph", debug_query_block_graph, features: ["unstable"]),
];

/// `blockdev-add` and `--blockdev`: waits for the open (and whatever I/O
/// it does) to finish.
pub async fn blockdev_add(daemon: &Daemon, options: &BlockdevOptions) -> Result<(), QmpError> {
    daemon.graph.blockdev_add(options).await?;
    Ok(())
}

async fn qmp_blockdev_add(daemon: &Daemon, options: BlockdevOptions) -> Result<(), QmpError> {
    blockdev_add(daemon, &options).await?;
    Ok(())
}

/// Answers once the node and what closes with it are flushed and closed.
async fn blockdev_del(
    daemon: &Daemon,
    BlockdevDelArgs { node_name }: BlockdevDelArgs,
) -> Result<(), QmpError> {
    daemon.graph.blockdev_del(&node_name).await?;
    Ok(())
}

async fn blockdev_reopen(
    daemon: &Daemon,
    BlockdevReopenArgs { options }: BlockdevReopenArgs,
) -> Result<(), QmpError> {
    daemon.graph.blockdev_reopen(&options).await?;
    Ok(())
}

async fn block_resize(
    daemon: &Daemon,
    BlockResizeArgs {
        device,
        node_name,
        size,
    }: BlockResizeArgs,
) -> Result<(), QmpError> {
    daemon
        .graph
        .resize(device.as_deref(), node_name.as_deref(), size)
        .await?;
    Ok(())
}

async fn query_named_block_nodes(
    daemon: &Daemon,
    QueryNamedBlockNodesArgs { flat }: QueryNamedBlockNodesArgs,
) -> Result<Vec<BlockDeviceInfo>, QmpError> {
    Ok(daemon.graph.query_named_block_nodes(flat.unwrap_or(false)))
}

async fn debug_query_block_graph(
    daemon: &Daemon,
    _: NoArguments,
) -> Result<XDbgBlockGraph, QmpError> {
    Ok(daemon.graph.debug_block_graph())
}

async fn change_backing_file(daemon: &Daemon, args: ChangeBackingFileArgs) -> Result<(), QmpError> {
    daemon
        .graph
        .change_backing_file(&args.device, &args.image_node_name, &args.backing_file)
        .await?;
    Ok(())
}

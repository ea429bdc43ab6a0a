//! Block node commands: `blockdev-add`, `blockdev-del`, `blockdev-reopen`,
//! `block_resize`, `change-backing-file`, `blockdev-set-active`,
//! `x-blockdev-set-iothread`, `query-named-block-nodes`,
//! `x-debug-query-block-graph`.
//! The graph does the work and words the errors; these handlers read the
//! arguments.

use schema::block::{
    BlockResizeArgs, BlockdevDelArgs, BlockdevOptions, BlockdevReopenArgs, BlockdevSetActiveArgs,
    ChangeBackingFileArgs, QueryNamedBlockNodesArgs, StrOrNull, XBlockdevChangeArgs,
    XBlockdevSetIothreadArgs,
};
use schema::info::{BlockDeviceInfo, XDbgBlockGraph};
use schema::QmpError;

use super::{command, Command, NoArguments};
use crate::objects::Object;
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-add", qmp_blockdev_add),
    command!("blockdev-del", blockdev_del),
    command!("blockdev-reopen", blockdev_reopen),
    command!("block_resize", block_resize),
    command!("change-backing-file", change_backing_file),
    command!("blockdev-set-active", blockdev_set_active),
    command!("x-blockdev-set-iothread", x_blockdev_set_iothread, features: ["unstable"]),
    command!("x-blockdev-change", x_blockdev_change, features: ["unstable"]),
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

/// QEMU's checks, in its order. Only quorum takes and gives children this
/// way in QEMU; no driver storaged has does, so a valid request gets
/// QEMU's refusal for such a driver.
async fn x_blockdev_change(
    daemon: &Daemon,
    XBlockdevChangeArgs {
        parent,
        child,
        node,
    }: XBlockdevChangeArgs,
) -> Result<(), QmpError> {
    let parent_node = daemon.graph.lookup(Some(&parent), Some(&parent))?;
    match (&child, &node) {
        (Some(_), Some(_)) => {
            return Err(QmpError::generic(
                "The parameters child and node are in conflict",
            ))
        }
        (None, None) => return Err(QmpError::generic("Either child or node must be specified")),
        _ => {}
    }
    if let Some(child) = child {
        let has_child = parent_node
            .children()
            .iter()
            .any(|edge| edge.role().name() == child);
        if !has_child {
            return Err(QmpError::generic(format!(
                "Node '{parent}' does not have child '{child}'"
            )));
        }
        return Err(QmpError::generic(format!(
            "The node {parent} does not support removing a child"
        )));
    }
    let node = node.unwrap_or_default();
    if daemon.graph.node(&node).is_none() {
        return Err(QmpError::generic(format!("Node '{node}' not found")));
    }
    Err(QmpError::generic(format!(
        "The node {parent} does not support adding a child"
    )))
}

/// Hands nodes over to another process or takes them back (migration).
async fn blockdev_set_active(
    daemon: &Daemon,
    BlockdevSetActiveArgs { node_name, active }: BlockdevSetActiveArgs,
) -> Result<(), QmpError> {
    daemon
        .graph
        .set_active(node_name.as_deref(), active)
        .await?;
    Ok(())
}

/// QEMU's checks, in its order. Nodes here have no home thread (an
/// export's `iothread` decides where its requests run), so once the
/// arguments pass there is nothing to move.
async fn x_blockdev_set_iothread(
    daemon: &Daemon,
    XBlockdevSetIothreadArgs {
        node_name,
        iothread,
        force,
    }: XBlockdevSetIothreadArgs,
) -> Result<(), QmpError> {
    let node = daemon.graph.node(&node_name).ok_or_else(|| {
        QmpError::generic(format!("Failed to find node with node-name='{node_name}'"))
    })?;
    if !force.unwrap_or(false) && daemon.graph.has_users(&node) {
        return Err(QmpError::generic(format!(
            "Node {node_name} is associated with a BlockBackend and could be in use \
             (use force=true to override this check)"
        )));
    }
    if let StrOrNull::Str(id) = iothread {
        if !matches!(daemon.objects.get(&id), Some(Object::Iothread(_))) {
            return Err(QmpError::generic(format!("Cannot find iothread {id}")));
        }
    }
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

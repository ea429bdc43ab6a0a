//! Dirty bitmap commands: `block-dirty-bitmap-add`, `-remove`, `-clear`,
//! `-enable`, `-disable`, `-merge` and `x-debug-block-dirty-bitmap-sha256`.
//! The bitmaps and their checks are [`block::bitmaps`]'.

use block::bitmaps::NewBitmap;
use schema::bitmap::{
    BlockDirtyBitmap, BlockDirtyBitmapAdd, BlockDirtyBitmapMerge, BlockDirtyBitmapOrStr,
};
use serde_json::{json, Map, Value};

use super::{arguments, command, Command, CommandResult};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("block-dirty-bitmap-add", add),
    command!("block-dirty-bitmap-remove", remove),
    command!("block-dirty-bitmap-clear", clear),
    command!("block-dirty-bitmap-enable", enable),
    command!("block-dirty-bitmap-disable", disable),
    command!("block-dirty-bitmap-merge", merge),
    command!("x-debug-block-dirty-bitmap-sha256", sha256),
];

async fn add(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let args: BlockDirtyBitmapAdd = arguments(args)?;
    daemon.graph.bitmap_add(&NewBitmap {
        node: &args.node,
        name: &args.name,
        granularity: args.granularity,
        persistent: args.persistent.unwrap_or(false),
        disabled: args.disabled.unwrap_or(false),
    })?;
    Ok(Value::Null)
}

async fn remove(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let BlockDirtyBitmap { node, name } = arguments(args)?;
    daemon.graph.bitmap_remove(&node, &name)?;
    Ok(Value::Null)
}

async fn clear(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let BlockDirtyBitmap { node, name } = arguments(args)?;
    daemon.graph.bitmap_clear(&node, &name)?;
    Ok(Value::Null)
}

async fn enable(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let BlockDirtyBitmap { node, name } = arguments(args)?;
    daemon.graph.bitmap_set_recording(&node, &name, true)?;
    Ok(Value::Null)
}

async fn disable(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let BlockDirtyBitmap { node, name } = arguments(args)?;
    daemon.graph.bitmap_set_recording(&node, &name, false)?;
    Ok(Value::Null)
}

async fn merge(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let BlockDirtyBitmapMerge {
        node,
        target,
        bitmaps,
    } = arguments(args)?;
    let sources: Vec<(Option<String>, String)> = bitmaps
        .into_iter()
        .map(|source| match source {
            BlockDirtyBitmapOrStr::Local(name) => (None, name),
            BlockDirtyBitmapOrStr::External(b) => (Some(b.node), b.name),
        })
        .collect();
    daemon.graph.bitmap_merge(&node, &target, &sources)?;
    Ok(Value::Null)
}

async fn sha256(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let BlockDirtyBitmap { node, name } = arguments(args)?;
    let sha256 = daemon.graph.bitmap_sha256(&node, &name)?;
    Ok(json!({ "sha256": sha256 }))
}

//! Dirty bitmap commands: `block-dirty-bitmap-add`, `-remove`, `-clear`,
//! `-enable`, `-disable`, `-merge` and `x-debug-block-dirty-bitmap-sha256`.
//! The bitmaps and their checks are [`block::bitmaps`]'.

use block::bitmaps::NewBitmap;
use schema::bitmap::BlockDirtyBitmapSha256;
use schema::bitmap::{
    BlockDirtyBitmap, BlockDirtyBitmapAdd, BlockDirtyBitmapMerge, BlockDirtyBitmapOrStr,
};
use schema::QmpError;

use super::{command, Command};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("block-dirty-bitmap-add", add),
    command!("block-dirty-bitmap-remove", remove),
    command!("block-dirty-bitmap-clear", clear),
    command!("block-dirty-bitmap-enable", enable),
    command!("block-dirty-bitmap-disable", disable),
    command!("block-dirty-bitmap-merge", merge),
    command!("x-debug-block-dirty-bitmap-sha256", sha256, features: ["unstable"]),
];

async fn add(daemon: &Daemon, args: BlockDirtyBitmapAdd) -> Result<(), QmpError> {
    daemon.graph.bitmap_add(&NewBitmap {
        node: &args.node,
        name: &args.name,
        granularity: args.granularity,
        persistent: args.persistent.unwrap_or(false),
        disabled: args.disabled.unwrap_or(false),
    })?;
    Ok(())
}

async fn remove(
    daemon: &Daemon,
    BlockDirtyBitmap { node, name }: BlockDirtyBitmap,
) -> Result<(), QmpError> {
    daemon.graph.bitmap_remove(&node, &name).await?;
    Ok(())
}

async fn clear(
    daemon: &Daemon,
    BlockDirtyBitmap { node, name }: BlockDirtyBitmap,
) -> Result<(), QmpError> {
    daemon.graph.bitmap_clear(&node, &name)?;
    Ok(())
}

async fn enable(
    daemon: &Daemon,
    BlockDirtyBitmap { node, name }: BlockDirtyBitmap,
) -> Result<(), QmpError> {
    daemon.graph.bitmap_set_recording(&node, &name, true)?;
    Ok(())
}

async fn disable(
    daemon: &Daemon,
    BlockDirtyBitmap { node, name }: BlockDirtyBitmap,
) -> Result<(), QmpError> {
    daemon.graph.bitmap_set_recording(&node, &name, false)?;
    Ok(())
}

async fn merge(
    daemon: &Daemon,
    BlockDirtyBitmapMerge {
        node,
        target,
        bitmaps,
    }: BlockDirtyBitmapMerge,
) -> Result<(), QmpError> {
    let sources: Vec<(Option<String>, String)> = bitmaps
        .into_iter()
        .map(|source| match source {
            BlockDirtyBitmapOrStr::Local(name) => (None, name),
            BlockDirtyBitmapOrStr::External(b) => (Some(b.node), b.name),
        })
        .collect();
    daemon.graph.bitmap_merge(&node, &target, &sources)?;
    Ok(())
}

async fn sha256(
    daemon: &Daemon,
    BlockDirtyBitmap { node, name }: BlockDirtyBitmap,
) -> Result<BlockDirtyBitmapSha256, QmpError> {
    let sha256 = daemon.graph.bitmap_sha256(&node, &name)?;
    Ok(BlockDirtyBitmapSha256 { sha256 })
}

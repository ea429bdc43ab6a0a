//! Snapshot commands: external (`blockdev-snapshot`,
//! `blockdev-snapshot-sync`, [`block::BlockGraph::snapshot`]) and internal
//! (`blockdev-snapshot-internal-sync`,
//! `blockdev-snapshot-delete-internal-sync`).

use schema::info::SnapshotInfo;
use schema::job::{BlockdevSnapshot, BlockdevSnapshotSync};
use schema::transaction::{BlockdevSnapshotDeleteInternal, BlockdevSnapshotInternal};
use schema::QmpError;

use super::{command, Command};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-snapshot", blockdev_snapshot, features: ["allow-write-only-overlay"]),
    command!("blockdev-snapshot-sync", blockdev_snapshot_sync),
    command!("blockdev-snapshot-internal-sync", internal_sync),
    command!(
        "blockdev-snapshot-delete-internal-sync",
        delete_internal_sync
    ),
];

async fn blockdev_snapshot(daemon: &Daemon, args: BlockdevSnapshot) -> Result<(), QmpError> {
    daemon.graph.snapshot(&args).await?;
    Ok(())
}

async fn blockdev_snapshot_sync(
    daemon: &Daemon,
    args: BlockdevSnapshotSync,
) -> Result<(), QmpError> {
    daemon.graph.snapshot_sync(&args).await?;
    Ok(())
}

async fn internal_sync(
    daemon: &Daemon,
    BlockdevSnapshotInternal { device, name }: BlockdevSnapshotInternal,
) -> Result<(), QmpError> {
    daemon.graph.snapshot_internal(&device, &name).await?;
    Ok(())
}

async fn delete_internal_sync(
    daemon: &Daemon,
    args: BlockdevSnapshotDeleteInternal,
) -> Result<SnapshotInfo, QmpError> {
    Ok(daemon
        .graph
        .snapshot_delete_internal(&args.device, args.id.as_deref(), args.name.as_deref())
        .await?)
}

//! External snapshot commands: `blockdev-snapshot` and
//! `blockdev-snapshot-sync` ([`block::BlockGraph::snapshot`]).

use schema::job::{BlockdevSnapshot, BlockdevSnapshotSync};
use schema::QmpError;

use super::{command, Command};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-snapshot", blockdev_snapshot, features: ["allow-write-only-overlay"]),
    command!("blockdev-snapshot-sync", blockdev_snapshot_sync),
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

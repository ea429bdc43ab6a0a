//! External snapshot commands: `blockdev-snapshot` and
//! `blockdev-snapshot-sync` ([`block::BlockGraph::snapshot`]).

use schema::job::{BlockdevSnapshot, BlockdevSnapshotSync};
use serde_json::{Map, Value};

use super::{arguments, command, Command, CommandResult};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-snapshot", blockdev_snapshot),
    command!("blockdev-snapshot-sync", blockdev_snapshot_sync),
];

async fn blockdev_snapshot(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let args: BlockdevSnapshot = arguments(args)?;
    daemon.graph.snapshot(&args).await?;
    Ok(Value::Null)
}

async fn blockdev_snapshot_sync(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let args: BlockdevSnapshotSync = arguments(args)?;
    daemon.graph.snapshot_sync(&args).await?;
    Ok(Value::Null)
}

//! The commands that start block jobs: `blockdev-mirror`, `block-stream`,
//! `block-commit`, `blockdev-backup`, and the older `drive-backup` and
//! `drive-mirror`, which create their target image. Each reads its
//! arguments and hands them to the job's module in [`block::blockjob`];
//! the job's life is then the registry's ([`super::job`]).

use schema::job::{
    BlockCommitArgs, BlockStreamArgs, BlockdevBackupArgs, BlockdevMirrorArgs, DriveMirror,
};
use schema::transaction::DriveBackup;
use schema::{ErrorClass, QmpError};

use super::{command, Command};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-mirror", blockdev_mirror),
    command!("block-stream", block_stream),
    command!("block-commit", block_commit),
    command!("blockdev-backup", blockdev_backup),
    command!("drive-backup", drive_backup, features: ["deprecated"]),
    command!("drive-mirror", drive_mirror),
];

async fn blockdev_mirror(daemon: &Daemon, args: BlockdevMirrorArgs) -> Result<(), QmpError> {
    block::blockjob::mirror::start(&daemon.graph, &daemon.jobs, args).await?;
    Ok(())
}

async fn block_stream(daemon: &Daemon, args: BlockStreamArgs) -> Result<(), QmpError> {
    block::blockjob::stream::start(&daemon.graph, &daemon.jobs, args).await?;
    Ok(())
}

/// QEMU's `qmp_block_commit` names a missing device with its own class.
async fn block_commit(daemon: &Daemon, args: BlockCommitArgs) -> Result<(), QmpError> {
    let device = daemon.graph.node(&args.device).ok_or_else(|| {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{}' not found", args.device),
        )
    })?;
    block::blockjob::commit::start(&daemon.graph, &daemon.jobs, device, args).await?;
    Ok(())
}

async fn blockdev_backup(daemon: &Daemon, args: BlockdevBackupArgs) -> Result<(), QmpError> {
    block::blockjob::backup::start(&daemon.graph, &daemon.jobs, args).await?;
    Ok(())
}

async fn drive_backup(daemon: &Daemon, args: DriveBackup) -> Result<(), QmpError> {
    block::blockjob::drive::start_backup(&daemon.graph, &daemon.jobs, args).await?;
    Ok(())
}

async fn drive_mirror(daemon: &Daemon, args: DriveMirror) -> Result<(), QmpError> {
    block::blockjob::drive::start_mirror(&daemon.graph, &daemon.jobs, args).await?;
    Ok(())
}

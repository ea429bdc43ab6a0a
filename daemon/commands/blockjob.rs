//! The commands that start block jobs: `blockdev-mirror`, `block-stream`. Each reads its
//! arguments and hands them to the job's module in [`block::blockjob`];
//! the job's life is then the registry's ([`super::job`]).

use schema::job::{BlockStreamArgs, BlockdevMirrorArgs};
use serde_json::{Map, Value};

use super::{arguments, command, Command, CommandResult};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-mirror", blockdev_mirror),
    command!("block-stream", block_stream),
];

async fn blockdev_mirror(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let args: BlockdevMirrorArgs = arguments(args)?;
    block::blockjob::mirror::start(&daemon.graph, &daemon.jobs, args).await?;
    Ok(Value::Null)
}

async fn block_stream(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let args: BlockStreamArgs = arguments(args)?;
    block::blockjob::stream::start(&daemon.graph, &daemon.jobs, args).await?;
    Ok(Value::Null)
}

//! Job commands: `blockdev-create`, which runs as a job, and the commands
//! that watch and manage jobs: `query-jobs`, `job-dismiss`, `job-cancel`.
//! The registry ([`block::job`]) keeps the state machine and words the
//! errors; image creation is [`block::create`]'s.

use schema::create::{BlockdevCreateArgs, JobIdArgs, JobType};
use serde_json::{Map, Value};

use super::{arguments, command, returning, Command, CommandResult, NoArguments};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-create", blockdev_create),
    command!("query-jobs", query_jobs),
    command!("job-dismiss", job_dismiss),
    command!("job-cancel", job_cancel),
];

/// Starts a `create` job; the reply comes once it runs, its outcome
/// through `JOB_STATUS_CHANGE` events and `query-jobs`.
async fn blockdev_create(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let BlockdevCreateArgs { job_id, options } = arguments(args)?;
    let graph = daemon.graph.clone();
    daemon.jobs.start(&job_id, JobType::Create, |progress| {
        // One unit of work, done when creation ends, whatever its outcome
        // (QEMU's `blockdev_create_run`).
        progress.set_remaining(1);
        async move {
            let result = block::create::create_image(&graph, options).await;
            progress.advance(1);
            result
        }
    })?;
    Ok(Value::Null)
}

async fn query_jobs(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let NoArguments {} = arguments(args)?;
    returning(daemon.jobs.query())
}

async fn job_dismiss(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let JobIdArgs { id } = arguments(args)?;
    daemon.jobs.dismiss(&id)?;
    Ok(Value::Null)
}

async fn job_cancel(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let JobIdArgs { id } = arguments(args)?;
    daemon.jobs.cancel(&id)?;
    Ok(Value::Null)
}

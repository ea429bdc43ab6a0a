//! Job commands: `blockdev-create`, which runs as a job; the generic job
//! verbs (`job-*`, `query-jobs`) and their block-job forms (`block-job-*`,
//! `query-block-jobs`), which name a job by `device` and answer
//! `DeviceNotActive` for anything that is not a block job. The registry
//! ([`block::job`]) keeps the state machine and words the errors; image
//! creation is [`block::create`]'s, the block jobs (mirror, stream, commit) start in their own modules.

use std::sync::Arc;

use schema::create::{
    BlockdevAmendArgs, BlockdevAmendDriver, BlockdevCreateArgs, JobIdArgs, JobInfo, JobType,
    CREATE_UNSUPPORTED,
};
use schema::job::BlockJobInfoRow;
use schema::job::{
    BlockJobCancelArgs, BlockJobChangeOptions, BlockJobDeviceArgs, BlockJobSetSpeedArgs,
};
use schema::{ErrorClass, QmpError};

use block::job::{JobSpec, NoHooks};

use super::{command, Command, NoArguments};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("blockdev-create", blockdev_create),
    command!("x-blockdev-amend", x_blockdev_amend, features: ["unstable"]),
    command!("query-jobs", query_jobs),
    command!("job-pause", job_pause),
    command!("job-resume", job_resume),
    command!("job-cancel", job_cancel),
    command!("job-complete", job_complete),
    command!("job-finalize", job_finalize),
    command!("job-dismiss", job_dismiss),
    command!("query-block-jobs", query_block_jobs),
    command!("block-job-set-speed", block_job_set_speed),
    command!("block-job-pause", block_job_pause),
    command!("block-job-resume", block_job_resume),
    command!("block-job-cancel", block_job_cancel),
    command!("block-job-complete", block_job_complete),
    command!("block-job-finalize", block_job_finalize),
    command!("block-job-dismiss", block_job_dismiss),
    command!("block-job-change", block_job_change),
];

/// Starts a `create` job; the reply comes once it runs, its outcome
/// through `JOB_STATUS_CHANGE` events and `query-jobs`. Such jobs are
/// dismissed by hand (QEMU's `JOB_MANUAL_DISMISS`).
async fn blockdev_create(
    daemon: &Daemon,
    BlockdevCreateArgs { job_id, options }: BlockdevCreateArgs,
) -> Result<(), QmpError> {
    if !options.driver.creates() {
        return Err(QmpError::generic(CREATE_UNSUPPORTED));
    }
    let graph = daemon.graph.clone();
    let mut spec = JobSpec::new(&job_id, JobType::Create);
    spec.auto_dismiss = false;
    daemon.jobs.start(spec, Arc::new(NoHooks), |context| {
        // One unit of work, done when creation ends, whatever its outcome
        // (QEMU's `blockdev_create_run`).
        context.set_remaining(1);
        async move {
            let result = block::create::create_image(&graph, options).await;
            context.advance(1);
            result
        }
    })?;
    Ok(())
}

/// QEMU's checks, in its order. qcow2 is the one driver with something
/// to amend, its encryption's keys; storaged has no encrypted images, so
/// an amend job changes nothing (QEMU's also changes nothing without
/// `encrypt`) and ends as QEMU's does.
async fn x_blockdev_amend(daemon: &Daemon, args: BlockdevAmendArgs) -> Result<(), QmpError> {
    let node = daemon.graph.lookup(Some(""), Some(&args.node_name))?;
    let format = node.driver().format_name();
    if format != "qcow2" {
        return Err(QmpError::generic(
            "Driver does not support x-blockdev-amend",
        ));
    }
    let BlockdevAmendDriver::Qcow2(options) = args.options.driver else {
        return Err(QmpError::generic(
            "x-blockdev-amend doesn't support changing the block driver",
        ));
    };
    if options.encrypt.is_some() {
        return Err(QmpError::generic(
            "qcow2 encryption is not supported by storaged",
        ));
    }
    let mut spec = JobSpec::new(&args.job_id, JobType::Amend);
    spec.auto_dismiss = false;
    daemon.jobs.start(spec, Arc::new(NoHooks), |context| {
        context.set_remaining(1);
        async move {
            context.advance(1);
            Ok(())
        }
    })?;
    Ok(())
}

async fn query_jobs(daemon: &Daemon, _: NoArguments) -> Result<Vec<JobInfo>, QmpError> {
    Ok(daemon.jobs.query())
}

async fn job_pause(daemon: &Daemon, JobIdArgs { id }: JobIdArgs) -> Result<(), QmpError> {
    daemon.jobs.pause(&id)?;
    Ok(())
}

async fn job_resume(daemon: &Daemon, JobIdArgs { id }: JobIdArgs) -> Result<(), QmpError> {
    daemon.jobs.resume(&id)?;
    Ok(())
}

/// QMP's `job-cancel` always forces.
async fn job_cancel(daemon: &Daemon, JobIdArgs { id }: JobIdArgs) -> Result<(), QmpError> {
    daemon.jobs.cancel(&id, true).await?;
    Ok(())
}

async fn job_complete(daemon: &Daemon, JobIdArgs { id }: JobIdArgs) -> Result<(), QmpError> {
    daemon.jobs.complete(&id)?;
    Ok(())
}

async fn job_finalize(daemon: &Daemon, JobIdArgs { id }: JobIdArgs) -> Result<(), QmpError> {
    daemon.jobs.finalize(&id).await?;
    Ok(())
}

async fn job_dismiss(daemon: &Daemon, JobIdArgs { id }: JobIdArgs) -> Result<(), QmpError> {
    daemon.jobs.dismiss(&id)?;
    Ok(())
}

async fn query_block_jobs(
    daemon: &Daemon,
    _: NoArguments,
) -> Result<Vec<BlockJobInfoRow>, QmpError> {
    Ok(daemon.jobs.query_block())
}

/// QEMU's `find_block_job_locked`: the `device` of a block-job command
/// names a block job, or the command fails with `DeviceNotActive`.
fn block_job(daemon: &Daemon, device: &str) -> Result<(), QmpError> {
    if daemon.jobs.is_block_job(device) {
        return Ok(());
    }
    Err(QmpError::new(
        ErrorClass::DeviceNotActive,
        format!("Block job '{device}' not found"),
    ))
}

async fn block_job_set_speed(
    daemon: &Daemon,
    BlockJobSetSpeedArgs { device, speed }: BlockJobSetSpeedArgs,
) -> Result<(), QmpError> {
    block_job(daemon, &device)?;
    daemon.jobs.set_speed(&device, speed)?;
    Ok(())
}

async fn block_job_pause(
    daemon: &Daemon,
    BlockJobDeviceArgs { device }: BlockJobDeviceArgs,
) -> Result<(), QmpError> {
    block_job(daemon, &device)?;
    daemon.jobs.pause(&device)?;
    Ok(())
}

async fn block_job_resume(
    daemon: &Daemon,
    BlockJobDeviceArgs { device }: BlockJobDeviceArgs,
) -> Result<(), QmpError> {
    block_job(daemon, &device)?;
    daemon.jobs.resume(&device)?;
    Ok(())
}

async fn block_job_cancel(
    daemon: &Daemon,
    BlockJobCancelArgs { device, force }: BlockJobCancelArgs,
) -> Result<(), QmpError> {
    block_job(daemon, &device)?;
    daemon.jobs.cancel(&device, force.unwrap_or(false)).await?;
    Ok(())
}

async fn block_job_complete(
    daemon: &Daemon,
    BlockJobDeviceArgs { device }: BlockJobDeviceArgs,
) -> Result<(), QmpError> {
    block_job(daemon, &device)?;
    daemon.jobs.complete(&device)?;
    Ok(())
}

async fn block_job_finalize(daemon: &Daemon, JobIdArgs { id }: JobIdArgs) -> Result<(), QmpError> {
    block_job(daemon, &id)?;
    daemon.jobs.finalize(&id).await?;
    Ok(())
}

async fn block_job_dismiss(daemon: &Daemon, JobIdArgs { id }: JobIdArgs) -> Result<(), QmpError> {
    block_job(daemon, &id)?;
    daemon.jobs.dismiss(&id)?;
    Ok(())
}

async fn block_job_change(daemon: &Daemon, options: BlockJobChangeOptions) -> Result<(), QmpError> {
    block_job(daemon, &options.id)?;
    daemon.jobs.change(&options.id, &options)?;
    Ok(())
}

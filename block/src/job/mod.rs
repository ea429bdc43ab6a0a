//! Background jobs, as QEMU's generic job layer (`job.c`) runs them: a
//! registry of jobs by id, each going through QEMU's state machine
//! ([`status`]) and announcing every change with a `JOB_STATUS_CHANGE`
//! event, plus the `BLOCK_JOB_*` events of block jobs.
//!
//! A job is created (`created`), then started (`running`): its body runs
//! as a task with a [`JobContext`], through which it sees cancellation,
//! stops at pause points (`job-pause`: `paused`, or `standby` once
//! ready), becomes `ready` (a mirror in sync), learns of `job-complete`,
//! keeps to its `speed` and reports progress. When the body ends, the
//! job waits for the other jobs of its transaction (`waiting`), then all
//! become `pending`; they are finalized together, by themselves
//! (`auto-finalize`) or by `job-finalize`: each job type's
//! [`JobDriver::prepare`] and then [`JobDriver::commit`] run (graph
//! changes), and the job is `concluded`, then dismissed (`null`) by
//! itself (`auto-dismiss`) or by `job-dismiss`. A failure, or a forced
//! cancel, aborts the whole transaction (`aborting`): the other jobs are
//! cancelled, each job's [`JobDriver::abort`] runs, and its error stays
//! for `query-jobs` until it is dismissed. [`finalize`] holds that part.
//!
//! The registry's lock is only held for short synchronous sections, and
//! every status change is made and announced under it, so events come
//! out in the order of the changes. Job bodies and driver hooks never run
//! under it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use schema::create::{JobInfo, JobStatus, JobType};
use schema::event::{BlockJobProgress, EventSink, JobStatusChangeData, QmpEvent};
use schema::job::{
    BlockJobChangeOptions, BlockJobInfo, BlockJobInfoMirror, BlockJobInfoRow, IoStatus,
};
use tokio::sync::Notify;

use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::info::saturating_i64;

mod context;
mod finalize;
mod rate;
mod status;

use crate::trace::JOB_STATE_TRANSITION;
pub use context::{ErrorAction, JobContext};
use rate::RateLimit;
use status::{generic, is_completed, is_ready, is_well_formed_id, status_name, Verb};

/// The most jobs the registry holds at once, concluded ones included (they
/// stay until dismissed).
pub const MAX_JOBS: usize = 4096;

/// What a job that was cancelled fails with (QEMU's
/// `strerror(ECANCELED)`).
const CANCELLED_MESSAGE: &str = "Operation canceled";

/// What a job type does at the points of its life that the registry
/// cannot do for it (QEMU's `JobDriver` callbacks besides `run`). Every
/// hook has a default: a job type implements only what it needs.
#[async_trait]
pub trait JobDriver: Send + Sync + 'static {
    /// Whether `job-complete` applies (jobs that become ready).
    fn can_complete(&self) -> bool {
        false
    }

    /// QEMU's `cancel` callback: whether a cancel with `force` on a job
    /// that is `ready` (or not) is a forced one. Without a hook every
    /// cancel is.
    fn cancel(&self, _force: bool, _ready: bool) -> bool {
        true
    }

    /// `block-job-change`: options of the job type changed while it runs.
    fn change(&self, _options: &BlockJobChangeOptions) -> BlockResult<()> {
        Err(generic("Job type does not support changing options"))
    }

    /// What a mirror adds to its `query-block-jobs` entry (the only job
    /// type that adds members).
    fn mirror_info(&self) -> Option<BlockJobInfoMirror> {
        None
    }

    /// The transaction's jobs all succeeded: make the result visible
    /// (QEMU's `prepare`); an error aborts the transaction.
    async fn prepare(&self) -> BlockResult<()> {
        Ok(())
    }

    /// After every job of the transaction was prepared.
    async fn commit(&self) {}

    /// The transaction failed or was cancelled: undo.
    async fn abort(&self) {}

    /// After `commit` or `abort`.
    async fn clean(&self) {}
}

/// A job type with no hooks (image creation).
pub struct NoHooks;

impl JobDriver for NoHooks {}

/// A group of jobs that finalize or abort together (QEMU's `JobTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxnId(u64);

/// What a new job is.
pub struct JobSpec {
    pub id: String,
    pub job_type: JobType,
    /// Listed by `query-block-jobs` and announced with `BLOCK_JOB_*`
    /// events (every job type but image creation).
    pub block_job: bool,
    pub auto_finalize: bool,
    pub auto_dismiss: bool,
    /// Bytes per second, 0 for no limit.
    pub speed: u64,
    /// The transaction it joins; none: a transaction of its own.
    pub txn: Option<TxnId>,
}

impl JobSpec {
    /// A job that finalizes and is dismissed by itself, in no
    /// transaction, with no speed limit.
    pub fn new(id: &str, job_type: JobType) -> Self {
        JobSpec {
            id: id.to_owned(),
            job_type,
            // Image creation and amending are jobs of their own, not
            // block jobs (QEMU's `job_create`, not `block_job_create`).
            block_job: !matches!(job_type, JobType::Create | JobType::Amend),
            auto_finalize: true,
            auto_dismiss: true,
            speed: 0,
            txn: None,
        }
    }
}

/// The jobs of a daemon. Cheap to clone: clones share one registry.
#[derive(Clone)]
pub struct JobRegistry {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    state: Mutex<RegistryState>,
    events: EventSink,
    /// Woken whenever a job's body ends.
    ended: Notify,
}

#[derive(Default)]
struct RegistryState {
    /// Every job, oldest first (`query-jobs` lists them newest first).
    jobs: Vec<Job>,
    next_serial: u64,
    next_txn: u64,
    /// Transactions being aborted or finalized: only one task does it.
    settling: HashSet<TxnId>,
}

/// One job's record.
struct Job {
    /// Tells a job apart from a later one with the same id.
    serial: u64,
    id: String,
    job_type: JobType,
    block_job: bool,
    status: JobStatus,
    current_progress: u64,
    total_progress: u64,
    auto_finalize: bool,
    auto_dismiss: bool,
    /// Pause requests: the user's, and an error's with `stop`.
    pause_count: u32,
    user_paused: bool,
    /// While paused (`paused` or `standby`): the status to go back to.
    resume_status: Option<JobStatus>,
    /// The body waits to be kicked: a pause takes effect at once, as it
    /// does in QEMU, where such a job is entered right away.
    idle: bool,
    /// The body is working (not waiting at a pause point or asleep).
    busy: bool,
    /// A cancel was asked for (`job_cancel_requested`) ...
    cancelled: bool,
    /// ... and it is forced (`job_is_cancelled`).
    force_cancel: bool,
    /// `job-complete` was accepted.
    complete_requested: bool,
    /// The body has returned (QEMU's `deferred_to_main_loop`).
    body_ended: bool,
    error: Option<String>,
    rate: RateLimit,
    io_status: IoStatus,
    txn: TxnId,
    /// Wakes the body (pause, resume, cancel, complete, speed changes).
    kick: Arc<Notify>,
    driver: Arc<dyn JobDriver>,
}

impl Job {
    fn is_cancelled(&self) -> bool {
        self.cancelled && self.force_cancel
    }
}

/// A job created but not started yet (QEMU's `job_create` before
/// `job_start`), so that a transaction can create all its jobs before it
/// starts any. Dropped unstarted, the job is dismissed (`null`).
pub struct CreatedJob {
    shared: Arc<Shared>,
    serial: u64,
    started: bool,
}

impl CreatedJob {
    /// Sets the job's speed before it starts, with `block-job-set-speed`'s
    /// check.
    pub fn set_speed(&self, speed: i64) -> BlockResult<()> {
        let mut state = self.shared.state();
        let job = state
            .get_mut(self.serial)
            .ok_or_else(|| generic("Job not found"))?;
        let speed = u64::try_from(speed)
            .map_err(|_| generic("Parameter 'speed' expects a non-negative value"))?;
        job.rate.set_speed(speed);
        Ok(())
    }

    /// Starts the body as a task (`running`). Must be called within a
    /// tokio runtime.
    pub fn start<F, Fut>(mut self, body: F)
    where
        F: FnOnce(JobContext) -> Fut,
        Fut: Future<Output = BlockResult<()>> + Send + 'static,
    {
        self.started = true;
        let kick = {
            let mut state = self.shared.state();
            let Some(job) = state.get_mut(self.serial) else {
                return;
            };
            job.busy = true;
            self.shared.transition(job, JobStatus::Running);
            // The body begins at a pause point (QEMU's `job_co_entry`).
            if job.pause_count > 0 {
                self.shared.enter_pause(job);
            }
            job.kick.clone()
        };
        let context = JobContext::new(self.shared.clone(), self.serial, kick);
        let task = tokio::spawn(body(context));
        let shared = self.shared.clone();
        let serial = self.serial;
        tokio::spawn(async move {
            // A body that panicked still ends its job.
            let result = task.await.unwrap_or_else(|error| {
                Err(BlockError::new(
                    ErrorKind::Io,
                    format!("Job failed: {error}"),
                ))
            });
            shared.body_ended(serial, result).await;
        });
    }
}

/// A pause held on a job while nodes it works on are drained (QEMU pauses
/// the jobs of drained nodes); dropping it lets the job go on.
pub struct DrainPause {
    shared: Arc<Shared>,
    serial: u64,
}

impl CreatedJob {
    /// Holds the job paused from its start until the returned guard is
    /// dropped (the caller's drained section ends).
    pub fn hold_for_drain(&self) -> DrainPause {
        if let Some(job) = self.shared.state().get_mut(self.serial) {
            job.pause_count += 1;
        }
        DrainPause {
            shared: self.shared.clone(),
            serial: self.serial,
        }
    }
}

impl Drop for DrainPause {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if let Some(job) = state.get_mut(self.serial) {
            job.pause_count = job.pause_count.saturating_sub(1);
            if job.pause_count == 0 {
                self.shared.leave_pause(job);
            }
            job.kick.notify_one();
        }
    }
}

impl Drop for CreatedJob {
    fn drop(&mut self) {
        if self.started {
            return;
        }
        // QEMU's `job_early_fail`.
        let mut state = self.shared.state();
        if let Some(index) = state.index_of(self.serial) {
            let mut job = state.jobs.remove(index);
            self.shared.transition(&mut job, JobStatus::Null);
        }
    }
}

impl JobRegistry {
    /// An empty registry whose events go to `events`.
    pub fn new(events: EventSink) -> Self {
        JobRegistry {
            shared: Arc::new(Shared {
                state: Mutex::new(RegistryState::default()),
                events,
                ended: Notify::new(),
            }),
        }
    }

    /// A new transaction for jobs that must finalize or abort together.
    pub fn new_txn(&self) -> TxnId {
        self.shared.state().new_txn()
    }

    /// Creates a job (QEMU's `job_create`): `created` is announced.
    /// Refused, with QEMU's messages, if the id is malformed or taken.
    pub fn create(&self, spec: JobSpec, driver: Arc<dyn JobDriver>) -> BlockResult<CreatedJob> {
        let id = spec.id;
        if !is_well_formed_id(&id) {
            return Err(generic(format!("Invalid job ID '{id}'")));
        }
        let mut state = self.shared.state();
        if state.jobs.iter().any(|job| job.id == id) {
            return Err(generic(format!("Job ID '{id}' already in use")));
        }
        if state.jobs.len() >= MAX_JOBS {
            return Err(generic(format!(
                "Too many jobs (at most {MAX_JOBS}); dismiss concluded ones first"
            )));
        }
        state.next_serial += 1;
        let serial = state.next_serial;
        let txn = match spec.txn {
            Some(txn) => txn,
            None => state.new_txn(),
        };
        let mut job = Job {
            serial,
            id,
            job_type: spec.job_type,
            block_job: spec.block_job,
            status: JobStatus::Undefined,
            current_progress: 0,
            total_progress: 0,
            auto_finalize: spec.auto_finalize,
            auto_dismiss: spec.auto_dismiss,
            pause_count: 0,
            user_paused: false,
            resume_status: None,
            idle: false,
            busy: false,
            cancelled: false,
            force_cancel: false,
            complete_requested: false,
            body_ended: false,
            error: None,
            rate: RateLimit::new(spec.speed),
            io_status: IoStatus::Ok,
            txn,
            kick: Arc::new(Notify::new()),
            driver,
        };
        self.shared.transition(&mut job, JobStatus::Created);
        state.jobs.push(job);
        Ok(CreatedJob {
            shared: self.shared.clone(),
            serial,
            started: false,
        })
    }

    /// Creates and starts a job in one step.
    pub fn start<F, Fut>(
        &self,
        spec: JobSpec,
        driver: Arc<dyn JobDriver>,
        body: F,
    ) -> BlockResult<()>
    where
        F: FnOnce(JobContext) -> Fut,
        Fut: Future<Output = BlockResult<()>> + Send + 'static,
    {
        self.create(spec, driver)?.start(body);
        Ok(())
    }

    /// `query-jobs`: every job, newest first.
    pub fn query(&self) -> Vec<JobInfo> {
        let state = self.shared.state();
        state
            .jobs
            .iter()
            .rev()
            .map(|job| JobInfo {
                id: job.id.clone(),
                job_type: job.job_type,
                status: job.status,
                current_progress: saturating_i64(job.current_progress),
                total_progress: saturating_i64(job.total_progress),
                error: job.error.clone(),
            })
            .collect()
    }

    /// `query-block-jobs`: the block jobs, newest first, each with the
    /// members its type adds.
    pub fn query_block(&self) -> Vec<BlockJobInfoRow> {
        let jobs: Vec<(BlockJobInfo, Arc<dyn JobDriver>)> = {
            let state = self.shared.state();
            state
                .jobs
                .iter()
                .rev()
                .filter(|job| job.block_job)
                .map(|job| (block_job_info(job), job.driver.clone()))
                .collect()
        };
        jobs.into_iter()
            .map(|(info, driver)| BlockJobInfoRow {
                info,
                mirror: driver.mirror_info(),
            })
            .collect()
    }

    /// Whether `id` names a block job (the `device` of the `block-job-*`
    /// commands names nothing else).
    pub fn is_block_job(&self, id: &str) -> bool {
        let state = self.shared.state();
        state.jobs.iter().any(|job| job.id == id && job.block_job)
    }

    /// `job-pause` (QEMU's `job_user_pause`): the body stops at its next
    /// pause point.
    pub fn pause(&self, id: &str) -> BlockResult<()> {
        self.with_job(id, |job| {
            Verb::Pause.check(&job.id, job.status)?;
            if job.user_paused {
                return Err(generic("Job is already paused"));
            }
            job.user_paused = true;
            job.pause_count += 1;
            if job.idle {
                self.shared.enter_pause(job);
            }
            job.kick.notify_one();
            Ok(())
        })
    }

    /// `job-resume` (QEMU's `job_user_resume`); a block job's I/O status
    /// becomes `ok` again.
    pub fn resume(&self, id: &str) -> BlockResult<()> {
        let mut state = self.shared.state();
        let index = state.find(id)?;
        let job = &mut state.jobs[index];
        if !job.user_paused || job.pause_count == 0 {
            return Err(generic("Can't resume a job that was not paused"));
        }
        Verb::Resume.check(&job.id, job.status)?;
        job.io_status = IoStatus::Ok;
        job.user_paused = false;
        job.pause_count -= 1;
        if job.pause_count == 0 {
            self.shared.leave_pause(job);
        }
        job.kick.notify_one();
        Ok(())
    }

    /// `job-cancel` and `block-job-cancel` (QEMU's `job_user_cancel`). A
    /// job whose body has ended is aborted before this returns.
    pub async fn cancel(&self, id: &str, force: bool) -> BlockResult<()> {
        let abort = {
            let mut state = self.shared.state();
            let index = state.find(id)?;
            let job = &mut state.jobs[index];
            Verb::Cancel.check(&job.id, job.status)?;
            job.cancel_async(force);
            if job.body_ended {
                job.is_cancelled().then_some((job.txn, job.serial))
            } else {
                None
            }
        };
        if let Some((txn, serial)) = abort {
            self.shared.abort_txn(txn, serial).await;
        }
        Ok(())
    }

    /// `job-complete`: a ready job finishes (a mirror pivots).
    pub fn complete(&self, id: &str) -> BlockResult<()> {
        self.with_job(id, |job| {
            Verb::Complete.check(&job.id, job.status)?;
            if job.cancelled || !job.driver.can_complete() {
                return Err(generic(format!(
                    "The active block job '{}' cannot be completed",
                    job.id
                )));
            }
            job.complete_requested = true;
            job.kick.notify_one();
            Ok(())
        })
    }

    /// `job-finalize`: finalizes the job's transaction, which waits for
    /// it (`auto-finalize` off), before this returns.
    pub async fn finalize(&self, id: &str) -> BlockResult<()> {
        let txn = self.with_job(id, |job| {
            Verb::Finalize.check(&job.id, job.status)?;
            Ok(job.txn)
        })?;
        self.shared.finalize_txn(txn).await;
        Ok(())
    }

    /// `job-dismiss`: forgets a concluded job (its status becomes `null`).
    pub fn dismiss(&self, id: &str) -> BlockResult<()> {
        let mut state = self.shared.state();
        let index = state.find(id)?;
        Verb::Dismiss.check(id, state.jobs[index].status)?;
        let mut job = state.jobs.remove(index);
        self.shared.transition(&mut job, JobStatus::Null);
        Ok(())
    }

    /// `block-job-set-speed`.
    pub fn set_speed(&self, id: &str, speed: i64) -> BlockResult<()> {
        self.with_job(id, |job| {
            Verb::SetSpeed.check(&job.id, job.status)?;
            let speed = u64::try_from(speed)
                .map_err(|_| generic("Parameter 'speed' expects a non-negative value"))?;
            let old = job.rate.speed();
            job.rate.set_speed(speed);
            if speed == 0 || speed > old {
                job.kick.notify_one();
            }
            Ok(())
        })
    }

    /// `block-job-change`.
    pub fn change(&self, id: &str, options: &BlockJobChangeOptions) -> BlockResult<()> {
        let driver = self.with_job(id, |job| {
            Verb::Change.check(&job.id, job.status)?;
            Ok(job.driver.clone())
        })?;
        driver.change(options)
    }

    /// Cancels every job that has not ended (forced, as QSD does at exit)
    /// and waits until each has concluded.
    pub async fn cancel_all(&self) {
        let ids: Vec<String> = {
            let state = self.shared.state();
            state
                .jobs
                .iter()
                .filter(|job| Verb::Cancel.allowed_in(job.status))
                .map(|job| job.id.clone())
                .collect()
        };
        for id in &ids {
            // A job that concluded meanwhile refuses; nothing to do then.
            let _ = self.cancel(id, true).await;
        }
        self.shared
            .wait_until(|state| {
                state.jobs.iter().all(|job| {
                    matches!(job.status, JobStatus::Concluded | JobStatus::Null)
                        || job.status == JobStatus::Created
                })
            })
            .await;
    }

    fn with_job<R>(&self, id: &str, f: impl FnOnce(&mut Job) -> BlockResult<R>) -> BlockResult<R> {
        let mut state = self.shared.state();
        let index = state.find(id)?;
        f(&mut state.jobs[index])
    }
}

impl Job {
    /// QEMU's `job_cancel_async`: a cancel that the job type's hook may
    /// soften; a user pause is lifted.
    fn cancel_async(&mut self, force: bool) {
        let force = self.driver.cancel(force, is_ready(self.status));
        if self.user_paused {
            self.user_paused = false;
            self.pause_count = self.pause_count.saturating_sub(1);
        }
        // A soft cancel of a job whose body has ended changes nothing.
        if force || !self.body_ended {
            self.cancelled = true;
            self.force_cancel |= force;
        }
        self.kick.notify_one();
    }
}

/// A block job's `query-block-jobs` entry (QEMU's `block_job_query`).
fn block_job_info(job: &Job) -> BlockJobInfo {
    BlockJobInfo {
        job_type: job.job_type,
        device: job.id.clone(),
        len: saturating_i64(job.total_progress),
        offset: saturating_i64(job.current_progress),
        busy: job.busy,
        paused: job.pause_count > 0,
        speed: saturating_i64(job.rate.speed()),
        io_status: job.io_status,
        ready: is_ready(job.status),
        status: job.status,
        auto_finalize: job.auto_finalize,
        auto_dismiss: job.auto_dismiss,
        error: job.error.clone(),
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, RegistryState> {
        // Every update is complete before the lock is released, so a
        // panic elsewhere leaves consistent records.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes a job's status and announces it (when it changes). The
    /// caller holds the registry's lock, so events come out in the order
    /// of the changes.
    fn transition(&self, job: &mut Job, to: JobStatus) {
        debug_assert!(
            status::may_transition(job.status, to),
            "job {}: {:?} -> {to:?}",
            job.id,
            job.status
        );
        schema::trace!(
            JOB_STATE_TRANSITION,
            "job {} (ret: {}) attempting {} transition ({}-->{})",
            job.id,
            if job.error.is_some() { -1 } else { 0 },
            if status::may_transition(job.status, to) {
                "allowed"
            } else {
                "disallowed"
            },
            status_name(job.status),
            status_name(to)
        );
        if job.status == to {
            return;
        }
        job.status = to;
        self.emit(QmpEvent::JobStatusChange(JobStatusChangeData {
            id: job.id.clone(),
            status: to,
        }));
    }

    /// The job stops at a pause point: `paused`, or `standby` if ready.
    fn enter_pause(&self, job: &mut Job) {
        if job.resume_status.is_some() {
            return;
        }
        job.resume_status = Some(job.status);
        job.busy = false;
        let paused = if job.status == JobStatus::Ready {
            JobStatus::Standby
        } else {
            JobStatus::Paused
        };
        self.transition(job, paused);
    }

    /// The job goes back to what it was before its pause.
    fn leave_pause(&self, job: &mut Job) {
        if let Some(status) = job.resume_status.take() {
            self.transition(job, status);
        }
    }

    fn emit(&self, event: QmpEvent) {
        (self.events)(event.into());
    }

    /// Where a block job is, for its `BLOCK_JOB_*` events; other jobs
    /// send none.
    fn block_progress(job: &Job) -> Option<BlockJobProgress> {
        job.block_job.then(|| BlockJobProgress {
            job_type: job.job_type,
            device: job.id.clone(),
            len: saturating_i64(job.total_progress),
            offset: saturating_i64(job.current_progress),
            speed: saturating_i64(job.rate.speed()),
        })
    }

    /// Waits until `done` holds of the registry; it is checked again each
    /// time a job's body ends or a job settles.
    async fn wait_until(&self, done: impl Fn(&RegistryState) -> bool) {
        loop {
            let ended = self.ended.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            if done(&self.state()) {
                return;
            }
            ended.await;
        }
    }
}

impl RegistryState {
    /// The index of job `id`; QEMU's message if there is none.
    fn find(&self, id: &str) -> BlockResult<usize> {
        self.jobs
            .iter()
            .position(|job| job.id == id)
            .ok_or_else(|| generic("Job not found"))
    }

    fn index_of(&self, serial: u64) -> Option<usize> {
        self.jobs.iter().position(|job| job.serial == serial)
    }

    fn get_mut(&mut self, serial: u64) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|job| job.serial == serial)
    }

    fn new_txn(&mut self) -> TxnId {
        self.next_txn += 1;
        TxnId(self.next_txn)
    }

    /// The serials of the jobs of `txn` that have not concluded, oldest
    /// first (a concluded job has left its transaction).
    fn txn_jobs(&self, txn: TxnId) -> Vec<u64> {
        self.jobs
            .iter()
            .filter(|job| job.txn == txn && job.status != JobStatus::Concluded)
            .map(|job| job.serial)
            .collect()
    }
}

/// A job type as QAPI spells it (`mirror`, `commit`, ...).
pub fn job_type_name(job_type: JobType) -> String {
    job_type_name_of(&job_type)
}

/// Any QAPI enum value as QAPI spells it.
pub fn job_type_name_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;

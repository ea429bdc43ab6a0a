//! Background jobs, as QEMU's generic job layer (`job.c`) runs them: a
//! registry of jobs by id, each going through QEMU's state machine and
//! announcing every change with a `JOB_STATUS_CHANGE` event.
//!
//! A job starts `created`, turns `running` at once, and runs its body as a
//! task. A body that succeeds goes `waiting` → `pending` → `concluded`
//! (it finalizes by itself, QEMU's auto-finalize); one that fails, or was
//! cancelled, goes `aborting` → `concluded` with its error kept for
//! `query-jobs`. A concluded job stays until `job-dismiss` (`null`) takes
//! it away, as QEMU's `blockdev-create` jobs (`JOB_MANUAL_DISMISS`) do.
//!
//! Cancelling, as in QEMU, only marks the job: the body runs to its end,
//! and a body that then succeeds fails with "Operation canceled". Bodies
//! never see the registry's lock; they report progress through
//! [`JobProgress`].

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use schema::create::{JobInfo, JobStatus, JobType};
use schema::event::{Event, EventSink};
use serde_json::json;

use crate::error::{BlockError, BlockResult, ErrorKind};

/// The most jobs the registry holds at once, concluded ones included (they
/// stay until dismissed).
pub const MAX_JOBS: usize = 4096;

/// What a job that succeeded after `job-cancel` fails with (QEMU's
/// `strerror(ECANCELED)`).
const CANCELLED_MESSAGE: &str = "Operation canceled";

/// The jobs of a daemon. Cheap to clone: clones share one registry.
#[derive(Clone)]
pub struct JobRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<RegistryState>,
    events: EventSink,
}

#[derive(Default)]
struct RegistryState {
    /// Every job, oldest first (`query-jobs` lists them newest first).
    jobs: Vec<Job>,
    /// Next serial number.
    next_serial: u64,
}

/// One job's record.
struct Job {
    /// Tells a job apart from a later one with the same id.
    serial: u64,
    id: String,
    job_type: JobType,
    status: JobStatus,
    current_progress: u64,
    total_progress: u64,
    cancelled: bool,
    error: Option<String>,
}

/// A command a user may send to a job (QEMU's `JobVerb`), for the ones
/// the registry implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Cancel,
    Dismiss,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Cancel => "cancel",
            Verb::Dismiss => "dismiss",
        }
    }

    /// QEMU's `JobVerbTable`.
    fn allowed_in(self, status: JobStatus) -> bool {
        use JobStatus::*;
        match self {
            Verb::Cancel => matches!(
                status,
                Created | Running | Paused | Ready | Standby | Waiting | Pending | Aborting
            ),
            Verb::Dismiss => status == Concluded,
        }
    }
}

/// QEMU's `JobSTT`: the changes of status the state machine allows.
fn may_transition(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    match from {
        Undefined => to == Created,
        Created => matches!(to, Running | Aborting | Null),
        Running => matches!(to, Paused | Ready | Waiting | Aborting),
        Paused => to == Running,
        Ready => matches!(to, Standby | Waiting | Aborting),
        Standby => to == Ready,
        Waiting => matches!(to, Pending | Aborting),
        Pending => matches!(to, Aborting | Concluded),
        Aborting => matches!(to, Aborting | Concluded),
        Concluded => to == Null,
        Null => false,
    }
}

/// A status as QAPI spells it (`running`, `concluded`, ...).
fn status_name(status: JobStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn is_well_formed_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn generic(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

/// A running job's handle on its progress (`current-progress` and
/// `total-progress` in `query-jobs`), as QEMU's `job_progress_*`.
pub struct JobProgress {
    shared: Arc<Shared>,
    serial: u64,
}

impl JobProgress {
    /// Sets how much work is left: the total becomes what is done plus
    /// `remaining`.
    pub fn set_remaining(&self, remaining: u64) {
        self.shared.with_job(self.serial, |job| {
            job.total_progress = job.current_progress.saturating_add(remaining);
        });
    }

    /// Counts `done` more units of work as done.
    pub fn advance(&self, done: u64) {
        self.shared.with_job(self.serial, |job| {
            job.current_progress = job.current_progress.saturating_add(done);
            job.total_progress = job.total_progress.max(job.current_progress);
        });
    }
}

impl JobRegistry {
    /// An empty registry whose events go to `events`.
    pub fn new(events: EventSink) -> Self {
        JobRegistry {
            shared: Arc::new(Shared {
                state: Mutex::new(RegistryState::default()),
                events,
            }),
        }
    }

    /// Creates job `id` and starts `body` as a task (QEMU's `job_create`
    /// and `job_start`): `created` and `running` are announced before this
    /// returns. Refused, with QEMU's messages, if the id is malformed or
    /// taken. Must be called within a tokio runtime.
    pub fn start<F, Fut>(&self, id: &str, job_type: JobType, body: F) -> BlockResult<()>
    where
        F: FnOnce(JobProgress) -> Fut,
        Fut: Future<Output = BlockResult<()>> + Send + 'static,
    {
        if !is_well_formed_id(id) {
            return Err(generic(format!("Invalid job ID '{id}'")));
        }
        let serial = {
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
            let mut job = Job {
                serial,
                id: id.to_owned(),
                job_type,
                status: JobStatus::Undefined,
                current_progress: 0,
                total_progress: 0,
                cancelled: false,
                error: None,
            };
            self.shared.transition(&mut job, JobStatus::Created);
            self.shared.transition(&mut job, JobStatus::Running);
            state.jobs.push(job);
            serial
        };
        let work = body(JobProgress {
            shared: self.shared.clone(),
            serial,
        });
        let task = tokio::spawn(work);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // A body that panicked still concludes its job.
            let result = task.await.unwrap_or_else(|error| {
                Err(BlockError::new(
                    ErrorKind::Io,
                    format!("Job failed: {error}"),
                ))
            });
            shared.complete(serial, result);
        });
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

    /// `job-dismiss`: forgets a concluded job (its status becomes `null`).
    pub fn dismiss(&self, id: &str) -> BlockResult<()> {
        let mut state = self.shared.state();
        let index = state.find(id)?;
        check_verb(&state.jobs[index], Verb::Dismiss)?;
        let mut job = state.jobs.remove(index);
        self.shared.transition(&mut job, JobStatus::Null);
        Ok(())
    }

    /// `job-cancel`: marks a job cancelled; it fails once its body ends.
    pub fn cancel(&self, id: &str) -> BlockResult<()> {
        let mut state = self.shared.state();
        let index = state.find(id)?;
        let job = &mut state.jobs[index];
        check_verb(job, Verb::Cancel)?;
        job.cancelled = true;
        Ok(())
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, RegistryState> {
        // Every update is complete before the lock is released, so a
        // panic elsewhere leaves consistent records.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the job with this serial, if it still exists.
    fn with_job(&self, serial: u64, f: impl FnOnce(&mut Job)) {
        let mut state = self.state();
        if let Some(job) = state.jobs.iter_mut().find(|job| job.serial == serial) {
            f(job);
        }
    }

    /// Changes a job's status and announces it. The caller holds the
    /// registry's lock, so events come out in the order of the changes.
    fn transition(&self, job: &mut Job, to: JobStatus) {
        debug_assert!(
            may_transition(job.status, to),
            "job {}: {:?} -> {to:?}",
            job.id,
            job.status
        );
        job.status = to;
        (self.events)(Event::new(
            "JOB_STATUS_CHANGE",
            json!({ "id": job.id, "status": status_name(to) }),
        ));
    }

    /// The body ended: conclude the job, through `waiting` and `pending`
    /// if it succeeded, through `aborting` if it failed or was cancelled.
    fn complete(&self, serial: u64, result: BlockResult<()>) {
        let mut state = self.state();
        let Some(job) = state.jobs.iter_mut().find(|job| job.serial == serial) else {
            return;
        };
        let result = match result {
            Ok(()) if job.cancelled => Err(CANCELLED_MESSAGE.to_owned()),
            Ok(()) => Ok(()),
            Err(error) => Err(error.message),
        };
        match result {
            Ok(()) => {
                self.transition(job, JobStatus::Waiting);
                self.transition(job, JobStatus::Pending);
            }
            Err(message) => {
                job.error = Some(message);
                self.transition(job, JobStatus::Aborting);
            }
        }
        self.transition(job, JobStatus::Concluded);
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
}

/// QEMU's `job_apply_verb_locked`.
fn check_verb(job: &Job, verb: Verb) -> BlockResult<()> {
    if verb.allowed_in(job.status) {
        return Ok(());
    }
    Err(generic(format!(
        "Job '{}' in state '{}' cannot accept command verb '{}'",
        job.id,
        status_name(job.status),
        verb.name()
    )))
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// The events seen, as `(id, status)`.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// A registry whose events are recorded.
    fn recording() -> (JobRegistry, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let registry = JobRegistry::new(Arc::new(move |event: Event| {
            assert_eq!(event.event, "JOB_STATUS_CHANGE");
            let field = |name: &str| event.data[name].as_str().unwrap().to_owned();
            sink.lock().unwrap().push((field("id"), field("status")));
        }));
        (registry, seen)
    }

    fn statuses(seen: &Mutex<Vec<(String, String)>>, id: &str) -> Vec<String> {
        let seen = seen.lock().unwrap();
        seen.iter()
            .filter(|(job, _)| job == id)
            .map(|(_, status)| status.clone())
            .collect()
    }

    async fn wait_status(registry: &JobRegistry, id: &str, status: JobStatus) -> JobInfo {
        for _ in 0..1000 {
            if let Some(info) = registry.query().into_iter().find(|j| j.id == id) {
                if info.status == status {
                    return info;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("job {id} never reached {status:?}");
    }

    #[tokio::test]
    async fn success_goes_through_waiting_and_pending() {
        let (registry, seen) = recording();
        let (release, released) = oneshot::channel::<()>();
        registry
            .start("j0", JobType::Create, |progress| {
                // Set before start returns, as QEMU's jobs do when entered.
                progress.set_remaining(1);
                async move {
                    let _ = released.await;
                    progress.advance(1);
                    Ok(())
                }
            })
            .unwrap();
        let running = registry.query();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].status, JobStatus::Running);
        assert_eq!(running[0].current_progress, 0);
        assert_eq!(running[0].total_progress, 1);
        release.send(()).unwrap();
        let done = wait_status(&registry, "j0", JobStatus::Concluded).await;
        assert_eq!((done.current_progress, done.total_progress), (1, 1));
        assert_eq!(done.error, None);
        registry.dismiss("j0").unwrap();
        assert!(registry.query().is_empty());
        assert_eq!(
            statuses(&seen, "j0"),
            [
                "created",
                "running",
                "waiting",
                "pending",
                "concluded",
                "null"
            ]
        );
    }

    #[tokio::test]
    async fn failure_aborts_and_keeps_the_error() {
        let (registry, seen) = recording();
        registry
            .start("bad", JobType::Create, |_| async {
                Err(BlockError::new(ErrorKind::Io, "it broke"))
            })
            .unwrap();
        let done = wait_status(&registry, "bad", JobStatus::Concluded).await;
        assert_eq!(done.error.as_deref(), Some("it broke"));
        assert_eq!(
            statuses(&seen, "bad"),
            ["created", "running", "aborting", "concluded"]
        );
    }

    #[tokio::test]
    async fn cancel_fails_the_job_when_its_body_ends() {
        let (registry, seen) = recording();
        let (release, released) = oneshot::channel::<()>();
        registry
            .start("c", JobType::Create, |_| async move {
                let _ = released.await;
                Ok(())
            })
            .unwrap();
        registry.cancel("c").unwrap();
        registry.cancel("c").unwrap();
        assert_eq!(registry.query()[0].status, JobStatus::Running);
        release.send(()).unwrap();
        let done = wait_status(&registry, "c", JobStatus::Concluded).await;
        assert_eq!(done.error.as_deref(), Some("Operation canceled"));
        assert_eq!(
            statuses(&seen, "c"),
            ["created", "running", "aborting", "concluded"]
        );
        assert_eq!(
            registry.cancel("c").unwrap_err().message,
            "Job 'c' in state 'concluded' cannot accept command verb 'cancel'"
        );
    }

    #[tokio::test]
    async fn ids_and_verbs_are_checked_like_qemu() {
        let (registry, _) = recording();
        for bad in ["", "1a", "a b", "é"] {
            assert_eq!(
                registry
                    .start(bad, JobType::Create, |_| async { Ok(()) })
                    .unwrap_err()
                    .message,
                format!("Invalid job ID '{bad}'")
            );
        }
        let (release, released) = oneshot::channel::<()>();
        registry
            .start("a-1.b_2", JobType::Create, |_| async move {
                let _ = released.await;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            registry
                .start("a-1.b_2", JobType::Create, |_| async { Ok(()) })
                .unwrap_err()
                .message,
            "Job ID 'a-1.b_2' already in use"
        );
        assert_eq!(
            registry.dismiss("a-1.b_2").unwrap_err().message,
            "Job 'a-1.b_2' in state 'running' cannot accept command verb 'dismiss'"
        );
        assert_eq!(
            registry.dismiss("nope").unwrap_err().message,
            "Job not found"
        );
        assert_eq!(
            registry.cancel("nope").unwrap_err().message,
            "Job not found"
        );
        release.send(()).unwrap();
        wait_status(&registry, "a-1.b_2", JobStatus::Concluded).await;
        registry.dismiss("a-1.b_2").unwrap();
        // The id is free again.
        registry
            .start("a-1.b_2", JobType::Create, |_| async { Ok(()) })
            .unwrap();
    }

    #[tokio::test]
    async fn query_lists_newest_first() {
        let (registry, _) = recording();
        for id in ["first", "second", "third"] {
            registry
                .start(id, JobType::Create, |_| async { Ok(()) })
                .unwrap();
        }
        let ids: Vec<String> = registry.query().into_iter().map(|j| j.id).collect();
        assert_eq!(ids, ["third", "second", "first"]);
    }

    #[tokio::test]
    async fn the_number_of_jobs_is_bounded() {
        let (registry, _) = recording();
        for n in 0..MAX_JOBS {
            registry
                .start(&format!("j{n}"), JobType::Create, |_| async { Ok(()) })
                .unwrap();
        }
        let error = registry
            .start("one-more", JobType::Create, |_| async { Ok(()) })
            .unwrap_err();
        assert!(error.message.starts_with("Too many jobs"), "{error}");
    }

    #[test]
    fn the_state_machine_is_qemus() {
        use JobStatus::*;
        let path = [
            Undefined, Created, Running, Waiting, Pending, Concluded, Null,
        ];
        assert!(path.windows(2).all(|w| may_transition(w[0], w[1])));
        assert!(may_transition(Running, Aborting));
        assert!(!may_transition(Running, Concluded));
        assert!(!may_transition(Concluded, Running));
        assert!(!may_transition(Null, Created));
    }
}

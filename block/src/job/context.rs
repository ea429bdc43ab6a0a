//! What a job's body sees of its job: cancellation, pause points, the
//! `ready` state and `job-complete`, its speed limit, its progress, and
//! what to do about an I/O error (`on-source-error`/`on-target-error`,
//! QEMU's `block_job_error_action`).
//!
//! A body checks [`JobContext::is_cancelled`] (or
//! [`JobContext::cancel_requested`]) between steps and passes a pause
//! point between them; every wait of the context ([`JobContext::sleep`],
//! [`JobContext::wait_kick`], the speed limit) ends early when the job is
//! kicked by a command, and is followed by a pause point, as QEMU's
//! `job_sleep_ns` and `job_yield`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use schema::create::JobStatus;
use schema::event::{BlockErrorAction, BlockJobErrorData, IoOperationType, QmpEvent};
use schema::job::{BlockdevOnError, IoStatus};
use tokio::sync::Notify;

use super::{Job, Shared};
use crate::error::{BlockError, ErrorKind};

/// What a body does about an I/O error (QEMU's `BlockErrorAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Fail the job with the error.
    Report,
    /// Go on as if the request had succeeded.
    Ignore,
    /// The job was paused (`stop`): after the pause point, try again.
    Retry,
}

/// A running job's handle on its record.
pub struct JobContext {
    shared: Arc<Shared>,
    serial: u64,
    kick: Arc<Notify>,
}

impl JobContext {
    pub(super) fn new(shared: Arc<Shared>, serial: u64, kick: Arc<Notify>) -> Self {
        JobContext {
            shared,
            serial,
            kick,
        }
    }

    /// Runs `f` on the job's record (`None` once the record is gone).
    fn with<R>(&self, f: impl FnOnce(&mut Job, &Shared) -> R) -> Option<R> {
        let mut state = self.shared.state();
        let job = state.get_mut(self.serial)?;
        Some(f(job, &self.shared))
    }

    /// The job's id.
    pub fn id(&self) -> String {
        self.with(|job, _| job.id.clone()).unwrap_or_default()
    }

    /// Wakes the body from any wait of the context; for the job's own
    /// helpers (a mirror's filter announcing new writes).
    pub fn kicker(&self) -> Arc<Notify> {
        self.kick.clone()
    }

    /// A forced cancel: stop as soon as possible (QEMU's
    /// `job_is_cancelled`).
    pub fn is_cancelled(&self) -> bool {
        self.with(|job, _| job.is_cancelled()).unwrap_or(true)
    }

    /// Whether a pause is pending: a job that keeps many copies in flight
    /// starts no more, so that it reaches its next pause point once they
    /// end.
    pub fn pause_requested(&self) -> bool {
        self.with(|job, _| job.pause_count > 0).unwrap_or(false)
    }

    /// Any cancel, forced or not (QEMU's `job_cancel_requested`): a ready
    /// mirror told to cancel softly ends without pivoting.
    pub fn cancel_requested(&self) -> bool {
        self.with(|job, _| job.cancelled).unwrap_or(true)
    }

    /// `job-complete` was accepted.
    pub fn complete_requested(&self) -> bool {
        self.with(|job, _| job.complete_requested).unwrap_or(false)
    }

    /// Sets how much work is left: the total becomes what is done plus
    /// `remaining`.
    pub fn set_remaining(&self, remaining: u64) {
        self.with(|job, _| {
            job.total_progress = job.current_progress.saturating_add(remaining);
        });
    }

    /// Adds `more` to the work left.
    pub fn increase_remaining(&self, more: u64) {
        self.with(|job, _| job.total_progress = job.total_progress.saturating_add(more));
    }

    /// Counts `done` more units of work as done.
    pub fn advance(&self, done: u64) {
        self.with(|job, _| {
            job.current_progress = job.current_progress.saturating_add(done);
            job.total_progress = job.total_progress.max(job.current_progress);
        });
    }

    /// QEMU's `job_transition_to_ready`: `ready` and `BLOCK_JOB_READY`.
    pub fn set_ready(&self) {
        self.with(|job, shared| {
            if job.status == JobStatus::Running {
                shared.transition(job, JobStatus::Ready);
                if let Some(progress) = Shared::block_progress(job) {
                    shared.emit(QmpEvent::BlockJobReady(progress));
                }
            }
        });
    }

    /// QEMU's `job_pause_point`: while a pause is asked for and the job
    /// is not cancelled, it waits here as `paused` (or `standby` if
    /// ready), then goes back to what it was.
    pub async fn pause_point(&self) {
        loop {
            let kicked = self.kick.notified();
            let wait = self.with(|job, shared| {
                if job.pause_count == 0 || job.is_cancelled() {
                    shared.leave_pause(job);
                    job.busy = true;
                    return false;
                }
                shared.enter_pause(job);
                true
            });
            if wait != Some(true) {
                return;
            }
            kicked.await;
        }
    }

    /// QEMU's `job_sleep_ns`: waits `duration` or until kicked, then
    /// passes a pause point. Returns at once if cancelled.
    pub async fn sleep(&self, duration: Duration) {
        if self.should_not_wait() {
            self.pause_point().await;
            return;
        }
        self.set_busy(false);
        let _ = tokio::time::timeout(duration, self.kick.notified()).await;
        self.set_busy(true);
        self.pause_point().await;
    }

    /// QEMU's `job_yield`: waits until kicked (a command, or whoever
    /// holds the [`JobContext::kicker`]), then passes a pause point.
    pub async fn wait_kick(&self) {
        if self.should_not_wait() {
            self.pause_point().await;
            return;
        }
        let kicked = self.kick.notified();
        self.with(|job, _| {
            job.busy = false;
            job.idle = true;
        });
        kicked.await;
        self.with(|job, _| job.idle = false);
        self.pause_point().await;
    }

    /// Counts `bytes` against the job's speed and waits as long as the
    /// speed asks (woken early by a new speed or a command).
    pub async fn rate_limit(&self, bytes: u64) {
        self.with(|job, _| job.rate.account(bytes));
        loop {
            let delay = self
                .with(|job, _| job.rate.delay(Instant::now()))
                .unwrap_or_default();
            if delay.is_zero() || self.is_cancelled() {
                return;
            }
            self.sleep(delay).await;
        }
    }

    /// QEMU's `block_job_error_action`: what the policy `on_error` says
    /// about `error` on a read (`is_read`) or write. `BLOCK_JOB_ERROR` is
    /// announced; with `stop` (or `enospc`/`auto` and a full disk) the job
    /// is paused as if by the user and its I/O status records the error,
    /// and this returns after the user resumed it (or cancelled it).
    pub async fn error_action(
        &self,
        on_error: BlockdevOnError,
        is_read: bool,
        error: &BlockError,
    ) -> ErrorAction {
        let no_space = error.kind == ErrorKind::NoSpace;
        let (stop, action) = match on_error {
            BlockdevOnError::Enospc | BlockdevOnError::Auto if no_space => {
                (true, BlockErrorAction::Stop)
            }
            BlockdevOnError::Enospc | BlockdevOnError::Auto | BlockdevOnError::Report => {
                (false, BlockErrorAction::Report)
            }
            BlockdevOnError::Stop => (true, BlockErrorAction::Stop),
            BlockdevOnError::Ignore => (false, BlockErrorAction::Ignore),
        };
        self.with(|job, shared| {
            shared.emit(QmpEvent::BlockJobError(BlockJobErrorData {
                device: job.id.clone(),
                operation: if is_read {
                    IoOperationType::Read
                } else {
                    IoOperationType::Write
                },
                action,
            }));
            if stop {
                if !job.user_paused {
                    job.pause_count += 1;
                    job.user_paused = true;
                }
                job.io_status = if no_space {
                    IoStatus::Nospace
                } else {
                    IoStatus::Failed
                };
            }
        });
        match action {
            BlockErrorAction::Stop => {
                self.pause_point().await;
                ErrorAction::Retry
            }
            BlockErrorAction::Ignore => ErrorAction::Ignore,
            BlockErrorAction::Report => ErrorAction::Report,
        }
    }

    /// A wait would end at once: cancelled, or a pause is pending.
    fn should_not_wait(&self) -> bool {
        self.with(|job, _| job.is_cancelled() || job.pause_count > 0)
            .unwrap_or(true)
    }

    fn set_busy(&self, busy: bool) {
        self.with(|job, _| job.busy = busy);
    }
}

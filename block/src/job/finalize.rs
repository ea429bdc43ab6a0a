//! The end of a job's life, as QEMU's `job_completed` and what follows:
//! a body that ended waits for the rest of its transaction, the
//! transaction is finalized (prepare, then commit, on every job) or, on
//! any failure or forced cancel, aborted (every other job cancelled and
//! waited for, then abort on each); each job then announces its outcome
//! (`BLOCK_JOB_COMPLETED` or `BLOCK_JOB_CANCELLED`), concludes, and is
//! dismissed if it dismisses itself.
//!
//! One task settles a transaction at a time (`settling`); hooks run
//! without the registry's lock, status changes with it.

use std::sync::Arc;

use schema::create::JobStatus;
use schema::event::{BlockJobCompletedData, BlockJobPendingData, QmpEvent};

use super::{is_completed, JobDriver, RegistryState, Shared, TxnId, CANCELLED_MESSAGE};
use crate::error::{os_error_text, BlockResult};
use crate::trace::JOB_COMPLETED;

/// What follows a body's end.
enum Next {
    Nothing,
    Finalize(TxnId),
    Abort(TxnId),
}

impl Shared {
    /// The body of job `serial` returned `result` (QEMU's
    /// `job_completed`).
    pub(super) async fn body_ended(self: &Arc<Self>, serial: u64, result: BlockResult<()>) {
        let next = {
            let mut state = self.state();
            let next = self.record_end(&mut state, serial, result);
            drop(state);
            self.ended.notify_waiters();
            next
        };
        match next {
            Next::Nothing => {}
            Next::Finalize(txn) => self.finalize_txn(txn).await,
            Next::Abort(txn) => self.abort_txn(txn, serial).await,
        }
    }

    fn record_end(&self, state: &mut RegistryState, serial: u64, result: BlockResult<()>) -> Next {
        let Some(job) = state.get_mut(serial) else {
            return Next::Nothing;
        };
        job.body_ended = true;
        job.busy = false;
        schema::trace!(
            JOB_COMPLETED,
            "job {} ret {}",
            job.id,
            result
                .as_ref()
                .err()
                .and_then(|e| e.errno)
                .map_or(0, |errno| -errno)
        );
        if let Err(error) = result {
            // A block job fails with the errno's text, as QEMU's do (their
            // run returns a negative errno); other errors keep their words.
            let message = match error.errno {
                Some(errno) if job.block_job => {
                    os_error_text(&std::io::Error::from_raw_os_error(errno))
                }
                _ => error.message,
            };
            job.error.get_or_insert(message);
        }
        self.update_rc(job);
        let txn = job.txn;
        if job.error.is_some() {
            return Next::Abort(txn);
        }
        if state.settling.contains(&txn) {
            // Another job of the transaction is aborting it.
            return Next::Nothing;
        }
        if let Some(job) = state.get_mut(serial) {
            self.transition(job, JobStatus::Waiting);
        }
        let members = state.txn_jobs(txn);
        let all_done = members.iter().all(|&serial| {
            state
                .jobs
                .iter()
                .any(|job| job.serial == serial && is_completed(job.status))
        });
        if !all_done {
            return Next::Nothing;
        }
        let mut manual = false;
        for serial in members {
            if let Some(job) = state.get_mut(serial) {
                self.transition(job, JobStatus::Pending);
                if !job.auto_finalize {
                    manual = true;
                    self.emit(QmpEvent::BlockJobPending(BlockJobPendingData {
                        job_type: job.job_type,
                        id: job.id.clone(),
                    }));
                }
            }
        }
        if manual {
            Next::Nothing
        } else {
            Next::Finalize(txn)
        }
    }

    /// QEMU's `job_update_rc`: a forced cancel is an error; a job with an
    /// error is `aborting`.
    fn update_rc(&self, job: &mut super::Job) {
        if job.error.is_none() && job.is_cancelled() {
            job.error = Some(CANCELLED_MESSAGE.to_owned());
        }
        if job.error.is_some() {
            self.transition(job, JobStatus::Aborting);
        }
    }

    /// QEMU's `job_do_finalize`: prepare every job of `txn`; commit them
    /// all, or abort them all if one fails.
    pub(super) async fn finalize_txn(self: &Arc<Self>, txn: TxnId) {
        if !self.state().settling.insert(txn) {
            return;
        }
        let members = self.state().txn_jobs(txn);
        let mut failed = None;
        for &serial in &members {
            let Some(driver) = self.driver_if_ok(serial) else {
                continue;
            };
            if let Err(error) = driver.prepare().await {
                let mut state = self.state();
                if let Some(job) = state.get_mut(serial) {
                    job.error.get_or_insert(error.message);
                    self.update_rc(job);
                }
                failed = Some(serial);
                break;
            }
        }
        if let Some(serial) = failed {
            self.state().settling.remove(&txn);
            self.abort_txn(txn, serial).await;
            return;
        }
        for serial in members {
            self.finalize_single(serial).await;
        }
        self.state().settling.remove(&txn);
        self.ended.notify_waiters();
    }

    /// QEMU's `job_completed_txn_abort`: `failed` ended with an error or
    /// was cancelled; every other job of `txn` is cancelled (forced) and
    /// waited for, then each is aborted.
    pub(super) async fn abort_txn(self: &Arc<Self>, txn: TxnId, failed: u64) {
        {
            let mut state = self.state();
            if !state.settling.insert(txn) {
                return;
            }
            for serial in state.txn_jobs(txn) {
                if serial != failed {
                    if let Some(job) = state.get_mut(serial) {
                        job.cancel_async(true);
                    }
                }
            }
        }
        self.wait_until(|state| {
            state.txn_jobs(txn).iter().all(|&serial| {
                state
                    .jobs
                    .iter()
                    .all(|job| job.serial != serial || job.body_ended)
            })
        })
        .await;
        let members = self.state().txn_jobs(txn);
        for serial in members {
            self.finalize_single(serial).await;
        }
        self.state().settling.remove(&txn);
        self.ended.notify_waiters();
    }

    /// The job's driver, if the job exists and has no error.
    fn driver_if_ok(&self, serial: u64) -> Option<Arc<dyn JobDriver>> {
        let state = self.state();
        let job = state.jobs.iter().find(|job| job.serial == serial)?;
        job.error.is_none().then(|| job.driver.clone())
    }

    /// QEMU's `job_finalize_single`: commit or abort, clean, announce the
    /// outcome, conclude, and dismiss if the job dismisses itself.
    async fn finalize_single(&self, serial: u64) {
        let (driver, ok) = {
            let mut state = self.state();
            let Some(job) = state.get_mut(serial) else {
                return;
            };
            self.update_rc(job);
            (job.driver.clone(), job.error.is_none())
        };
        if ok {
            driver.commit().await;
        } else {
            driver.abort().await;
        }
        driver.clean().await;
        let mut state = self.state();
        let Some(index) = state.index_of(serial) else {
            return;
        };
        let job = &mut state.jobs[index];
        if let Some(progress) = Self::block_progress(job) {
            self.emit(if job.is_cancelled() {
                QmpEvent::BlockJobCancelled(progress)
            } else {
                QmpEvent::BlockJobCompleted(BlockJobCompletedData {
                    job_type: progress.job_type,
                    device: progress.device,
                    len: progress.len,
                    offset: progress.offset,
                    speed: progress.speed,
                    error: job.error.clone(),
                })
            });
        }
        self.transition(job, JobStatus::Concluded);
        if job.auto_dismiss {
            let mut job = state.jobs.remove(index);
            self.transition(&mut job, JobStatus::Null);
        }
    }
}

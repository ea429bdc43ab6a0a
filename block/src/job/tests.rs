//! The registry's life cycle against QEMU's: statuses and events in
//! order, verbs and their messages, transactions, error policies.

use super::*;
use schema::event::Event;
use schema::job::{BlockdevOnError, IoStatus};
use std::time::Duration;
use tokio::sync::oneshot;

/// The events seen, as `(event, id, status)`.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A registry whose events are recorded: `JOB_STATUS_CHANGE` as the
/// status, others by name.
fn recording() -> (JobRegistry, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let registry = JobRegistry::new(Arc::new(move |event: Event| {
        let id = event.data["id"]
            .as_str()
            .or(event.data["device"].as_str())
            .unwrap()
            .to_owned();
        let what = match event.event.as_str() {
            "JOB_STATUS_CHANGE" => event.data["status"].as_str().unwrap().to_owned(),
            other => other.to_owned(),
        };
        sink.lock().unwrap().push((id, what));
    }));
    (registry, seen)
}

fn seen_for(seen: &Mutex<Vec<(String, String)>>, id: &str) -> Vec<String> {
    let seen = seen.lock().unwrap();
    seen.iter()
        .filter(|(job, _)| job == id)
        .map(|(_, what)| what.clone())
        .collect()
}

fn create_job(id: &str) -> JobSpec {
    let mut spec = JobSpec::new(id, JobType::Create);
    spec.auto_dismiss = false;
    spec
}

async fn wait_status(registry: &JobRegistry, id: &str, status: JobStatus) -> JobInfo {
    for _ in 0..2000 {
        if let Some(info) = registry.query().into_iter().find(|j| j.id == id) {
            if info.status == status {
                return info;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("job {id} never reached {status:?}");
}

async fn wait_gone(registry: &JobRegistry, id: &str) {
    for _ in 0..2000 {
        if !registry.query().iter().any(|j| j.id == id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("job {id} never went");
}

/// A job type that can be completed, recording its hooks.
#[derive(Default)]
struct Hooks {
    calls: Mutex<Vec<&'static str>>,
    fail_prepare: bool,
}

#[async_trait]
impl JobDriver for Hooks {
    fn can_complete(&self) -> bool {
        true
    }
    fn cancel(&self, force: bool, ready: bool) -> bool {
        force || !ready
    }
    async fn prepare(&self) -> BlockResult<()> {
        self.calls.lock().unwrap().push("prepare");
        if self.fail_prepare {
            return Err(generic("prepare failed"));
        }
        Ok(())
    }
    async fn commit(&self) {
        self.calls.lock().unwrap().push("commit");
    }
    async fn abort(&self) {
        self.calls.lock().unwrap().push("abort");
    }
    async fn clean(&self) {
        self.calls.lock().unwrap().push("clean");
    }
}

/// A body that becomes ready and waits for `job-complete` or a
/// cancel, passing pause points.
async fn ready_body(context: JobContext) -> BlockResult<()> {
    context.set_remaining(1);
    context.pause_point().await;
    context.advance(1);
    context.set_ready();
    while !context.complete_requested() && !context.cancel_requested() {
        context.wait_kick().await;
    }
    Ok(())
}

#[tokio::test]
async fn success_goes_through_waiting_and_pending() {
    let (registry, seen) = recording();
    let (release, released) = oneshot::channel::<()>();
    registry
        .start(create_job("j0"), Arc::new(NoHooks), |context| {
            context.set_remaining(1);
            async move {
                let _ = released.await;
                context.advance(1);
                Ok(())
            }
        })
        .unwrap();
    let running = registry.query();
    assert_eq!(running[0].status, JobStatus::Running);
    assert_eq!(running[0].total_progress, 1);
    release.send(()).unwrap();
    let done = wait_status(&registry, "j0", JobStatus::Concluded).await;
    assert_eq!((done.current_progress, done.total_progress), (1, 1));
    assert_eq!(done.error, None);
    registry.dismiss("j0").unwrap();
    assert!(registry.query().is_empty());
    assert_eq!(
        seen_for(&seen, "j0"),
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
        .start(create_job("bad"), Arc::new(NoHooks), |_| async {
            Err(BlockError::new(ErrorKind::Io, "it broke"))
        })
        .unwrap();
    let done = wait_status(&registry, "bad", JobStatus::Concluded).await;
    assert_eq!(done.error.as_deref(), Some("it broke"));
    assert_eq!(
        seen_for(&seen, "bad"),
        ["created", "running", "aborting", "concluded"]
    );
}

#[tokio::test]
async fn a_body_that_ignores_cancel_still_fails_as_cancelled() {
    let (registry, seen) = recording();
    let (release, released) = oneshot::channel::<()>();
    registry
        .start(create_job("c"), Arc::new(NoHooks), |_| async move {
            let _ = released.await;
            Ok(())
        })
        .unwrap();
    registry.cancel("c", true).await.unwrap();
    registry.cancel("c", true).await.unwrap();
    assert_eq!(registry.query()[0].status, JobStatus::Running);
    release.send(()).unwrap();
    let done = wait_status(&registry, "c", JobStatus::Concluded).await;
    assert_eq!(done.error.as_deref(), Some("Operation canceled"));
    assert_eq!(
        seen_for(&seen, "c"),
        ["created", "running", "aborting", "concluded"]
    );
    assert_eq!(
        registry.cancel("c", true).await.unwrap_err().message,
        "Job 'c' in state 'concluded' cannot accept command verb 'cancel'"
    );
}

#[tokio::test]
async fn pause_resume_ready_and_complete_follow_qemu() {
    let (registry, seen) = recording();
    let hooks = Arc::new(Hooks::default());
    let created = registry
        .create(JobSpec::new("m", JobType::Mirror), hooks.clone())
        .unwrap();
    // Paused before it starts: it stops at its first pause point.
    registry.pause("m").unwrap();
    assert_eq!(
        registry.pause("m").unwrap_err().message,
        "Job is already paused"
    );
    created.start(ready_body);
    wait_status(&registry, "m", JobStatus::Paused).await;
    assert_eq!(
        registry.complete("m").unwrap_err().message,
        "Job 'm' in state 'paused' cannot accept command verb 'complete'"
    );
    registry.resume("m").unwrap();
    assert_eq!(
        registry.resume("m").unwrap_err().message,
        "Can't resume a job that was not paused"
    );
    wait_status(&registry, "m", JobStatus::Ready).await;
    assert!(registry.query_block()[0].info.ready);
    // Paused when ready: standby.
    registry.pause("m").unwrap();
    wait_status(&registry, "m", JobStatus::Standby).await;
    registry.resume("m").unwrap();
    wait_status(&registry, "m", JobStatus::Ready).await;
    registry.complete("m").unwrap();
    wait_gone(&registry, "m").await;
    assert_eq!(
        seen_for(&seen, "m"),
        [
            "created",
            "running",
            "paused",
            "running",
            "ready",
            "BLOCK_JOB_READY",
            "standby",
            "ready",
            "waiting",
            "pending",
            "BLOCK_JOB_COMPLETED",
            "concluded",
            "null"
        ]
    );
    assert_eq!(*hooks.calls.lock().unwrap(), ["prepare", "commit", "clean"]);
}

#[tokio::test]
async fn a_soft_cancel_of_a_ready_job_completes_it() {
    let (registry, seen) = recording();
    let hooks = Arc::new(Hooks::default());
    registry
        .start(
            JobSpec::new("m", JobType::Mirror),
            hooks.clone(),
            ready_body,
        )
        .unwrap();
    wait_status(&registry, "m", JobStatus::Ready).await;
    registry.cancel("m", false).await.unwrap();
    wait_gone(&registry, "m").await;
    let events = seen_for(&seen, "m");
    assert!(
        events.contains(&"BLOCK_JOB_COMPLETED".to_owned()),
        "{events:?}"
    );
    // A forced one is a cancel.
    registry
        .start(
            JobSpec::new("f", JobType::Mirror),
            hooks.clone(),
            ready_body,
        )
        .unwrap();
    wait_status(&registry, "f", JobStatus::Ready).await;
    registry.cancel("f", true).await.unwrap();
    wait_gone(&registry, "f").await;
    assert_eq!(
        seen_for(&seen, "f")[4..],
        ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
    );
}

#[tokio::test]
async fn manual_finalize_waits_for_job_finalize() {
    let (registry, seen) = recording();
    let hooks = Arc::new(Hooks::default());
    let mut spec = JobSpec::new("s", JobType::Stream);
    spec.auto_finalize = false;
    spec.auto_dismiss = false;
    registry
        .start(spec, hooks.clone(), |_| async { Ok(()) })
        .unwrap();
    wait_status(&registry, "s", JobStatus::Pending).await;
    assert!(hooks.calls.lock().unwrap().is_empty());
    registry.finalize("s").await.unwrap();
    assert_eq!(registry.query()[0].status, JobStatus::Concluded);
    registry.dismiss("s").unwrap();
    assert_eq!(
        seen_for(&seen, "s"),
        [
            "created",
            "running",
            "waiting",
            "pending",
            "BLOCK_JOB_PENDING",
            "BLOCK_JOB_COMPLETED",
            "concluded",
            "null"
        ]
    );
}

#[tokio::test]
async fn one_failure_aborts_the_whole_transaction() {
    let (registry, seen) = recording();
    let txn = registry.new_txn();
    let good = Arc::new(Hooks::default());
    let bad = Arc::new(Hooks {
        fail_prepare: true,
        ..Hooks::default()
    });
    for (id, hooks) in [("a", good.clone()), ("b", bad.clone())] {
        let mut spec = JobSpec::new(id, JobType::Backup);
        spec.txn = Some(txn);
        registry.start(spec, hooks, |_| async { Ok(()) }).unwrap();
    }
    wait_gone(&registry, "a").await;
    wait_gone(&registry, "b").await;
    assert_eq!(*good.calls.lock().unwrap(), ["prepare", "abort", "clean"]);
    assert_eq!(*bad.calls.lock().unwrap(), ["prepare", "abort", "clean"]);
    let b = seen_for(&seen, "b");
    assert!(b.contains(&"aborting".to_owned()), "{b:?}");
    // The job whose prepare failed reports its error; the other one
    // was cancelled by it.
    let a = seen_for(&seen, "a");
    assert!(a.contains(&"BLOCK_JOB_CANCELLED".to_owned()), "{a:?}");

    // A running job of a transaction is cancelled when another fails.
    let txn = registry.new_txn();
    let mut spec = JobSpec::new("long", JobType::Backup);
    spec.txn = Some(txn);
    registry
        .start(spec, Arc::new(NoHooks), |context| async move {
            while !context.is_cancelled() {
                context.wait_kick().await;
            }
            Ok(())
        })
        .unwrap();
    let mut spec = JobSpec::new("short", JobType::Backup);
    spec.txn = Some(txn);
    registry
        .start(spec, Arc::new(NoHooks), |_| async {
            Err(BlockError::new(ErrorKind::Io, "short failed"))
        })
        .unwrap();
    wait_gone(&registry, "long").await;
    assert_eq!(
        seen_for(&seen, "long")[2..],
        ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
    );
}

#[tokio::test]
async fn stop_on_error_pauses_until_resumed() {
    let (registry, seen) = recording();
    registry
        .start(
            JobSpec::new("e", JobType::Stream),
            Arc::new(NoHooks),
            |context| async move {
                let error = BlockError::new(ErrorKind::Io, "bad sector");
                let first = context
                    .error_action(BlockdevOnError::Stop, true, &error)
                    .await;
                assert_eq!(first, ErrorAction::Retry);
                let second = context
                    .error_action(BlockdevOnError::Ignore, false, &error)
                    .await;
                assert_eq!(second, ErrorAction::Ignore);
                Ok(())
            },
        )
        .unwrap();
    wait_status(&registry, "e", JobStatus::Paused).await;
    assert_eq!(registry.query_block()[0].info.io_status, IoStatus::Failed);
    registry.resume("e").unwrap();
    wait_gone(&registry, "e").await;
    assert_eq!(
        seen_for(&seen, "e"),
        [
            "created",
            "running",
            "BLOCK_JOB_ERROR",
            "paused",
            "running",
            "BLOCK_JOB_ERROR",
            "waiting",
            "pending",
            "BLOCK_JOB_COMPLETED",
            "concluded",
            "null"
        ]
    );
}

#[tokio::test]
async fn ids_and_verbs_are_checked_like_qemu() {
    let (registry, _) = recording();
    for bad in ["", "1a", "a b", "é"] {
        assert_eq!(
            registry
                .start(create_job(bad), Arc::new(NoHooks), |_| async { Ok(()) })
                .unwrap_err()
                .message,
            format!("Invalid job ID '{bad}'")
        );
    }
    let (release, released) = oneshot::channel::<()>();
    registry
        .start(create_job("a-1.b_2"), Arc::new(NoHooks), |_| async move {
            let _ = released.await;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        registry
            .start(create_job("a-1.b_2"), Arc::new(NoHooks), |_| async {
                Ok(())
            })
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
        registry.set_speed("a-1.b_2", -1).unwrap_err().message,
        "Parameter 'speed' expects a non-negative value"
    );
    release.send(()).unwrap();
    wait_status(&registry, "a-1.b_2", JobStatus::Concluded).await;
    registry.dismiss("a-1.b_2").unwrap();
    // The id is free again.
    registry
        .start(create_job("a-1.b_2"), Arc::new(NoHooks), |_| async {
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn an_unstarted_job_goes_when_dropped() {
    let (registry, seen) = recording();
    let created = registry
        .create(JobSpec::new("x", JobType::Backup), Arc::new(NoHooks))
        .unwrap();
    drop(created);
    assert!(registry.query().is_empty());
    assert_eq!(seen_for(&seen, "x"), ["created", "null"]);
}

#[tokio::test]
async fn query_lists_newest_first_and_the_number_is_bounded() {
    let (registry, _) = recording();
    for n in 0..MAX_JOBS {
        registry
            .start(create_job(&format!("j{n}")), Arc::new(NoHooks), |_| async {
                Ok(())
            })
            .unwrap();
    }
    let ids: Vec<String> = registry.query().into_iter().map(|j| j.id).take(2).collect();
    assert_eq!(
        ids,
        [format!("j{}", MAX_JOBS - 1), format!("j{}", MAX_JOBS - 2)]
    );
    let error = registry
        .start(create_job("one-more"), Arc::new(NoHooks), |_| async {
            Ok(())
        })
        .unwrap_err();
    assert!(error.message.starts_with("Too many jobs"), "{error}");
}

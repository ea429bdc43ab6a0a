//! The block jobs: what each one copies and how it changes the graph when
//! it ends, on top of the generic life cycle of [`crate::job`]. Checks
//! and messages are QEMU 10's.

pub mod backup;
mod buffers;
pub mod commit;
pub mod drive;
pub mod mirror;
mod mirror_top;
pub mod stream;

use std::future::Future;
use std::sync::Arc;

use schema::create::JobType;

use tokio_util::task::AbortOnDropHandle;

use crate::error::{BlockError, BlockResult};
use crate::graph::{generic, BlockGraph};
use crate::job::{CreatedJob, JobDriver, JobRegistry, JobSpec, TxnId};
use crate::node::Node;

/// What every block job command takes besides its own arguments.
pub struct CommonOptions {
    pub job_id: Option<String>,
    pub speed: Option<i64>,
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
}

/// QEMU's `block_job_create`: the job id (a node's name has no device
/// name here, so without `job-id` the id is empty and refused as QEMU
/// refuses it), then the speed, checked after the job exists (a bad speed
/// announces `created` and `null`, as QEMU's does).
pub(crate) fn create_block_job(
    jobs: &JobRegistry,
    job_type: JobType,
    common: &CommonOptions,
    driver: Arc<dyn JobDriver>,
) -> BlockResult<CreatedJob> {
    create_block_job_in(jobs, job_type, common, driver, None)
}

/// As [`create_block_job`], in the transaction `txn` if there is one.
pub(crate) fn create_block_job_in(
    jobs: &JobRegistry,
    job_type: JobType,
    common: &CommonOptions,
    driver: Arc<dyn JobDriver>,
    txn: Option<TxnId>,
) -> BlockResult<CreatedJob> {
    let mut spec = JobSpec::new(common.job_id.as_deref().unwrap_or(""), job_type);
    spec.auto_finalize = common.auto_finalize.unwrap_or(true);
    spec.auto_dismiss = common.auto_dismiss.unwrap_or(true);
    spec.txn = txn;
    let speed = common.speed.unwrap_or(0);
    let created = jobs.create(spec, driver)?;
    created.set_speed(speed)?;
    Ok(created)
}

/// Why a job's nodes are busy (QEMU's blocker message).
pub(crate) fn busy_reason(job_type: &str) -> String {
    format!("block device is in use by block job: {job_type}")
}

/// QEMU's "Need a root block node": no other node uses `node`.
pub(crate) fn check_root(graph: &BlockGraph, node: &Arc<Node>) -> BlockResult<()> {
    let has_parent = graph
        .nodes()
        .iter()
        .any(|parent| parent.children().iter().any(|edge| edge.points_to(node)));
    if has_parent {
        return Err(crate::graph::generic("Need a root block node"));
    }
    Ok(())
}

/// Read-only nodes a job writes to for its time (a commit's base and the
/// image above its top), made writable when it starts and read-only
/// again when it ends, as QEMU's jobs reopen them.
#[derive(Default)]
pub(crate) struct MadeWritable(std::sync::Mutex<Vec<Arc<Node>>>);

impl MadeWritable {
    /// Makes `node` writable for the job, if it is read-only.
    pub(crate) async fn add(&self, graph: &BlockGraph, node: &Arc<Node>) -> BlockResult<()> {
        let changed = graph.set_read_only(node, false).await?;
        if let Some(top) = changed.into_iter().next() {
            lock(&self.0).push(top);
        }
        Ok(())
    }

    /// Makes `nodes` writable, then runs `attach` (a job taking its
    /// nodes); if either fails, they are made read-only again.
    pub(crate) async fn around(
        &self,
        graph: &BlockGraph,
        nodes: &[&Arc<Node>],
        job: &str,
        attach: impl std::future::Future<Output = BlockResult<()>>,
    ) -> BlockResult<()> {
        let mut attached = Ok(());
        for node in nodes {
            attached = self.add(graph, node).await;
            if attached.is_err() {
                break;
            }
        }
        if attached.is_ok() {
            attached = attach.await;
        }
        if attached.is_err() {
            self.restore(graph, job).await;
        }
        attached
    }

    /// Keeps them writable: they took the place of a writable node (an
    /// active commit's pivot makes the base the active layer).
    pub(crate) fn keep(&self) {
        lock(&self.0).clear();
    }

    /// Makes them read-only again; a failure is logged, as a job's end
    /// cannot fail.
    pub(crate) async fn restore(&self, graph: &BlockGraph, job: &str) {
        let nodes = std::mem::take(&mut *lock(&self.0));
        for node in nodes {
            if let Err(error) = graph.set_read_only(&node, true).await {
                tracing::warn!(
                    "{job}: making '{}' read-only again failed: {error}",
                    node.name()
                );
            }
        }
    }
}

/// Runs one copy of a job as a task of its own, aborted when the returned
/// future is dropped; a task that panicked gives `failed` of an error.
/// Reads and writes of files in memory run on the thread that polls them:
/// copies polled together in the job's task would share one thread,
/// while tasks of their own spread over the runtime's threads.
pub(crate) fn spawn_copy<T: Send + 'static>(
    copy: impl Future<Output = T> + Send + 'static,
    failed: impl FnOnce(BlockError) -> T,
) -> impl Future<Output = T> {
    let task = AbortOnDropHandle::new(tokio::spawn(copy));
    async move {
        task.await
            .unwrap_or_else(|e| failed(generic(format!("copy failed: {e}"))))
    }
}

pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes a job's filter out of the graph (its users go back to the node
/// below it); a failure is logged, as the job's end cannot fail.
pub(crate) async fn remove_job_filter(graph: &BlockGraph, filter: Option<Arc<Node>>, job: &str) {
    if let Some(filter) = filter {
        if let Err(error) = graph.remove_filter(filter.name()).await {
            tracing::warn!("{job}: removing its filter failed: {error}");
        }
    }
}

//! `blockdev-mirror`: copies a node that is in use to a target node, keeps
//! the target in sync with what is written meanwhile, and on
//! `job-complete` hands every user of the source (exports included) to
//! the target without losing a write, as QEMU's mirror does.
//!
//! The job puts a [`MirrorTop`] filter above the source (so that one
//! graph change moves every user), records what is written to the source
//! in a [`DirtyBitmap`] through the source's write chokepoint, and copies
//! dirty ranges in chunks of up to 1 MiB, up to `buf-size` bytes in
//! flight (each copy a task of its own, so that they use every thread of
//! the runtime), ranges that read as zeroes as write-zeroes. With nothing left
//! to copy it is `ready`; on `job-complete` (or a soft cancel) it holds
//! the filter's users in a drained section, copies what is still dirty,
//! flushes the target, and the pivot (in `prepare`) replaces the filter
//! by the target under that same section. A failure, a forced cancel or
//! a soft one puts the source back in the filter's place.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::stream::{FuturesUnordered, StreamExt};
use schema::create::JobType;
use schema::job::BlockJobInfoMirror;
use schema::job::{
    BlockJobChangeOptions, BlockJobChangeType, BlockdevMirrorArgs, BlockdevOnError, MirrorCopyMode,
    MirrorSyncMode,
};

use super::buffers::CopyBuffers;
use super::mirror_top::{ActiveWrites, MirrorTop};
use super::stream::backing_chain;
use super::{busy_reason, check_root, create_block_job, lock, CommonOptions, MadeWritable};
use crate::backend::BlockBackend;
use crate::dirty_bitmap::DirtyBitmap;
use crate::driver::{WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult};
use crate::graph::{generic, BackendPerms, BlockGraph, Drained, NodeBlocker};
use crate::job::{ErrorAction, JobContext, JobDriver, JobRegistry};
use crate::node::Node;
use crate::permissions::Perm;
use crate::write_hooks::{WriteKind, WriteObserver, WriteRequest};

/// The largest single copy (QEMU's `MAX_IO_BYTES`).
const MAX_CHUNK: u64 = 1 << 20;

/// Bytes in flight by default (QEMU's `DEFAULT_MIRROR_BUF_SIZE`).
pub(crate) const DEFAULT_BUF_SIZE: u64 = 16 << 20;

/// The most copies in flight (QEMU's `MAX_IN_FLIGHT`).
const MAX_IN_FLIGHT: usize = 16;

/// Starts a mirror job (`blockdev-mirror`); it runs once this returns.
pub async fn start(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    args: BlockdevMirrorArgs,
) -> BlockResult<()> {
    let source = graph.lookup(Some(&args.device), Some(&args.device))?;
    let target = graph.lookup(Some(&args.target), Some(&args.target))?;
    // A source under a running mirror has its filter above it: QEMU
    // finds it is not a root before it finds it busy.
    check_root(graph, &source)?;
    graph.check_not_blocked(&source)?;
    graph.check_not_blocked(&target)?;
    if matches!(
        args.sync,
        MirrorSyncMode::Incremental | MirrorSyncMode::Bitmap
    ) {
        return Err(generic(format!(
            "Sync mode '{}' not supported",
            crate::job::job_type_name_of(&args.sync)
        )));
    }
    let replaces = args
        .replaces
        .as_deref()
        .map(|name| check_replaces(graph, &source, name))
        .transpose()?;
    let granularity = check_granularity(args.granularity, &target)?;
    let buf_size = buf_size(args.buf_size)?;
    if Arc::ptr_eq(&source, &target) {
        return Err(generic("Can't mirror node into itself"));
    }
    if let Some(name) = &args.filter_node_name {
        if graph.node(name).is_some() {
            return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
        }
    }
    let initial = match args.sync {
        MirrorSyncMode::Full => InitialDirt::All,
        MirrorSyncMode::Top => InitialDirt::AboveDepth(2),
        _ => InitialDirt::Nothing,
    };
    let setup = MirrorSetup {
        job_type: JobType::Mirror,
        common: CommonOptions {
            job_id: args.job_id.clone(),
            speed: args.speed,
            auto_finalize: args.auto_finalize,
            auto_dismiss: args.auto_dismiss,
        },
        source,
        target,
        initial,
        granularity,
        buf_size,
        on_source_error: args.on_source_error.unwrap_or_default(),
        on_target_error: args.on_target_error.unwrap_or_default(),
        copy_mode: args.copy_mode.unwrap_or_default(),
        filter_node_name: args.filter_node_name,
        owns_target: false,
        replaces,
    };
    start_with(graph, jobs, setup).await
}

/// The node `replaces` names, checked as QEMU's `check_to_replace_node`:
/// it must exist, not be held by a job, and show what `source` shows (be
/// the source or below it through filters only), with the same size.
pub(crate) fn check_replaces(
    graph: &BlockGraph,
    source: &Arc<Node>,
    name: &str,
) -> BlockResult<Arc<Node>> {
    let node = graph
        .node(name)
        .ok_or_else(|| generic(format!("Failed to find node with node-name='{name}'")))?;
    graph.check_not_blocked(&node)?;
    if !can_replace(source, &node) {
        return Err(generic(format!(
            "Cannot replace '{name}' by a node mirrored from '{}', because it cannot be \
             guaranteed that doing so would not lead to an abrupt change of visible data",
            source.name()
        )));
    }
    if node.size() != source.size() {
        return Err(generic(
            "cannot replace image with a mirror image of different size",
        ));
    }
    Ok(node)
}

/// Whether `node` is `source` or below it through filters only (QEMU's
/// `bdrv_recurse_can_replace`): replacing it changes nothing `source`'s
/// users see.
fn can_replace(source: &Arc<Node>, node: &Arc<Node>) -> bool {
    let mut current = source.clone();
    loop {
        if Arc::ptr_eq(&current, node) {
            return true;
        }
        match current.driver().filtered() {
            Some(edge) => current = edge.node(),
            None => return false,
        }
    }
}

/// `buf-size`, checked as QEMU does (0 or absent: the default).
pub(crate) fn buf_size(buf_size: Option<i64>) -> BlockResult<u64> {
    match buf_size {
        None | Some(0) => Ok(DEFAULT_BUF_SIZE),
        Some(size) => u64::try_from(size).map_err(|_| generic("Invalid parameter 'buf-size'")),
    }
}

/// What the copy starts from.
pub(crate) enum InitialDirt {
    /// The whole source (`sync=full`).
    All,
    /// What the source's chain holds above this depth (1 is the source's
    /// own layer): `sync=top` is depth 2, an active commit the base's.
    AboveDepth(u32),
    /// What reads as anything but zeroes (`sync=full` into a target that
    /// was just created, so reads as zeroes already: `drive-mirror`).
    Data,
    /// Only what is written from now on (`sync=none`).
    Nothing,
}

/// A mirror to start, checked: `blockdev-mirror`'s, or an active commit's.
pub(crate) struct MirrorSetup {
    pub job_type: JobType,
    pub common: CommonOptions,
    pub source: Arc<Node>,
    pub target: Arc<Node>,
    pub initial: InitialDirt,
    pub granularity: u64,
    pub buf_size: u64,
    pub on_source_error: BlockdevOnError,
    pub on_target_error: BlockdevOnError,
    pub copy_mode: MirrorCopyMode,
    pub filter_node_name: Option<String>,
    /// The target was opened for the job (`drive-mirror`): it closes with
    /// the job unless the pivot gave it users.
    pub owns_target: bool,
    /// The node the target takes the place of at the pivot, if not the
    /// source (`replaces`: a node below the source through filters).
    pub replaces: Option<Arc<Node>>,
}

/// Creates the job, inserts the filter and starts copying.
pub(crate) async fn start_with(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    setup: MirrorSetup,
) -> BlockResult<()> {
    let MirrorSetup {
        job_type,
        common,
        source,
        target,
        initial,
        granularity,
        buf_size,
        on_source_error,
        on_target_error,
        copy_mode,
        filter_node_name,
        owns_target,
        replaces,
    } = setup;
    let active = Arc::new(ActiveWrites {
        target: target.clone(),
        enabled: AtomicBool::new(copy_mode == MirrorCopyMode::WriteBlocking),
    });
    let mirror = Arc::new(Mirror {
        graph: graph.clone(),
        job_type,
        source: source.clone(),
        target: target.clone(),
        initial,
        granularity,
        buf_size,
        on_source_error,
        on_target_error,
        active: active.clone(),
        bitmap: Arc::new(DirtyBitmap::new(source.size(), granularity)),
        buffers: CopyBuffers::default(),
        filter: Mutex::default(),
        target_backend: Mutex::default(),
        blocker: Mutex::default(),
        recorder: Mutex::default(),
        pivot: Mutex::default(),
        ready: AtomicBool::new(false),
        owns_target,
        replaces: replaces.filter(|node| !Arc::ptr_eq(node, &source)),
        made_writable: MadeWritable::default(),
    });
    let created = create_block_job(jobs, job_type, &common, mirror.clone())?;
    mirror.attach(filter_node_name.as_deref(), active).await?;
    created.start(move |context| async move { mirror.run(context).await });
    Ok(())
}

/// QEMU's checks of `granularity`; the default is the target's
/// ([`crate::bitmaps::default_granularity`]).
pub(crate) fn check_granularity(granularity: Option<u32>, target: &Node) -> BlockResult<u64> {
    let Some(granularity) = granularity.filter(|&g| g != 0) else {
        return Ok(crate::bitmaps::default_granularity(target));
    };
    if !(512..=64 << 20).contains(&granularity) {
        return Err(generic(
            "Parameter 'granularity' expects a value in range [512B, 64MB]",
        ));
    }
    if !granularity.is_power_of_two() {
        return Err(generic("Parameter 'granularity' expects a power of 2"));
    }
    Ok(u64::from(granularity))
}

/// A running mirror.
struct Mirror {
    graph: BlockGraph,
    /// `mirror`, or `commit` for an active commit.
    job_type: JobType,
    source: Arc<Node>,
    target: Arc<Node>,
    initial: InitialDirt,
    granularity: u64,
    buf_size: u64,
    on_source_error: BlockdevOnError,
    on_target_error: BlockdevOnError,
    active: Arc<ActiveWrites>,
    bitmap: Arc<DirtyBitmap>,
    buffers: CopyBuffers,
    /// The `mirror_top` node's name while it is in the graph.
    filter: Mutex<Option<String>>,
    /// The job's write access to the target, until the pivot.
    target_backend: Mutex<Option<BlockBackend>>,
    blocker: Mutex<Option<NodeBlocker>>,
    recorder: Mutex<Option<Arc<dyn WriteObserver>>>,
    /// The drained section a completing mirror holds until its pivot.
    pivot: Mutex<Option<Drained>>,
    ready: AtomicBool,
    owns_target: bool,
    /// What the target replaces at the pivot instead of the source.
    replaces: Option<Arc<Node>>,
    /// An active commit's base, if it was read-only.
    made_writable: MadeWritable,
}

/// Marks what is written to the source, and wakes the job.
struct DirtyRecorder {
    bitmap: Arc<DirtyBitmap>,
    kick: Arc<tokio::sync::Notify>,
}

impl WriteObserver for DirtyRecorder {
    fn after_write(&self, _node: &Node, request: &WriteRequest, _result: &BlockResult<()>) {
        if request.kind != WriteKind::Resize {
            // A failed write may have changed part of the range too.
            self.bitmap.set(request.offset, request.len);
            self.kick.notify_one();
        }
    }
}

/// One copy's outcome: the range, and which side failed.
type CopyResult = (Range<u64>, Result<(), (bool, BlockError)>);

impl Mirror {
    /// Inserts the filter above the source, takes the target, holds the
    /// nodes (QEMU's blockers).
    async fn attach(
        &self,
        filter_name: Option<&str>,
        active: Arc<ActiveWrites>,
    ) -> BlockResult<()> {
        // An active commit writes into the (read-only) base.
        let writable: &[&Arc<Node>] = if self.job_type == JobType::Commit {
            &[&self.target]
        } else {
            &[]
        };
        self.made_writable
            .around(
                &self.graph,
                writable,
                "mirror",
                self.attach_nodes(filter_name, active),
            )
            .await
    }

    async fn attach_nodes(
        &self,
        filter_name: Option<&str>,
        active: Arc<ActiveWrites>,
    ) -> BlockResult<()> {
        let target_backend = self.graph.attach_backend_with(
            self.target.name(),
            BackendPerms {
                perm: Perm::WRITE | Perm::CONSISTENT_READ,
                shared: Perm::WRITE_UNCHANGED | Perm::CONSISTENT_READ,
            },
        )?;
        let filter = self
            .graph
            .insert_filter(filter_name, self.source.name(), move |source| {
                Ok(Box::new(MirrorTop { source, active }))
            })
            .await?;
        let reason = busy_reason(&crate::job::job_type_name(self.job_type));
        let blocker = self.graph.block_nodes(
            &[self.source.clone(), filter.clone(), self.target.clone()],
            &reason,
        )?;
        // An active commit works along the chain down to its target.
        if backing_chain(&self.source)[1..]
            .iter()
            .any(|n| Arc::ptr_eq(n, &self.target))
        {
            blocker.freeze_chain(&filter, &self.target);
        }
        blocker.freeze_links_into(&filter);
        *lock(&self.filter) = Some(filter.name().to_owned());
        *lock(&self.target_backend) = Some(target_backend);
        *lock(&self.blocker) = Some(blocker);
        Ok(())
    }

    async fn run(self: Arc<Self>, context: JobContext) -> BlockResult<()> {
        if self.source.size() != self.target.size() {
            return Err(generic("Source and target image have different sizes"));
        }
        let recorder: Arc<dyn WriteObserver> = Arc::new(DirtyRecorder {
            bitmap: self.bitmap.clone(),
            kick: context.kicker(),
        });
        self.source.attach_write_observer(recorder.clone());
        *lock(&self.recorder) = Some(recorder);
        self.mark_initial_dirt().await?;
        context.set_remaining(self.bitmap.dirty_bytes());
        context.pause_point().await;

        self.copy_until_ready_and_done(&context).await?;
        if context.is_cancelled() {
            return Ok(());
        }
        // Completing or soft-cancelled when ready: nothing new comes in
        // while the rest is copied, and the target is flushed.
        let filter = lock(&self.filter).clone().unwrap_or_default();
        let filter_node = self.graph.lookup(None, Some(&filter))?;
        let drained = self.graph.drained(&[filter_node]).await;
        while let Some(range) = self.bitmap.next_dirty(0, self.chunk()) {
            self.bitmap.reset(range.start, range.end - range.start);
            let (range, result) = self.copy(range).await;
            if let Err((is_read, error)) = result {
                self.bitmap.set(range.start, range.end - range.start);
                match self.error_action(&context, is_read, &error).await {
                    ErrorAction::Report => return Err(error),
                    ErrorAction::Ignore | ErrorAction::Retry => {}
                }
            }
        }
        self.target.flush().await?;
        if context.complete_requested() && !context.cancel_requested() {
            *lock(&self.pivot) = Some(drained);
        }
        Ok(())
    }

    /// The ranges to copy at the start (see [`InitialDirt`]).
    async fn mark_initial_dirt(&self) -> BlockResult<()> {
        match self.initial {
            InitialDirt::All => self.bitmap.set_all(),
            InitialDirt::AboveDepth(_) | InitialDirt::Data => {
                let size = self.source.size();
                let mut offset = 0;
                while offset < size {
                    let extent = self.source.block_status(offset, size - offset).await?;
                    let copy = match self.initial {
                        InitialDirt::AboveDepth(depth) => (1..depth).contains(&extent.depth),
                        _ => extent.data && !extent.zero,
                    };
                    if copy {
                        self.bitmap.set(offset, extent.length);
                    }
                    offset += extent.length.max(1);
                }
            }
            InitialDirt::Nothing => {}
        }
        Ok(())
    }

    fn chunk(&self) -> u64 {
        MAX_CHUNK.max(self.granularity)
    }

    /// Copies dirty ranges, many at once, until nothing is dirty, the job
    /// is ready, and a completion or cancel was asked for.
    async fn copy_until_ready_and_done(self: &Arc<Self>, context: &JobContext) -> BlockResult<()> {
        let chunk = self.chunk();
        let max_in_flight = ((self.buf_size / chunk) as usize).clamp(1, MAX_IN_FLIGHT);
        let mut in_flight = FuturesUnordered::new();
        let mut cursor = 0;
        loop {
            if in_flight.is_empty() {
                context.pause_point().await;
                if context.is_cancelled() {
                    return Ok(());
                }
            }
            while in_flight.len() < max_in_flight
                && !context.is_cancelled()
                && !context.pause_requested()
            {
                let next = self
                    .bitmap
                    .next_dirty(cursor, chunk)
                    .or_else(|| self.bitmap.next_dirty(0, chunk));
                let Some(range) = next else { break };
                self.bitmap.reset(range.start, range.end - range.start);
                cursor = range.end;
                let range_of_failed = range.clone();
                let mirror = Arc::clone(self);
                let copy = async move { mirror.copy(range).await };
                let failed = move |error| (range_of_failed, Err((false, error)));
                in_flight.push(super::spawn_copy(copy, failed));
            }
            let Some((range, result)) = in_flight.next().await else {
                if self.bitmap.dirty_bytes() > 0 {
                    // Nothing was started: a pause is pending.
                    continue;
                }
                // Nothing dirty, nothing in flight.
                if !self.ready.swap(true, Ordering::AcqRel) {
                    context.set_ready();
                }
                if context.complete_requested() || context.cancel_requested() {
                    return Ok(());
                }
                context.set_remaining(0);
                context.wait_kick().await;
                continue;
            };
            let len = range.end - range.start;
            match result {
                Ok(()) => context.advance(len),
                Err((is_read, error)) => {
                    self.bitmap.set(range.start, len);
                    if self.error_action(context, is_read, &error).await == ErrorAction::Report {
                        // Let the other copies end before failing.
                        while in_flight.next().await.is_some() {}
                        return Err(error);
                    }
                }
            }
            context.set_remaining(self.bitmap.dirty_bytes() + in_flight.len() as u64 * chunk);
            context.rate_limit(len).await;
        }
    }

    async fn error_action(
        &self,
        context: &JobContext,
        is_read: bool,
        error: &BlockError,
    ) -> ErrorAction {
        let policy = if is_read {
            self.on_source_error
        } else {
            self.on_target_error
        };
        context.error_action(policy, is_read, error).await
    }

    /// Copies `range` from the source to the target: zeroes as
    /// write-zeroes, data read and written. On error, whether it was the
    /// read.
    async fn copy(&self, range: Range<u64>) -> CopyResult {
        let mut offset = range.start;
        while offset < range.end {
            let extent = match self.source.block_status(offset, range.end - offset).await {
                Ok(extent) => extent,
                Err(error) => return (range, Err((true, error))),
            };
            let len = extent.length.clamp(1, range.end - offset);
            let result = if extent.zero || (!extent.data && extent.depth == 0) {
                let flags = ZeroFlags {
                    may_unmap: true,
                    ..ZeroFlags::default()
                };
                self.target
                    .write_zeroes(offset, len, flags)
                    .await
                    .map_err(|e| (false, e))
            } else {
                match self.buffers.take(len as usize) {
                    Err(error) => Err((true, error)),
                    Ok(buf) => {
                        let copied = match self.source.read(offset, &buf).await {
                            Err(error) => Err((true, error)),
                            Ok(()) => self
                                .target
                                .write(offset, &buf, WriteFlags::default())
                                .await
                                .map_err(|e| (false, e)),
                        };
                        self.buffers.give(buf);
                        copied
                    }
                }
            };
            if let Err(error) = result {
                return (range, Err(error));
            }
            offset += len;
        }
        (range, Ok(()))
    }

    /// Stops recording, gives the target back, and takes the filter out:
    /// replaced by the target (the pivot) or by the source.
    async fn exit(&self, pivot: Option<Drained>) -> BlockResult<()> {
        if let Some(recorder) = lock(&self.recorder).take() {
            self.source.detach_write_observer(&recorder);
        }
        lock(&self.target_backend).take();
        let Some(filter) = lock(&self.filter).take() else {
            return Ok(());
        };
        // The job's own hold on the filter goes first, so it can close.
        lock(&self.blocker).take();
        if pivot.is_none() {
            return self.graph.remove_filter(&filter).await;
        }
        let result = match &self.replaces {
            None => {
                let pivoted = self.graph.replace_node(&filter, self.target.name()).await;
                pivoted.and(self.graph.remove_filter(&filter).await)
            }
            Some(node) => {
                let removed = self.graph.remove_filter(&filter).await;
                removed.and(self.replace(node).await)
            }
        };
        drop(pivot);
        result
    }

    /// The pivot of a mirror with `replaces`: `node` is replaced by the
    /// target if it still shows what the source shows (QEMU's check at
    /// completion).
    async fn replace(&self, node: &Arc<Node>) -> BlockResult<()> {
        if !can_replace(&self.source, node) {
            return Err(generic(format!(
                "Can no longer replace '{}' by '{}', because it can no longer be guaranteed \
                 that doing so would not lead to an abrupt change of visible data",
                node.name(),
                self.target.name()
            )));
        }
        self.graph
            .replace_node(node.name(), self.target.name())
            .await
    }
}

#[async_trait]
impl JobDriver for Mirror {
    fn can_complete(&self) -> bool {
        true
    }

    /// QEMU's `mirror_cancel`: before it is ready, any cancel is forced.
    fn cancel(&self, force: bool, ready: bool) -> bool {
        force || !ready
    }

    fn change(&self, options: &BlockJobChangeOptions) -> BlockResult<()> {
        let BlockJobChangeType::Mirror(mirror) = &options.options else {
            return Ok(());
        };
        let write_blocking = self.active.enabled.load(Ordering::Acquire);
        match mirror.copy_mode {
            MirrorCopyMode::WriteBlocking => {
                self.active.enabled.store(true, Ordering::Release);
                Ok(())
            }
            MirrorCopyMode::Background if !write_blocking => Ok(()),
            MirrorCopyMode::Background => Err(generic(
                "Change to copy mode 'background' is not implemented",
            )),
        }
    }

    fn mirror_info(&self) -> Option<BlockJobInfoMirror> {
        if self.job_type != JobType::Mirror {
            return None;
        }
        let actively_synced = self.active.enabled.load(Ordering::Acquire)
            && self.ready.load(Ordering::Acquire)
            && self.bitmap.dirty_bytes() == 0;
        Some(BlockJobInfoMirror { actively_synced })
    }

    /// The pivot, when the job completed; otherwise the source goes back.
    async fn prepare(&self) -> BlockResult<()> {
        let pivot = lock(&self.pivot).take();
        let pivoted = pivot.is_some();
        self.exit(pivot).await?;
        if pivoted {
            // The target took the place of the (writable) source.
            self.made_writable.keep();
        }
        Ok(())
    }

    async fn abort(&self) {
        lock(&self.pivot).take();
        if let Err(error) = self.exit(None).await {
            tracing::warn!("mirror: putting the source back failed: {error}");
        }
    }

    async fn clean(&self) {
        lock(&self.blocker).take();
        lock(&self.target_backend).take();
        self.made_writable.restore(&self.graph, "commit").await;
        if self.owns_target {
            self.graph.release_job_node(&self.target).await;
        }
    }
}

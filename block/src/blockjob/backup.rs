//! `blockdev-backup`: a point-in-time copy of a node that stays in use,
//! as QEMU 10 makes it. When the job starts, a `copy-before-write` filter
//! goes above the source and the clusters to copy are fixed (all, the
//! source's own layer, a dirty bitmap's, or none); from then on a write
//! to a cluster not yet copied first copies the old data to the target,
//! and the job copies the rest. A cluster is copied at most once: the job
//! and the filter take the same per-cluster locks and clear the cluster
//! from [`BlockCopy::to_copy`] once it is on the target. With a bitmap,
//! the bitmap is frozen while the backup runs (new writes go to its
//! successor) and afterwards keeps, per `bitmap-mode`, only the new
//! writes (success), everything (never), or what was not copied.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::stream::{FuturesUnordered, StreamExt};
use schema::create::JobType;
use schema::job::{BitmapSyncMode, BlockdevBackupArgs, BlockdevOnError, MirrorSyncMode};

use super::buffers::CopyBuffers;
use super::{busy_reason, create_block_job_in, lock, CommonOptions};
use crate::backend::BlockBackend;
use crate::bitmaps::NamedBitmap;
use crate::dirty_bitmap::DirtyBitmap;
use crate::driver::{BlockDriver, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult};
use crate::graph::{generic, BackendPerms, BlockGraph, Drained, NodeBlocker};
use crate::iobuf::IoBuf;
use crate::job::{CreatedJob, ErrorAction, JobContext, JobDriver, JobRegistry, TxnId};
use crate::node::{Node, NodeChild};
use crate::permissions::Perm;
use crate::range_lock::RangeLocks;

/// The smallest unit copied (QEMU's `BACKUP_CLUSTER_SIZE_DEFAULT`).
const MIN_CLUSTER: u64 = 64 << 10;

/// The largest single copy by the job.
const MAX_CHUNK: u64 = 1 << 20;

/// The most copies the job has in flight (`x-perf`'s `max-workers` may
/// ask for fewer).
const MAX_IN_FLIGHT: usize = 16;

/// The largest `min-cluster-size` taken (a copy buffer is at least a
/// cluster).
const MAX_MIN_CLUSTER: u64 = 64 << 20;

/// Starts a backup job (`blockdev-backup`).
pub async fn start(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    args: BlockdevBackupArgs,
) -> BlockResult<()> {
    prepare(graph, jobs, args, None).await?.start();
    Ok(())
}

/// A backup whose job exists and whose point in time is fixed, not yet
/// running: a transaction starts it with the others, or abandons it.
pub struct PreparedBackup {
    created: CreatedJob,
    backup: Arc<Backup>,
    /// The source stays drained from the point in time until the job has
    /// started, as in QEMU (whose job therefore starts paused).
    drained: Drained,
}

impl PreparedBackup {
    /// Starts the job, then ends the drained section.
    pub fn start(self) {
        let PreparedBackup {
            created,
            backup,
            drained,
        } = self;
        let pause = created.hold_for_drain();
        created.start(move |context| async move { backup.run(context).await });
        drop(drained);
        drop(pause);
    }

    /// The target was opened for this backup: it closes when the job ends.
    pub fn own_target(&self) {
        self.backup
            .owns_target
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Gives everything back: the filter, the bitmap, the job.
    pub async fn abandon(self) {
        if let Some(bitmap) = &self.backup.bitmap {
            bitmap.reclaim(None);
        }
        self.backup.detach().await;
        if self
            .backup
            .owns_target
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.backup
                .graph
                .release_job_node(&self.backup.copy.target)
                .await;
        }
    }
}

/// Checks a backup, creates its job (in `txn`, if any) and fixes its
/// point in time.
pub async fn prepare(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    args: BlockdevBackupArgs,
    txn: Option<TxnId>,
) -> BlockResult<PreparedBackup> {
    let source = graph.lookup(Some(&args.device), Some(&args.device))?;
    let target = graph.lookup(Some(&args.target), Some(&args.target))?;
    if Arc::ptr_eq(&source, &target) {
        return Err(generic("Source and target cannot be the same"));
    }
    let (sync, bitmap, bitmap_mode) = check_bitmap_options(graph, &source, &args)?;
    let compress = args.compress == Some(true);
    if compress && !target.driver().supports_compressed_writes() {
        // QEMU names the target's device, which a node has not.
        return Err(generic("Compression is not supported for this drive "));
    }
    graph.check_not_blocked(&source)?;
    graph.check_not_blocked(&target)?;
    let perf = args.x_perf.clone().unwrap_or_default();
    let workers = check_workers(perf.max_workers)?;
    let max_chunk = perf.max_chunk.unwrap_or(0);
    if max_chunk < 0 {
        return Err(generic(
            "max-chunk must be zero (which means no limit) or positive",
        ));
    }
    if source.size() != target.size() {
        return Err(generic("Source and target image have different sizes"));
    }
    if let Some(name) = &args.filter_node_name {
        if graph.node(name).is_some() {
            return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
        }
    }
    let cluster = target
        .driver_info()
        .and_then(|info| info.cluster_size)
        .unwrap_or(0)
        .max(check_min_cluster(perf.min_cluster_size)?);
    let max_chunk = max_chunk as u64;
    if max_chunk != 0 && max_chunk < cluster {
        return Err(generic(format!(
            "Required max-chunk ({max_chunk}) is less than backup cluster size ({cluster})"
        )));
    }
    // Copies are whole clusters, at most `MAX_CHUNK` unless a cluster is
    // larger, and at most `max-chunk`.
    let chunk = match max_chunk {
        0 => MAX_CHUNK.max(cluster),
        limit => limit.min(MAX_CHUNK.max(cluster)) / cluster * cluster,
    };
    let copy = Arc::new(BlockCopy {
        source: source.clone(),
        target: target.clone(),
        cluster,
        compress,
        to_copy: DirtyBitmap::new(source.size(), cluster),
        locks: RangeLocks::default(),
        buffers: CopyBuffers::default(),
    });
    let backup = Arc::new(Backup {
        graph: graph.clone(),
        copy: copy.clone(),
        sync,
        bitmap,
        bitmap_mode,
        chunk,
        workers,
        on_source_error: args.on_source_error.unwrap_or_default(),
        on_target_error: args.on_target_error.unwrap_or_default(),
        filter: Mutex::default(),
        target_backend: Mutex::default(),
        blocker: Mutex::default(),
        owns_target: Default::default(),
    });
    let common = CommonOptions {
        job_id: args.job_id.clone(),
        speed: args.speed,
        auto_finalize: args.auto_finalize,
        auto_dismiss: args.auto_dismiss,
    };
    let created = create_block_job_in(jobs, JobType::Backup, &common, backup.clone(), txn)?;
    let drained = backup.attach(args.filter_node_name.as_deref()).await?;
    Ok(PreparedBackup {
        created,
        backup,
        drained,
    })
}

/// `x-perf`'s `max-workers`, checked as QEMU (default 64), then bounded
/// by the most copies storaged keeps in flight.
fn check_workers(max_workers: Option<i64>) -> BlockResult<usize> {
    let workers = max_workers.unwrap_or(64);
    if !(1..=i64::from(i32::MAX)).contains(&workers) {
        return Err(generic(format!(
            "max-workers must be between 1 and {}",
            i32::MAX
        )));
    }
    Ok((workers as usize).min(MAX_IN_FLIGHT))
}

/// `x-perf`'s `min-cluster-size`: a power of two (QEMU's check), at most
/// [`MAX_MIN_CLUSTER`] (storaged's: a copy is at least one cluster); the
/// cluster is never below [`MIN_CLUSTER`].
fn check_min_cluster(min_cluster: Option<schema::Size>) -> BlockResult<u64> {
    let min_cluster = min_cluster.map_or(0, |size| size.bytes());
    if min_cluster != 0 && !min_cluster.is_power_of_two() {
        return Err(generic(
            "Could not create node: Cannot create block-copy-state: \
             min-cluster-size needs to be a power of 2",
        ));
    }
    if min_cluster > MAX_MIN_CLUSTER {
        return Err(generic(format!(
            "min-cluster-size must be at most {MAX_MIN_CLUSTER}"
        )));
    }
    Ok(min_cluster.max(MIN_CLUSTER))
}

/// QEMU's checks of `sync`, `bitmap` and `bitmap-mode`: the sync mode
/// (`incremental` is `bitmap` with `on-success`), the bitmap and its mode.
fn check_bitmap_options(
    graph: &BlockGraph,
    source: &Node,
    args: &BlockdevBackupArgs,
) -> BlockResult<(MirrorSyncMode, Option<Arc<NamedBitmap>>, BitmapSyncMode)> {
    let mut sync = args.sync;
    let mut mode = args.bitmap_mode;
    if matches!(sync, MirrorSyncMode::Bitmap | MirrorSyncMode::Incremental) && args.bitmap.is_none()
    {
        let name = if sync == MirrorSyncMode::Bitmap {
            "bitmap"
        } else {
            "incremental"
        };
        return Err(generic(format!(
            "must provide a valid bitmap name for '{name}' sync mode"
        )));
    }
    let bitmap = match &args.bitmap {
        None => None,
        Some(name) => Some(
            graph
                .bitmap_lookup(source.name(), name)
                .map(|(_, bitmap)| bitmap)
                .map_err(|_| generic(format!("Bitmap '{name}' could not be found")))?,
        ),
    };
    if sync == MirrorSyncMode::Incremental {
        if mode.is_some_and(|m| m != BitmapSyncMode::OnSuccess) {
            return Err(generic(
                "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'",
            ));
        }
        mode = Some(BitmapSyncMode::OnSuccess);
        sync = MirrorSyncMode::Bitmap;
    }
    match (&bitmap, mode) {
        (Some(_), None) => Err(generic(
            "Bitmap sync mode must be given when providing a bitmap",
        )),
        (None, Some(_)) => Err(generic("Cannot specify bitmap sync mode without a bitmap")),
        (_, mode) => Ok((sync, bitmap, mode.unwrap_or(BitmapSyncMode::Never))),
    }
}

/// What is still to be copied to the target, and the per-cluster locks
/// that order the job's copies and the filter's (QEMU's block-copy).
pub(super) struct BlockCopy {
    source: Arc<Node>,
    target: Arc<Node>,
    cluster: u64,
    /// `compress`: whole clusters go to the target compressed.
    compress: bool,
    to_copy: DirtyBitmap,
    locks: RangeLocks,
    buffers: CopyBuffers,
}

impl BlockCopy {
    /// Copies what of `range` (rounded out to clusters) is still to be
    /// copied; returns how many bytes it copied. On error, whether it was
    /// the read; the clusters stay to be copied.
    async fn copy(&self, range: Range<u64>) -> Result<u64, (bool, BlockError)> {
        let start = range.start / self.cluster;
        let end = range.end.div_ceil(self.cluster);
        let _lock = self.locks.lock(start, end, true).await;
        let end_byte = (end * self.cluster).min(self.to_copy.size());
        let mut copied = 0;
        let mut at = start * self.cluster;
        while let Some(dirty) = self.to_copy.next_dirty(at, end_byte - at.min(end_byte)) {
            if dirty.start >= end_byte {
                break;
            }
            let dirty = dirty.start..dirty.end.min(end_byte);
            self.copy_now(dirty.clone()).await?;
            self.to_copy.reset(dirty.start, dirty.end - dirty.start);
            copied += dirty.end - dirty.start;
            at = dirty.end;
        }
        Ok(copied)
    }

    /// Reads the source's current data of `range` and writes it to the
    /// target (zeroes as write-zeroes).
    async fn copy_now(&self, range: Range<u64>) -> Result<(), (bool, BlockError)> {
        if self.compress {
            return self.copy_compressed(range).await;
        }
        let mut offset = range.start;
        while offset < range.end {
            let extent = self
                .source
                .block_status(offset, range.end - offset)
                .await
                .map_err(|e| (true, e))?;
            let len = extent.length.clamp(1, range.end - offset);
            if extent.zero || (!extent.data && extent.depth == 0) {
                self.target
                    .write_zeroes(
                        offset,
                        len,
                        ZeroFlags {
                            may_unmap: true,
                            ..ZeroFlags::default()
                        },
                    )
                    .await
                    .map_err(|e| (false, e))?;
            } else {
                let buf = self.buffers.take(len as usize).map_err(|e| (true, e))?;
                let copied = async {
                    self.source
                        .read(offset, &buf)
                        .await
                        .map_err(|e| (true, e))?;
                    self.target
                        .write(offset, &buf, WriteFlags::default())
                        .await
                        .map_err(|e| (false, e))
                }
                .await;
                self.buffers.give(buf);
                copied?;
            }
            offset += len;
        }
        Ok(())
    }
}

impl BlockCopy {
    /// Copies `range` (whole target clusters) as it is, each cluster
    /// compressed; all-zero ranges as write-zeroes.
    async fn copy_compressed(&self, range: Range<u64>) -> Result<(), (bool, BlockError)> {
        let buf = self
            .buffers
            .take((range.end - range.start) as usize)
            .map_err(|e| (true, e))?;
        let copied = async {
            self.source
                .read(range.start, &buf)
                .await
                .map_err(|e| (true, e))?;
            let written = if buf.is_zero() {
                let zeroes = ZeroFlags {
                    may_unmap: true,
                    ..ZeroFlags::default()
                };
                self.target
                    .write_zeroes(range.start, buf.len() as u64, zeroes)
                    .await
            } else {
                let flags = WriteFlags {
                    compressed: true,
                    ..WriteFlags::default()
                };
                self.target.write(range.start, &buf, flags).await
            };
            written.map_err(|e| (false, e))
        }
        .await;
        self.buffers.give(buf);
        copied
    }
}

/// QEMU's `copy-before-write`: before a write, write-zeroes or discard
/// reaches the source, the old data of the clusters it touches goes to
/// the target if it has not yet. A failed copy fails the write (QEMU's
/// default `on-cbw-error=break-guest-write`).
struct CopyBeforeWrite {
    source: Arc<NodeChild>,
    copy: Arc<BlockCopy>,
}

impl CopyBeforeWrite {
    async fn before(&self, offset: u64, len: u64) -> BlockResult<()> {
        if len == 0 {
            return Ok(());
        }
        self.copy
            .copy(offset..offset.saturating_add(len).min(self.copy.to_copy.size()))
            .await
            .map(drop)
            .map_err(|(_, error)| error)
    }
}

#[async_trait]
impl BlockDriver for CopyBeforeWrite {
    fn format_name(&self) -> &'static str {
        "copy-before-write"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.source)
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.before(offset, buf.len() as u64).await?;
        self.source.write(offset, buf, flags).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.before(offset, len).await?;
        self.source.write_zeroes(offset, len, flags).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.before(offset, len).await?;
        self.source.discard(offset, len).await
    }
}

/// A running backup.
pub struct Backup {
    graph: BlockGraph,
    copy: Arc<BlockCopy>,
    sync: MirrorSyncMode,
    bitmap: Option<Arc<NamedBitmap>>,
    bitmap_mode: BitmapSyncMode,
    /// The largest copy, whole clusters.
    chunk: u64,
    /// The most copies in flight.
    workers: usize,
    on_source_error: BlockdevOnError,
    on_target_error: BlockdevOnError,
    filter: Mutex<Option<Arc<Node>>>,
    target_backend: Mutex<Option<BlockBackend>>,
    blocker: Mutex<Option<NodeBlocker>>,
    /// The target was opened for the job (`drive-backup`): it closes with it.
    owns_target: std::sync::atomic::AtomicBool,
}

impl Backup {
    /// Fixes what to copy and inserts the filter, in one drained section:
    /// that is the backup's point in time. The section is returned: it
    /// ends once the job has started.
    async fn attach(&self, filter_name: Option<&str>) -> BlockResult<Drained> {
        let source = &self.copy.source;
        let target_backend = self.graph.attach_backend_with(
            self.copy.target.name(),
            BackendPerms {
                perm: Perm::WRITE | Perm::CONSISTENT_READ,
                shared: Perm::WRITE_UNCHANGED | Perm::CONSISTENT_READ,
            },
        )?;
        let drained = self.graph.drained(std::slice::from_ref(source)).await;
        self.mark_clusters().await?;
        if let Some(bitmap) = &self.bitmap {
            bitmap.freeze()?;
        }
        let copy = self.copy.clone();
        let inserted = self
            .graph
            .insert_filter(filter_name, source.name(), move |source| {
                Ok(Box::new(CopyBeforeWrite { source, copy }))
            })
            .await;
        let filter = match inserted {
            Ok(filter) => filter,
            Err(error) => {
                if let Some(bitmap) = &self.bitmap {
                    bitmap.reclaim(None);
                }
                return Err(error);
            }
        };
        let held = [source.clone(), filter.clone(), self.copy.target.clone()];
        let blocker = self.graph.block_nodes(&held, &busy_reason("backup"))?;
        blocker.freeze_links_into(&filter);
        *lock(&self.filter) = Some(filter);
        *lock(&self.target_backend) = Some(target_backend);
        *lock(&self.blocker) = Some(blocker);
        Ok(drained)
    }

    /// The clusters to copy, per `sync`; `none` copies only what the
    /// filter meets, so every cluster may be copied once.
    async fn mark_clusters(&self) -> BlockResult<()> {
        let to_copy = &self.copy.to_copy;
        match self.sync {
            MirrorSyncMode::Full | MirrorSyncMode::None => to_copy.set_all(),
            MirrorSyncMode::Top => {
                let source = &self.copy.source;
                let size = source.size();
                let mut offset = 0;
                while offset < size {
                    let extent = source.block_status(offset, size - offset).await?;
                    if extent.depth == 1 {
                        to_copy.set(offset, extent.length);
                    }
                    offset += extent.length.max(1);
                }
            }
            MirrorSyncMode::Bitmap | MirrorSyncMode::Incremental => {
                if let Some(bitmap) = &self.bitmap {
                    to_copy.merge_from(&bitmap.bitmap());
                }
            }
        }
        Ok(())
    }

    async fn run(self: Arc<Self>, context: JobContext) -> BlockResult<()> {
        let to_copy = &self.copy.to_copy;
        if self.sync == MirrorSyncMode::None {
            // Image fleecing: the filter copies; the job waits to be told.
            while !context.cancel_requested() {
                context.wait_kick().await;
            }
            return Ok(());
        }
        context.set_remaining(to_copy.dirty_bytes());
        let chunk = self.chunk;
        let mut in_flight = FuturesUnordered::new();
        let mut cursor = 0;
        loop {
            if in_flight.is_empty() {
                context.pause_point().await;
                if context.is_cancelled() {
                    return Ok(());
                }
            }
            while in_flight.len() < self.workers && !context.pause_requested() {
                let Some(range) = to_copy.next_dirty(cursor, chunk) else {
                    break;
                };
                cursor = range.end;
                let copy = self.copy.clone();
                let copying = range.clone();
                let copied = super::spawn_copy(async move { copy.copy(copying).await }, |error| {
                    Err((false, error))
                });
                in_flight.push(async move { (range, copied.await) });
            }
            let Some((range, result)) = in_flight.next().await else {
                if to_copy.dirty_bytes() == 0 {
                    break;
                }
                // Clusters left behind after an error: go round again.
                cursor = 0;
                continue;
            };
            let len = range.end - range.start;
            match result {
                Ok(_) => context.advance(len),
                Err((is_read, error)) => {
                    let policy = if is_read {
                        self.on_source_error
                    } else {
                        self.on_target_error
                    };
                    match context.error_action(policy, is_read, &error).await {
                        ErrorAction::Report => {
                            while in_flight.next().await.is_some() {}
                            return Err(error);
                        }
                        ErrorAction::Retry => cursor = range.start,
                        ErrorAction::Ignore => {
                            to_copy.reset(range.start, len);
                            context.advance(len);
                        }
                    }
                }
            }
            context.rate_limit(len).await;
        }
        self.copy.target.flush().await
    }

    /// Takes the filter out and frees the nodes.
    async fn detach(&self) {
        lock(&self.blocker).take();
        lock(&self.target_backend).take();
        let filter = lock(&self.filter).take();
        super::remove_job_filter(&self.graph, filter, "backup").await;
    }
}

#[async_trait]
impl JobDriver for Backup {
    async fn commit(&self) {
        if let Some(bitmap) = &self.bitmap {
            match self.bitmap_mode {
                BitmapSyncMode::OnSuccess | BitmapSyncMode::Always => bitmap.abdicate(),
                BitmapSyncMode::Never => bitmap.reclaim(None),
            }
        }
    }

    async fn abort(&self) {
        if let Some(bitmap) = &self.bitmap {
            let remaining =
                (self.bitmap_mode == BitmapSyncMode::Always).then_some(&self.copy.to_copy);
            bitmap.reclaim(remaining);
        }
    }

    async fn clean(&self) {
        self.detach().await;
        if self.owns_target.load(std::sync::atomic::Ordering::Acquire) {
            self.graph.release_job_node(&self.copy.target).await;
        }
    }
}

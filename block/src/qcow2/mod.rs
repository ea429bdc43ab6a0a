//! The `qcow2` format driver: QEMU's copy-on-write image format, versions
//! 2 and 3, over a `file` child and an optional backing image.
//!
//! Layout of the driver:
//! - [`header`], [`header_store`]: the first cluster and its updates;
//! - [`layout`]: geometry and the encoding of table entries;
//! - [`cache`], [`flat_table`]: L2 tables and refcount blocks in a cache,
//!   the L1 and refcount tables whole in memory;
//! - [`refcount`]: host cluster allocation and freeing;
//! - [`mapping`]: guest to host lookups, L2 table allocation;
//! - [`read`], [`write`], [`zero`], [`status`]: the requests;
//! - [`writeback`]: the ordered path from caches to disk (flush);
//! - [`resize`], [`create`], [`repair`], [`corrupt`]: the rest of an
//!   image's life;
//! - [`snapshot`], [`bitmaps`]: internal snapshots and persistent dirty
//!   bitmaps.
//!
//! Concurrency: requests on different guest clusters run in parallel;
//! [`crate::range_lock`] orders requests that share one. Metadata sits behind
//! short locks that are never held across I/O, except the allocation lock
//! (refcounts) and the L2-allocation lock, which serialize allocations.

mod activation;
mod bitmaps;
mod cache;
mod child;
mod compress;
mod compressed_write;
mod corrupt;
mod create;
mod flat_table;
mod header;
mod header_store;
mod info;
mod layout;
mod mapping;
mod open;
mod options;
mod overlap;

mod read;
mod refcount;
mod repair;
mod resize;
mod snapshot;
mod status;
mod write;
mod writeback;
mod zero;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use schema::block::BlkdebugEvent;
use schema::info::{ImageInfoSpecific, SnapshotInfo};
use tokio::sync::Mutex as AsyncMutex;

pub use child::{BlockChild, DriverChild};
pub use create::{
    create, BackingSpec, CreateOptions, Preallocation, Qcow2Version, DEFAULT_CLUSTER_SIZE,
    DEFAULT_REFCOUNT_BITS,
};
pub use header::CompressionType;
pub use options::{CorruptionEvent, CorruptionHook, Qcow2Options};

use crate::range_lock::RangeLocks;
use cache::TableCache;
use flat_table::FlatTable;
use header::{autoclear, compat, incompat, validate_table, ImageHeader};
use header_store::HeaderStore;
use layout::Geometry;
use refcount::Refcounts;

use crate::bitmaps::{BitmapToStore, StoredBitmap};
use crate::driver::{BackingFileName, BlockDriver, DriverInfo, Extent, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::node::NodeChild;

/// What the header says about the backing file, for whoever opens it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackingInfo {
    /// The backing file name as stored (may be relative to the image).
    pub file: Option<String>,
    /// The backing format from the header extension.
    pub format: Option<String>,
}

/// The backing image, as the driver reads it.
pub(crate) struct Backing(Arc<dyn BlockChild>);

/// Facts about the image that do not change while it is open.
struct Facts {
    geo: Geometry,
    compression: CompressionType,
    /// The header's lazy refcounts bit: `lazy-refcounts` when not given.
    lazy_in_header: bool,
    /// What the header names (a stream or commit may change it).
    backing: std::sync::Mutex<BackingInfo>,
    on_corruption: Option<CorruptionHook>,
}

/// A checked `blockdev-reopen` of the node, to apply if the whole reopen
/// succeeds.
struct Reopened {
    tunables: Tunables,
    l2_tables: u64,
    refcount_tables: u64,
}

/// The options a `blockdev-reopen` may change (QEMU's
/// `qcow2_update_options`), besides the cache sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tunables {
    lazy_refcounts: bool,
    pass_discard_request: bool,
    pass_discard_other: bool,
    discard_no_unref: bool,
    /// `pass-discard-snapshot`: clusters a deleted snapshot frees are
    /// discarded in the file.
    pass_discard_snapshot: bool,
    /// Metadata that guest writes are checked against (`overlap-check`).
    overlap_checks: overlap::OverlapChecks,
}

impl Tunables {
    /// What `options` ask of an image of this `version` whose header says
    /// `lazy_in_header`, with QEMU's checks.
    fn from_options(
        options: &Qcow2Options,
        version: u32,
        lazy_in_header: bool,
    ) -> BlockResult<Self> {
        let lazy_refcounts = options.lazy_refcounts.unwrap_or(lazy_in_header);
        if options.discard_no_unref && version < 3 {
            return Err(invalid(
                "discard-no-unref is only supported since qcow2 version 3",
            ));
        }
        if lazy_refcounts && version < 3 {
            return Err(invalid(
                "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
            ));
        }
        Ok(Tunables {
            lazy_refcounts,
            pass_discard_request: options.pass_discard_request.unwrap_or(true),
            pass_discard_other: options.pass_discard_other.unwrap_or(false),
            discard_no_unref: options.discard_no_unref,
            pass_discard_snapshot: options.pass_discard_snapshot.unwrap_or(true),
            overlap_checks: options.overlap_checks,
        })
    }
}

/// An open qcow2 image.
pub struct Qcow2 {
    file: Arc<dyn BlockChild>,
    /// The backing image; a snapshot or a stream may set or clear it.
    backing: arc_swap::ArcSwapOption<Backing>,
    facts: Facts,
    /// What a reopen may change.
    tunables: arc_swap::ArcSwap<Tunables>,
    header: HeaderStore,
    size: AtomicU64,
    /// The active L1 table.
    l1: RwLock<FlatTable>,
    l2_cache: TableCache,
    /// The allocation lock: refcounts and host cluster allocation.
    refs: AsyncMutex<Refcounts>,
    /// Serializes creation and copy-on-write of L2 tables and L1 changes.
    l2_alloc: AsyncMutex<()>,
    /// Orders requests on the same guest clusters.
    clusters: RangeLocks,
    /// Serializes writebacks.
    writeback_lock: AsyncMutex<()>,
    /// A writeback is due because a cache is over its capacity.
    writeback_wanted: AtomicBool,
    /// What an abandoned writeback took and did not write: put back by
    /// the next one (see [`writeback`]).
    unwritten: std::sync::Mutex<writeback::Unwritten>,
    /// The header's dirty bit is set (by us or before we opened).
    dirty: AtomicBool,
    /// Corruption was found: no more writes.
    corrupt: AtomicBool,
    /// Corruption was already reported.
    corruption_reported: AtomicBool,
    /// The snapshot table the header names, with its snapshots.
    snapshot_table: arc_swap::ArcSwap<snapshot::SnapshotTable>,
    /// The bitmap directory the header names (empty without one).
    bitmap_dir: arc_swap::ArcSwap<bitmaps::BitmapDirectory>,
    /// Serializes changes of the stored bitmaps.
    bitmap_lock: AsyncMutex<()>,
    /// Where compressed clusters go next (see [`compressed_write`]).
    compressed_cursor: std::sync::Mutex<Option<compressed_write::CompressedCursor>>,
    /// The image may be written: read-write and active (an inactive
    /// image belongs to another process, see [`activation`]).
    writable: AtomicBool,
    /// The node is read-write (when active): set at open, changed by a
    /// reopen ([`BlockDriver::set_read_only`]).
    read_write: AtomicBool,
    /// The image is this process's (not handed over, see [`activation`]).
    active: AtomicBool,
}

fn invalid(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

/// Reads the first cluster of the image.
async fn read_image_header(file: &dyn BlockChild) -> BlockResult<ImageHeader> {
    let start = file
        .read_vec(0, header::V3_HEADER_LENGTH as usize)
        .await
        .map_err(|e| BlockError::new(e.kind, format!("Could not read qcow2 header: {e}")))?;
    let fixed = header::Header::parse(&start)?;
    let raw = file
        .read_vec(0, fixed.cluster_size() as usize)
        .await
        .map_err(|e| BlockError::new(e.kind, format!("Could not read qcow2 header: {e}")))?;
    ImageHeader::parse(raw)
}

/// Checks where the header puts the tables and reads the L1 and refcount
/// tables: what opening an image reads, and activation reads again.
async fn load_tables(
    file: &Arc<dyn BlockChild>,
    h: &header::Header,
    geo: Geometry,
    refcount_tables: u64,
) -> BlockResult<(FlatTable, Refcounts)> {
    let cs = geo.cluster_size();
    if h.refcount_table_clusters == 0 {
        return Err(invalid("Image does not contain a reference count table"));
    }
    validate_table(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters),
        cs,
        header::MAX_REFTABLE_BYTES,
        cs,
        "Reference count table",
    )?;
    validate_table(
        h.snapshots_offset,
        u64::from(h.nb_snapshots),
        header::SNAPSHOT_HEADER_SIZE,
        header::SNAPSHOT_HEADER_SIZE * header::MAX_SNAPSHOTS,
        cs,
        "Snapshot table",
    )?;
    validate_table(
        h.l1_table_offset,
        u64::from(h.l1_size),
        8,
        header::MAX_L1_BYTES,
        cs,
        "Active L1 table",
    )?;
    let needed_l1 = geo.l1_entries_for(h.size);
    if needed_l1 > i32::MAX as u64 {
        return Err(BlockError::new(ErrorKind::TooLarge, "Image is too big"));
    }
    if u64::from(h.l1_size) < needed_l1 {
        return Err(invalid("L1 table is too small"));
    }
    let l1_bytes = file
        .read_vec(h.l1_table_offset, h.l1_size as usize * 8)
        .await
        .map_err(|e| BlockError::new(e.kind, format!("Could not read L1 table: {e}")))?;
    let l1 = FlatTable::from_bytes(
        h.l1_table_offset,
        &l1_bytes,
        h.l1_size as usize,
        cs,
        layout::L1E_OFFSET_MASK,
    );
    let refs = Refcounts::open(
        geo,
        file.clone(),
        h.refcount_table_offset,
        h.refcount_table_clusters,
        refcount_tables,
    )
    .await?;
    Ok((l1, refs))
}

impl Qcow2 {
    /// The backing file the image's header names, so that the caller can
    /// open it before [`Qcow2::open`].
    pub async fn backing_info(file: &dyn BlockChild) -> BlockResult<BackingInfo> {
        let image = read_image_header(file).await?;
        Ok(BackingInfo {
            file: image.backing_file.clone(),
            format: image.backing_format.clone(),
        })
    }

    /// Opens the image in `file`, with `backing` as its backing image
    /// (`None`: no backing, reads of unallocated clusters give zeroes).
    pub async fn open(
        file: Arc<dyn BlockChild>,
        backing: Option<Arc<dyn BlockChild>>,
        options: Qcow2Options,
    ) -> BlockResult<Qcow2> {
        let writable = options.writable && !options.inactive;
        let image = read_image_header(file.as_ref()).await?;
        let h = image.header.clone();
        h.check_features(writable, &image.feature_names)?;
        let geo = Geometry::new(h.cluster_bits, h.refcount_order, h.version);
        let cs = geo.cluster_size();
        let lazy_in_header = h.compatible_features & compat::LAZY_REFCOUNTS != 0;
        let tunables = Tunables::from_options(&options, h.version, lazy_in_header)?;
        let (l2_tables, refcount_tables) = options.cache_tables(h.size, cs)?;
        let (l1, refs) = load_tables(&file, &h, geo, refcount_tables).await?;
        let facts = Facts {
            geo,
            compression: h.compression_type,
            lazy_in_header,
            backing: std::sync::Mutex::new(BackingInfo {
                file: image.backing_file.clone(),
                format: image.backing_format.clone(),
            }),
            on_corruption: options.on_corruption.clone(),
        };
        let snapshot_table =
            snapshot::read_table(file.as_ref(), h.snapshots_offset, h.nb_snapshots).await?;
        let bitmap_dir = bitmaps::read_directory(file.as_ref(), image.valid_bitmaps(), cs).await?;
        let image_dirty = h.incompatible_features & incompat::DIRTY != 0;
        let qcow2 = Qcow2 {
            header: HeaderStore::new(file.clone(), image),
            file,
            backing: arc_swap::ArcSwapOption::from(backing.map(|child| Arc::new(Backing(child)))),
            facts,
            tunables: arc_swap::ArcSwap::from_pointee(tunables),
            size: AtomicU64::new(h.size),
            l1: RwLock::new(l1),
            l2_cache: TableCache::new(l2_tables as usize),
            refs: AsyncMutex::new(refs),
            l2_alloc: AsyncMutex::new(()),
            clusters: RangeLocks::default(),
            writeback_lock: AsyncMutex::new(()),
            writeback_wanted: AtomicBool::new(false),
            unwritten: std::sync::Mutex::default(),
            dirty: AtomicBool::new(image_dirty),
            corrupt: AtomicBool::new(h.incompatible_features & incompat::CORRUPT != 0),
            corruption_reported: AtomicBool::new(false),
            snapshot_table: arc_swap::ArcSwap::from_pointee(snapshot_table),
            bitmap_dir: arc_swap::ArcSwap::from_pointee(bitmap_dir),
            bitmap_lock: AsyncMutex::new(()),
            compressed_cursor: std::sync::Mutex::new(None),
            writable: AtomicBool::new(writable),
            read_write: AtomicBool::new(options.writable),
            active: AtomicBool::new(!options.inactive),
        };
        if writable {
            qcow2.prepare_for_writing(image_dirty).await?;
        }
        Ok(qcow2)
    }

    /// Before the first write: clears auto-clear bits this driver does not
    /// maintain, and repairs the refcounts of an image left dirty.
    async fn prepare_for_writing(&self, image_dirty: bool) -> BlockResult<()> {
        let h = self.header.get().await;
        if h.autoclear_features & !autoclear::SUPPORTED != 0 {
            self.header
                .update(|h| h.autoclear_features &= autoclear::SUPPORTED)
                .await
                .map_err(|e| {
                    BlockError::new(e.kind, format!("Could not update qcow2 header: {e}"))
                })?;
        }
        if image_dirty {
            self.repair_refcounts().await.map_err(|e| {
                BlockError::new(e.kind, format!("Could not repair dirty image: {e}"))
            })?;
            self.mark_clean().await?;
        }
        Ok(())
    }

    /// Writes out everything and clears the dirty bit (QEMU does this when
    /// it closes an image). The image stays usable.
    pub async fn close(&self) -> BlockResult<()> {
        self.writeback().await?;
        if self.writable() && !self.corrupt.load(Ordering::Acquire) {
            self.mark_clean().await?;
        }
        Ok(())
    }

    /// Clears the dirty bit, if set.
    async fn mark_clean(&self) -> BlockResult<()> {
        if self.dirty.load(Ordering::Acquire) {
            self.header
                .update(|h| h.incompatible_features &= !incompat::DIRTY)
                .await?;
            self.dirty.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// With lazy refcounts, sets the dirty bit before the first change.
    async fn mark_dirty(&self) -> BlockResult<()> {
        if !self.tunables().lazy_refcounts || self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        self.file.flush().await?;
        self.header
            .update(|h| h.incompatible_features |= incompat::DIRTY)
            .await?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Refuses writes to a read-only or corrupt image.
    fn check_writable(&self) -> BlockResult<()> {
        if !self.writable() {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "qcow2 image is opened read-only",
            ));
        }
        if self.corrupt.load(Ordering::Acquire) {
            return Err(BlockError {
                kind: ErrorKind::Io,
                message: "qcow2 image is marked corrupt; no further writes".into(),
                errno: Some(libc::EIO),
            });
        }
        Ok(())
    }

    /// Whether the image may be written now.
    fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// The current virtual size.
    fn virtual_size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn geo(&self) -> &Geometry {
        &self.facts.geo
    }

    fn tunables(&self) -> arc_swap::Guard<Arc<Tunables>> {
        self.tunables.load()
    }

    /// What a reopen with `options` would change, checked.
    fn reopened(
        &self,
        options: &schema::block::BlockdevOptionsQcow2,
        settings: &crate::node::NodeSettings,
    ) -> BlockResult<Reopened> {
        let options = Qcow2Options::from_schema(options, settings)?;
        let geo = self.geo();
        let (l2_tables, refcount_tables) =
            options.cache_tables(self.virtual_size(), geo.cluster_size())?;
        Ok(Reopened {
            tunables: Tunables::from_options(&options, geo.version, self.facts.lazy_in_header)?,
            l2_tables,
            refcount_tables,
        })
    }

    /// Applies a reopen (nothing is in flight: the node is drained). An
    /// image left dirty by lazy refcounts just turned off stays so until
    /// it closes (its refcounts are repaired if it never does).
    fn apply_reopened(&self, reopened: &Reopened) {
        self.tunables.store(Arc::new(reopened.tunables.clone()));
        self.l2_cache.set_capacity(reopened.l2_tables as usize);
        if let Ok(refs) = self.refs.try_lock() {
            refs.set_cache_tables(reopened.refcount_tables);
        }
    }

    fn l1(&self) -> RwLockReadGuard<'_, FlatTable> {
        self.l1.read().unwrap_or_else(|e| e.into_inner())
    }

    fn l1_mut(&self) -> RwLockWriteGuard<'_, FlatTable> {
        self.l1.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The backing image now, if any.
    pub(crate) fn backing(&self) -> Option<Arc<dyn BlockChild>> {
        self.backing
            .load()
            .as_ref()
            .map(|backing| backing.0.clone())
    }

    /// The backing file named in the header.
    pub fn backing_file(&self) -> BackingInfo {
        self.facts
            .backing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs a writeback if a cache grew past its capacity.
    async fn writeback_if_wanted(&self) -> BlockResult<()> {
        if self.writeback_wanted.swap(false, Ordering::AcqRel) || self.l2_cache.over_capacity() {
            self.writeback().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl BlockDriver for Qcow2 {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn set_backing(&self, backing: Option<Arc<NodeChild>>) -> BlockResult<()> {
        let backing = backing.map(|edge| Arc::new(Backing(edge as Arc<dyn BlockChild>)));
        self.backing.store(backing);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.virtual_size()
    }

    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let result = self.read_at(offset, buf).await;
        self.check_corruption(result).await
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let result = if flags.compressed {
            self.write_compressed_at(offset, buf).await
        } else {
            self.write_at(offset, buf, flags).await
        };
        self.check_corruption(result).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let result = self.zero_range(offset, len, flags).await;
        self.check_corruption(result).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let result = self.discard_range(offset, len).await;
        self.check_corruption(result).await
    }

    /// Raises `flush_to_os` and `flush_to_disk` on the file first, as a
    /// flush does (QEMU raises `flush_to_disk` only once the metadata is
    /// written; here the write-back that writes it also flushes).
    async fn flush(&self) -> BlockResult<()> {
        self.file.debug_event(BlkdebugEvent::FlushToOs);
        self.file.debug_event(BlkdebugEvent::FlushToDisk);
        let result = self.writeback().await;
        self.check_corruption(result).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        let result = self.status_at(offset, len).await;
        self.check_corruption(result).await
    }

    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        let result = self.resize_to(new_size).await;
        self.check_corruption(result).await
    }

    fn can_fast_zero(&self) -> bool {
        self.facts.geo.version >= 3
    }

    fn supports_compressed_writes(&self) -> bool {
        true
    }

    fn filename(&self) -> String {
        String::new()
    }

    async fn close(&self) -> BlockResult<()> {
        // The inherent `close`: write back the caches and mark the image clean.
        Qcow2::close(self).await
    }

    async fn inactivate(&self) -> BlockResult<()> {
        Qcow2::inactivate(self).await
    }

    async fn activate(&self) -> BlockResult<()> {
        Qcow2::activate(self).await
    }

    async fn change_backing_file(
        &self,
        file: Option<&str>,
        format: Option<&str>,
    ) -> BlockResult<()> {
        if !self.writable() {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "Cannot change the backing file of a read-only image",
            ));
        }
        self.header.change_backing_file(file, format).await?;
        *self.facts.backing.lock().unwrap_or_else(|e| e.into_inner()) = BackingInfo {
            file: file.map(str::to_owned),
            format: file.and(format).map(str::to_owned),
        };
        Ok(())
    }

    fn backing_file_name(&self) -> Option<BackingFileName> {
        let backing = self.backing_file();
        backing.file.as_ref().map(|name| BackingFileName {
            name: name.clone(),
            format: backing.format.clone(),
        })
    }

    /// Going read-only writes everything out and leaves the image clean;
    /// going read-write prepares the image as an open for writing does.
    async fn set_read_only(&self, read_only: bool) -> BlockResult<()> {
        if read_only {
            self.close().await?;
            self.writable.store(false, Ordering::Release);
            self.read_write.store(false, Ordering::Release);
            return Ok(());
        }
        self.read_write.store(true, Ordering::Release);
        if self.active.load(Ordering::Acquire) {
            let dirty = self.dirty.load(Ordering::Acquire);
            self.prepare_for_writing(dirty).await?;
            self.writable.store(true, Ordering::Release);
            self.bitmaps_in_use().await?;
        }
        Ok(())
    }

    fn driver_info(&self) -> Option<DriverInfo> {
        Some(DriverInfo {
            cluster_size: Some(self.geo().cluster_size()),
            dirty: self.dirty.load(Ordering::Acquire),
        })
    }

    fn snapshots(&self) -> Option<Vec<SnapshotInfo>> {
        Some(self.snapshot_list().iter().map(|s| s.info()).collect())
    }

    async fn snapshot_create(&self, name: &str) -> BlockResult<()> {
        let result = self.create_snapshot(name).await;
        self.check_corruption(result).await
    }

    fn stores_bitmaps(&self) -> bool {
        Qcow2::stores_bitmaps(self)
    }

    fn check_new_bitmap(&self, name: &str, granularity: u64, pending: usize) -> BlockResult<()> {
        Qcow2::check_new_bitmap(self, name, granularity, pending)
    }

    async fn load_bitmaps(&self) -> BlockResult<Vec<StoredBitmap>> {
        self.load_stored_bitmaps().await
    }

    async fn store_bitmaps(&self, bitmaps: &[BitmapToStore<'_>]) -> BlockResult<()> {
        let result = Qcow2::store_bitmaps(self, bitmaps).await;
        self.check_corruption(result).await
    }

    async fn remove_stored_bitmap(&self, name: &str) -> BlockResult<()> {
        let result = Qcow2::remove_stored_bitmap(self, name).await;
        self.check_corruption(result).await
    }

    /// QEMU's `qcow2_reopen_prepare`: the options checked as at open.
    fn prepare_reopen(
        &self,
        options: &schema::block::BlockdevDriver,
        settings: &crate::node::NodeSettings,
        _objects: Option<&dyn crate::open::ObjectLookup>,
    ) -> BlockResult<Option<Arc<dyn std::any::Any + Send + Sync>>> {
        let schema::block::BlockdevDriver::Qcow2(options) = options else {
            return Ok(None);
        };
        Ok(Some(Arc::new(self.reopened(options, settings)?)))
    }

    fn commit_reopen(&self, prepared: Arc<dyn std::any::Any + Send + Sync>) {
        if let Ok(reopened) = prepared.downcast::<Reopened>() {
            self.apply_reopened(&reopened);
        }
    }

    async fn snapshot_load_tmp(&self, id: Option<&str>, name: Option<&str>) -> BlockResult<()> {
        self.load_snapshot_tmp(id, name).await
    }

    async fn snapshot_delete(
        &self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> BlockResult<SnapshotInfo> {
        let result = self.delete_snapshot(id, name).await;
        self.check_corruption(result).await.map(|s| s.info())
    }

    fn format_specific(&self) -> Option<ImageInfoSpecific> {
        Some(self.format_specific_info())
    }
}

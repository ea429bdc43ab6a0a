//! The one trait every driver implements, format, protocol and filter alike.
//!
//! Methods take byte offsets and lengths that the caller (the node layer)
//! has already checked against the node's size. Optional capabilities have
//! defaults so a small filter only implements what it changes.

use async_trait::async_trait;
use schema::block::BlkdebugEvent;
use schema::info::{ImageInfoSpecific, SnapshotInfo};
use schema::stats::BlockStatsSpecific;
use serde_json::{Map, Value as Json};

use std::any::Any;
use std::sync::Arc;

use schema::block::BlockdevDriver;

use crate::bitmaps::{BitmapToStore, StoredBitmap};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::limits::Limits;
use crate::node::{NodeChild, NodeSettings, ReadSource};
use crate::open::ObjectLookup;
use crate::permissions::{default_child_perms, Perm};

/// What `bdrv_get_info` reports for a node: present only for drivers that
/// implement it, which decides whether `dirty-flag` appears in
/// `query-named-block-nodes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverInfo {
    /// The format's cluster size, if it has one.
    pub cluster_size: Option<u64>,
    /// Whether the image is marked dirty (not cleanly closed).
    pub dirty: bool,
}

/// The backing file an image names in its own metadata (a qcow2 header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFileName {
    /// The name as stored (relative names are relative to the image).
    pub name: String,
    /// The format stored with it, if any.
    pub format: Option<String>,
}

/// Flags of a write request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// Force unit access: the data is durable when the request completes.
    pub fua: bool,
    /// Store the data compressed (QEMU's `BDRV_REQ_WRITE_COMPRESSED`):
    /// whole clusters, for drivers that
    /// [`BlockDriver::supports_compressed_writes`].
    pub compressed: bool,
}

/// Flags of a write-zeroes request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The range may be deallocated (punched) instead of written.
    pub may_unmap: bool,
    /// Fail with `NotSupported` rather than fall back to writing zero buffers.
    pub no_fallback: bool,
    /// Force unit access: the zeroes are durable when the request completes.
    pub fua: bool,
}

/// What block status found at the start of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes from the request offset that share this status (> 0).
    pub length: u64,
    /// The range reads as data from this node or a child (not a hole).
    pub data: bool,
    /// The range is known to read as zeroes.
    pub zero: bool,
    /// Depth in the backing chain where the range was found: 1 for this
    /// node's own layer, 2 for its backing file, ...; 0 for unallocated.
    pub depth: u32,
}

/// The child relations a node can have, by the name QEMU gives the edge
/// (`BdrvChild.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildRole {
    /// The image file of a format, or the child of a filter.
    File,
    /// The backing file of a copy-on-write format.
    Backing,
    /// A format's external data file.
    Data,
    /// The child of a `blkdebug` filter.
    Image,
}

impl ChildRole {
    /// The edge name: `file`, `backing`, `data-file`.
    pub fn name(self) -> &'static str {
        match self {
            ChildRole::File => "file",
            ChildRole::Backing => "backing",
            ChildRole::Data => "data-file",
            ChildRole::Image => "image",
        }
    }
}

fn not_supported(what: &str) -> BlockError {
    BlockError::new(
        ErrorKind::NotSupported,
        format!("The driver does not support {what}"),
    )
}

/// A block driver instance: one node's behaviour.
///
/// A filter (a driver with one child it passes requests to, as
/// `throttle` or `copy-on-read`) names that child in
/// [`BlockDriver::filtered`] and implements only what it changes: every
/// data method, the size, the status, the limits and the capabilities
/// default to the filtered child's. A leaf (a protocol driver) or a
/// format implements the data methods itself; for them the defaults are
/// a leaf's: no size, requests not supported, discard ignored, flush with
/// nothing to do, status "all data".
#[async_trait]
pub trait BlockDriver: Send + Sync + 'static {
    /// The QAPI driver name (`file`, `raw`, `null-co`, ...).
    fn format_name(&self) -> &'static str;

    /// The child requests pass through to unless the driver says
    /// otherwise, for filters.
    fn filtered(&self) -> Option<&NodeChild> {
        None
    }

    /// The current virtual size in bytes.
    fn size(&self) -> u64 {
        self.filtered().map_or(0, NodeChild::size)
    }

    /// Fills `buf` from `offset`.
    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        match self.filtered() {
            Some(child) => child.read(offset, buf).await,
            None => Err(not_supported("read")),
        }
    }

    /// Writes `buf` at `offset`.
    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        match self.filtered() {
            Some(child) => child.write(offset, buf, flags).await,
            None => Err(not_supported("write")),
        }
    }

    /// Makes `[offset, offset+len)` read as zeroes.
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        match self.filtered() {
            Some(child) => child.write_zeroes(offset, len, flags).await,
            None => Err(not_supported("write zeroes")),
        }
    }

    /// Hints that `[offset, offset+len)` is no longer needed. May do nothing.
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        match self.filtered() {
            Some(child) => child.discard(offset, len).await,
            None => Ok(()),
        }
    }

    /// Makes every completed write durable.
    async fn flush(&self) -> BlockResult<()> {
        match self.filtered() {
            Some(child) => flush_child(child).await,
            None => Ok(()),
        }
    }

    /// The status of the longest prefix of `[offset, offset+len)` that shares
    /// one status.
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        match self.filtered() {
            Some(child) => child.block_status(offset, len).await,
            None => Ok(Extent {
                length: len,
                data: true,
                zero: false,
                depth: 1,
            }),
        }
    }

    /// Writes out whatever the driver caches and leaves the image clean,
    /// before the node leaves the graph (QEMU's `bdrv_close`). The node's
    /// permissions still hold during the call.
    async fn close(&self) -> BlockResult<()> {
        Ok(())
    }

    /// The node's `read-only` setting changes (a reopen, or a job that
    /// writes to a backing image for its time): a format that caches
    /// metadata writes it out before it stops writing, and prepares the
    /// image as an open for writing would before it starts. Runs with
    /// nothing in flight.
    async fn set_read_only(&self, _read_only: bool) -> BlockResult<()> {
        Ok(())
    }

    /// The node is handed over to another process (QEMU's
    /// `bdrv_inactivate`): write out whatever the driver caches, leave the
    /// image clean and stop writing it. Runs with nothing in flight.
    async fn inactivate(&self) -> BlockResult<()> {
        Ok(())
    }

    /// The node was taken back from another process (after
    /// [`BlockDriver::set_active`]`(true)`; QEMU's
    /// `bdrv_co_invalidate_cache`): forget what the driver cached of the
    /// image, which the other process may have changed. Runs with nothing
    /// in flight.
    async fn activate(&self) -> BlockResult<()> {
        Ok(())
    }

    /// Something at or above this node was taken back from another
    /// process, which may have grown or shrunk the image meanwhile (also
    /// under a node that stayed active while its parent was inactive): a
    /// protocol driver reads its length again (QEMU's
    /// `bdrv_refresh_total_sectors`). Runs with nothing in flight, before
    /// the parents' [`BlockDriver::activate`].
    async fn refresh_length(&self) -> BlockResult<()> {
        Ok(())
    }

    /// Changes the virtual size.
    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        match self.filtered() {
            Some(child) => child.resize(new_size).await,
            None => Err(BlockError::new(
                ErrorKind::NotSupported,
                "Image format driver does not support resize",
            )),
        }
    }

    /// Whether `write_zeroes` with `no_fallback` can ever succeed.
    fn can_fast_zero(&self) -> bool {
        self.filtered().is_some_and(|c| c.node().can_fast_zero())
    }

    /// What the driver's requests must respect; the node layer pads and
    /// splits requests to fit.
    fn limits(&self) -> Limits {
        self.filtered()
            .map_or_else(Limits::default, |c| c.node().limits())
    }

    /// Where `[offset, offset + len)` is stored byte for byte in a file
    /// whose reads never wait (descriptor, file offset). A filter that
    /// changes reads must say `None`.
    fn read_source(&self, offset: u64, len: u64) -> Option<ReadSource> {
        self.filtered()?.node().read_source(offset, len)
    }

    /// The driver's exact file name (`/path/disk.img`, `null-co://`), or an
    /// empty string (the default) when the node's options say more than a
    /// file name can; the node layer then derives the name shown in
    /// `query-named-block-nodes` from its options and children, as QEMU's
    /// `bdrv_refresh_filename` does.
    fn filename(&self) -> String {
        String::new()
    }

    /// The options that change what the node shows (QEMU's
    /// `strong_runtime_opts`), as given when it was opened, besides
    /// `driver` and `filename`: they appear in `json:{...}` file names.
    fn strong_options(&self) -> Map<String, Json> {
        Map::new()
    }

    /// Whether this is a protocol driver (QEMU's `protocol_name`): a format
    /// node over it can show the protocol node's file name as its own.
    fn is_protocol(&self) -> bool {
        false
    }

    /// Bytes the image takes on the host, when the driver knows; `None`
    /// lets the node layer sum its children's (QEMU's default for formats).
    fn allocated_size(&self) -> Option<u64> {
        None
    }

    /// The backing file the image's metadata names, for formats that have
    /// one; shown as `backing-filename` in the image info.
    fn backing_file_name(&self) -> Option<BackingFileName> {
        None
    }

    /// Reads through another backing edge from now on, or none (the graph
    /// added or removed the node's backing edge); for formats with one.
    fn set_backing(&self, _backing: Option<Arc<NodeChild>>) -> BlockResult<()> {
        Err(BlockError::new(
            ErrorKind::NotSupported,
            "The image format does not support backing files",
        ))
    }

    /// Names another backing file (and format) in the image's metadata,
    /// or none (QEMU's `bdrv_change_backing_file`); for formats that name
    /// one. Written and made durable before it returns.
    async fn change_backing_file(
        &self,
        _file: Option<&str>,
        _format: Option<&str>,
    ) -> BlockResult<()> {
        Err(BlockError::new(
            ErrorKind::NotSupported,
            "The image format does not name a backing file",
        ))
    }

    /// `bdrv_get_info`, for drivers that implement it; a filter's is its
    /// child's, as in QEMU.
    fn driver_info(&self) -> Option<DriverInfo> {
        self.filtered()?.node().driver_info()
    }

    /// The internal snapshots, for formats that have them (`None`: the
    /// format cannot take any).
    fn snapshots(&self) -> Option<Vec<SnapshotInfo>> {
        None
    }

    /// Takes internal snapshot `name` (unique, checked by the caller) of a
    /// drained node; durable when it returns.
    async fn snapshot_create(&self, _name: &str) -> BlockResult<()> {
        Err(BlockError::new(
            ErrorKind::NotSupported,
            "The image format has no internal snapshots",
        ))
    }

    /// Whether writes with [`WriteFlags::compressed`] are stored
    /// compressed (QEMU's `bdrv_supports_compressed_writes`).
    fn supports_compressed_writes(&self) -> bool {
        false
    }

    /// A drained section over the node begins: nothing the driver holds
    /// back (a throttle's queue) may keep it waiting (QEMU's
    /// `bdrv_drain_begin`).
    fn drain_begin(&self) {}

    /// The drained section ends.
    fn drain_end(&self) {}

    /// Whether the format stores persistent dirty bitmaps (qcow2 v3).
    fn stores_bitmaps(&self) -> bool {
        false
    }

    /// Room for one more persistent bitmap `name` of `granularity`, besides
    /// `pending` ones not stored yet (QEMU's
    /// `bdrv_co_can_store_new_dirty_bitmap`).
    fn check_new_bitmap(&self, _name: &str, _granularity: u64, _pending: usize) -> BlockResult<()> {
        Ok(())
    }

    /// The bitmaps the image stores, read when the node opens or becomes
    /// active; a writable image marks them in use on disk.
    async fn load_bitmaps(&self) -> BlockResult<Vec<StoredBitmap>> {
        Ok(Vec::new())
    }

    /// Stores these bitmaps' bits into the image, in use no more.
    async fn store_bitmaps(&self, bitmaps: &[BitmapToStore<'_>]) -> BlockResult<()> {
        if bitmaps.is_empty() {
            return Ok(());
        }
        Err(BlockError::new(
            ErrorKind::NotSupported,
            "The image format stores no bitmaps",
        ))
    }

    /// Removes stored bitmap `name` from the image, if it is there.
    async fn remove_stored_bitmap(&self, _name: &str) -> BlockResult<()> {
        Ok(())
    }

    /// Reads the image as its internal snapshot with `id` and/or `name`
    /// from now on (read-only nodes; QEMU's `bdrv_snapshot_load_tmp`).
    async fn snapshot_load_tmp(&self, _id: Option<&str>, _name: Option<&str>) -> BlockResult<()> {
        Err(BlockError::new(
            ErrorKind::NotSupported,
            "The image format has no internal snapshots",
        ))
    }

    /// Deletes the internal snapshot with `id` and/or `name` (it exists,
    /// checked by the caller) of a drained node; returns it.
    async fn snapshot_delete(
        &self,
        _id: Option<&str>,
        _name: Option<&str>,
    ) -> BlockResult<SnapshotInfo> {
        Err(BlockError::new(
            ErrorKind::NotSupported,
            "The image format has no internal snapshots",
        ))
    }

    /// The `format-specific` member of the image info, for drivers that
    /// have one.
    fn format_specific(&self) -> Option<ImageInfoSpecific> {
        None
    }

    /// The `driver-specific` member of `query-blockstats`, for drivers
    /// that count something of their own.
    fn specific_stats(&self) -> Option<BlockStatsSpecific> {
        None
    }

    /// What this node takes and shares on `child`, given what its own users
    /// take (`perm`) and share (`shared`). `writable` is whether this node
    /// is opened read-write. The default is QEMU's `bdrv_default_perms`.
    fn child_perm(
        &self,
        child: &NodeChild,
        writable: bool,
        perm: Perm,
        shared: Perm,
    ) -> (Perm, Perm) {
        default_child_perms(child.flags(), writable, perm, shared)
    }

    /// First phase of a permission change: checks that this node can take
    /// `perm` while sharing `shared` (a file driver takes its image locks
    /// here). Must leave things as they were if it fails; otherwise either
    /// [`BlockDriver::set_perm`] or [`BlockDriver::abort_perm`] follows.
    fn check_perm(&self, _perm: Perm, _shared: Perm) -> BlockResult<()> {
        Ok(())
    }

    /// Whether the node can take `new` generic settings in a
    /// `blockdev-reopen` (from `old`); the node layer applies them.
    fn check_reopen(&self, _old: &NodeSettings, _new: &NodeSettings) -> BlockResult<()> {
        Ok(())
    }

    /// First phase of a `blockdev-reopen` for the driver's own options
    /// (checked by the graph to change only where they may): what to
    /// apply if the whole reopen succeeds, for drivers with changeable
    /// options (a throttle node's group).
    fn prepare_reopen(
        &self,
        _options: &BlockdevDriver,
        _settings: &NodeSettings,
        _objects: Option<&dyn ObjectLookup>,
    ) -> BlockResult<Option<Arc<dyn Any + Send + Sync>>> {
        Ok(None)
    }

    /// Second phase of a `blockdev-reopen`: applies what
    /// [`BlockDriver::prepare_reopen`] prepared.
    fn commit_reopen(&self, _prepared: Arc<dyn Any + Send + Sync>) {}

    /// Second phase: the new permissions are in force.
    fn set_perm(&self, _perm: Perm, _shared: Perm) {}

    /// Second phase: the change was abandoned; undo `check_perm`.
    fn abort_perm(&self) {}

    /// The node becomes active (it was opened with `active=off`) or
    /// inactive again: only an active node enforces its permissions (a
    /// file takes image locks only while active).
    fn set_active(&self, _active: bool) {}

    /// A parent raised `event` on this node (QEMU's `bdrv_debug_event`,
    /// which reaches only the node itself): `blkdebug` arms its rules on
    /// it, other drivers ignore it.
    fn debug_event(&self, _event: BlkdebugEvent) {}
}

/// Flushes `child` as a parent does: QEMU's generic flush raises
/// `flush_to_os` and `flush_to_disk` on the flushed node's primary child
/// first, so a `blkdebug` child sees them.
pub async fn flush_child(child: &NodeChild) -> BlockResult<()> {
    let node = child.node();
    node.driver().debug_event(BlkdebugEvent::FlushToOs);
    node.driver().debug_event(BlkdebugEvent::FlushToDisk);
    node.flush().await
}

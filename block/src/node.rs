//! A block node: one driver instance with its name, its per-node settings
//! (read-only, cache, discard, detect-zeroes) and its children.
//!
//! The node's data methods are what parents and backends call: they apply
//! the node-level policies QEMU applies in its generic block layer
//! (`discard=ignore` drops discards, `detect-zeroes` turns zero writes into
//! write-zeroes, `cache.no-flush` skips the flush to disk) and then call
//! the driver. Bounds and permissions are checked by the caller (the
//! backend); nothing here takes a lock. Each request is counted in the
//! node's [`IoStats`], and write-side ones pass its write threshold. The
//! graph owns the bookkeeping (names, references, permissions) and is the
//! only one to build nodes.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use schema::block::{BlockdevDetectZeroesOptions, BlockdevDriver};
use schema::event::EventSink;

use crate::bitmaps::NodeBitmaps;
use crate::drain::InFlight;
use crate::driver::{BlockDriver, ChildRole, DriverInfo, Extent, WriteFlags, ZeroFlags};
use crate::error::BlockResult;
use crate::iobuf::IoBuf;
use crate::limits::{self, Limits};
use crate::permissions::{ChildRoleFlags, Perm};
use crate::range_lock::RangeLocks;
use crate::stats::{IoKind, IoStats};
use crate::write_hooks::{WriteHooks, WriteKind, WriteObserver, WriteRequest};
use crate::write_threshold::WriteThreshold;

/// The unit QEMU counts node sizes in (`BDRV_SECTOR_SIZE`).
pub const SECTOR_SIZE: u64 = 512;

/// A pair of permission sets (taken, shared) readable without a lock.
/// Written only by the graph while it holds its own lock.
#[derive(Debug)]
pub(crate) struct PermCell(AtomicU16);

impl PermCell {
    /// Nothing taken, everything shared: an edge or node nobody uses.
    pub(crate) fn unused() -> Self {
        PermCell(AtomicU16::new(Self::pack(Perm::NONE, Perm::ALL)))
    }

    fn pack(perm: Perm, shared: Perm) -> u16 {
        u16::from(perm.bits()) | (u16::from(shared.bits()) << 8)
    }

    /// The (taken, shared) pair.
    pub(crate) fn get(&self) -> (Perm, Perm) {
        let v = self.0.load(Ordering::Acquire);
        // Both halves are masked by `from_bits`, so the casts only drop
        // the other half.
        (Perm::from_bits(v as u8), Perm::from_bits((v >> 8) as u8))
    }

    pub(crate) fn set(&self, perm: Perm, shared: Perm) {
        self.0.store(Self::pack(perm, shared), Ordering::Release);
    }
}

/// An edge from a parent node to a child node. The parent's driver and
/// the graph share it: the driver reaches its child only through the
/// edge, so the graph can point the edge at another node while the parent
/// stays open (inside a drained section).
pub struct NodeChild {
    role: ChildRole,
    flags: ChildRoleFlags,
    node: ArcSwap<Node>,
    /// What the parent takes and shares on the child.
    pub(crate) perms: PermCell,
    /// Attach order across the whole graph (newer users are checked first,
    /// as QEMU's parent lists are); set when the graph registers the parent.
    seq: AtomicU64,
}

impl NodeChild {
    /// A new edge to `node`; the graph sets its permissions and sequence
    /// number when it registers the parent.
    pub fn new(role: ChildRole, flags: ChildRoleFlags, node: Arc<Node>) -> Arc<Self> {
        Arc::new(NodeChild {
            role,
            flags,
            node: ArcSwap::new(node),
            perms: PermCell::unused(),
            seq: AtomicU64::new(0),
        })
    }

    /// The attach order of the edge.
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    pub(crate) fn set_seq(&self, seq: u64) {
        self.seq.store(seq, Ordering::Relaxed);
    }

    /// Points the edge at `node`; returns the node it pointed at.
    pub(crate) fn replace(&self, node: Arc<Node>) -> Arc<Node> {
        self.node.swap(node)
    }

    /// The edge's name (`file`, `backing`, ...).
    pub fn role(&self) -> ChildRole {
        self.role
    }

    /// What the child is to the parent; decides default permissions.
    pub fn flags(&self) -> ChildRoleFlags {
        self.flags
    }

    /// The child node.
    pub fn node(&self) -> Arc<Node> {
        self.node.load_full()
    }

    /// Whether the edge points at `node`.
    pub fn points_to(&self, node: &Node) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.node.load()), node)
    }

    /// The child's size.
    pub fn size(&self) -> u64 {
        self.node.load().size()
    }

    /// Reads from the child.
    pub async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.node().read(offset, buf).await
    }

    /// Writes to the child.
    pub async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.node().write(offset, buf, flags).await
    }

    /// Zeroes a range of the child.
    pub async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.node().write_zeroes(offset, len, flags).await
    }

    /// Discards a range of the child.
    pub async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.node().discard(offset, len).await
    }

    /// Flushes the child.
    pub async fn flush(&self) -> BlockResult<()> {
        self.node().flush().await
    }

    /// The child's block status.
    pub async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        self.node().block_status(offset, len).await
    }

    /// Resizes the child.
    pub async fn resize(&self, new_size: u64) -> BlockResult<()> {
        self.node().resize(new_size).await
    }

    /// What the parent currently takes and shares on the child.
    pub fn perms(&self) -> (Perm, Perm) {
        self.perms.get()
    }
}

/// The generic (driver-independent) options of a node, after inheritance
/// from the parent for inline children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeSettings {
    /// Opened read-only: nobody may take write permission.
    pub read_only: bool,
    /// `auto-read-only`: open read-write only if possible.
    pub auto_read_only: bool,
    /// `active=off` when opened: an inactive node takes no locks and
    /// refuses writers until activated (see [`Node::is_active`]).
    pub inactive: bool,
    /// `force-share`: parents share every permission on this node.
    pub force_share: bool,
    /// `discard=unmap`: discard requests reach the driver.
    pub discard_unmap: bool,
    /// `detect-zeroes`.
    pub detect_zeroes: BlockdevDetectZeroesOptions,
    /// `cache.direct`: the host page cache is bypassed.
    pub cache_direct: bool,
    /// `cache.no-flush`: flushes do not reach the disk.
    pub cache_no_flush: bool,
}

/// A node of the block graph.
pub struct Node {
    id: u64,
    name: String,
    driver: Box<dyn BlockDriver>,
    /// Inserted by a job without a user-given name.
    implicit: bool,
    /// Changed only by `blockdev-reopen`, in a drained section.
    settings: ArcSwap<NodeSettings>,
    /// The driver's options as opened or last reopened (`None` for nodes
    /// made in code, such as filters a job inserts).
    options: Mutex<Option<BlockdevDriver>>,
    /// Replaced whole (under the graph's lock) when a backing edge is added
    /// or removed.
    children: ArcSwap<Vec<Arc<NodeChild>>>,
    /// Requests inside the node.
    in_flight: InFlight,
    /// What every write-side request passes.
    write_hooks: WriteHooks,
    /// Named dirty bitmaps (`block-dirty-bitmap-add`).
    bitmaps: NodeBitmaps,
    /// Blocks under a read-modify-write, for drivers that need alignment.
    partial_blocks: RangeLocks,
    /// Whether the node is active (QEMU clears `BDRV_O_INACTIVE` when an
    /// export takes the node); changed by the graph only.
    active: AtomicBool,
    /// The cumulative permissions of the node's users, as last applied to
    /// the driver.
    pub(crate) applied: PermCell,
    /// What the node's requests have done.
    stats: IoStats,
    write_threshold: WriteThreshold,
}

/// What a new node is made of, for the graph to register.
pub(crate) struct NewNode {
    pub name: String,
    pub driver: Box<dyn BlockDriver>,
    pub settings: NodeSettings,
    /// The driver's options, for `blockdev-reopen` (`None`: made in code).
    pub options: Option<BlockdevDriver>,
    pub children: Vec<Arc<NodeChild>>,
    /// Where the node's events go (`BLOCK_WRITE_THRESHOLD`).
    pub events: Option<EventSink>,
    /// A filter a job inserted without a name from the user (QEMU's
    /// implicit nodes: edges to it are seen through).
    pub implicit: bool,
}

impl Node {
    /// Builds a node. Only the graph calls this, with a fresh `id`.
    pub(crate) fn new(id: u64, new: NewNode) -> Self {
        let NewNode {
            name,
            driver,
            settings,
            options,
            children,
            events,
            implicit,
        } = new;
        Node {
            id,
            name,
            driver,
            implicit,
            settings: ArcSwap::from_pointee(settings),
            options: Mutex::new(options),
            children: ArcSwap::from_pointee(children),
            in_flight: InFlight::default(),
            write_hooks: WriteHooks::default(),
            bitmaps: NodeBitmaps::default(),
            partial_blocks: RangeLocks::default(),
            active: AtomicBool::new(!settings.inactive),
            applied: PermCell::unused(),
            stats: IoStats::default(),
            write_threshold: WriteThreshold::new(events),
        }
    }

    /// What the node's requests have done.
    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    /// The write threshold in bytes (0: none).
    pub fn write_threshold(&self) -> u64 {
        self.write_threshold.get()
    }

    /// Sets the write threshold (`block-set-write-threshold`); 0 disables it.
    pub fn set_write_threshold(&self, offset: u64) {
        self.write_threshold.set(offset)
    }

    /// A number unique in the graph's lifetime, increasing with creation.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node name (`node-name`, or an automatic `#blockNNN`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a job inserted this filter without a user-given name
    /// (QEMU's `implicit`): a reopen naming the node below it means the
    /// edge as it is.
    pub fn is_implicit(&self) -> bool {
        self.implicit
    }

    /// The driver instance.
    pub fn driver(&self) -> &dyn BlockDriver {
        self.driver.as_ref()
    }

    /// The node's generic options.
    pub fn settings(&self) -> NodeSettings {
        **self.settings.load()
    }

    /// Replaces the generic options (`blockdev-reopen`); returns the old.
    pub(crate) fn replace_settings(&self, settings: NodeSettings) -> NodeSettings {
        *self.settings.swap(Arc::new(settings))
    }

    /// The driver's options as opened or last reopened.
    pub(crate) fn driver_options(&self) -> Option<BlockdevDriver> {
        self.options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the driver's options after a reopen.
    pub(crate) fn set_driver_options(&self, options: BlockdevDriver) {
        *self.options.lock().unwrap_or_else(|e| e.into_inner()) = Some(options);
    }

    /// The node's children, oldest edge first.
    pub fn children(&self) -> Arc<Vec<Arc<NodeChild>>> {
        self.children.load_full()
    }

    /// Replaces the list of edges (the graph adds or removes a backing
    /// edge).
    pub(crate) fn set_children(&self, children: Vec<Arc<NodeChild>>) {
        self.children.store(Arc::new(children));
    }

    /// The child with this role, if any.
    pub fn child(&self, role: ChildRole) -> Option<Arc<Node>> {
        self.children
            .load()
            .iter()
            .find(|c| c.role == role)
            .map(|c| c.node())
    }

    /// Requests inside the node now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.count()
    }

    /// Counts a request that outlives a call (a zero-copy read until its
    /// data is on the wire) until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>) -> NodeBusy {
        self.in_flight.enter_unguarded();
        NodeBusy(self.clone())
    }

    /// Waits until no request is inside the node.
    pub(crate) async fn wait_idle(&self) {
        self.in_flight.wait_idle().await
    }

    /// Whether write-zeroes with `no_fallback` can ever succeed.
    pub fn can_fast_zero(&self) -> bool {
        self.driver.can_fast_zero()
    }

    /// What the driver's requests must respect; the node's methods pad
    /// and split requests to fit ([`crate::limits`]).
    pub fn limits(&self) -> Limits {
        self.driver.limits()
    }

    /// `bdrv_get_info`, for drivers that implement it.
    pub fn driver_info(&self) -> Option<DriverInfo> {
        self.driver.driver_info()
    }

    /// Where a range lives byte for byte in a file whose reads never wait.
    /// Counted as a read of the node (without a time: the data moves later).
    pub fn read_source(&self, offset: u64, len: u64) -> Option<ReadSource> {
        let source = self.driver.read_source(offset, len)?;
        self.stats.count_deferred_read(len);
        Some(source)
    }

    /// Whether the node was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.settings.load().read_only
    }

    /// Whether the node is active (not handed over to another process).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
    }

    /// Whether a user may take write permission on the node.
    pub fn is_writable(&self) -> bool {
        !self.settings.load().read_only && self.is_active()
    }

    /// The current virtual size in bytes: the driver's, rounded up to
    /// whole 512-byte sectors as QEMU counts sizes (`total_sectors`); the
    /// tail past a file's end reads as zeroes.
    pub fn size(&self) -> u64 {
        self.driver.size().div_ceil(SECTOR_SIZE) * SECTOR_SIZE
    }

    /// Fills `buf` from `offset`.
    pub async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let _busy = self.in_flight.enter();
        let read = |offset, buf: IoBuf| async move { self.driver.read(offset, &buf).await };
        let limits = self.limits();
        let request = || limits::read(&limits, offset, buf, read);
        self.stats
            .account(IoKind::Read, buf.len() as u64, request)
            .await
    }

    /// Writes `buf` at `offset`; with `detect-zeroes`, a buffer of zeroes
    /// becomes a write-zeroes request (which may unmap with `unmap`).
    pub async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let _busy = self.in_flight.enter();
        let len = buf.len() as u64;
        self.before_write(offset, len);
        let request = || async move {
            let detect_zeroes = self.settings.load().detect_zeroes;
            if detect_zeroes != BlockdevDetectZeroesOptions::Off && buf.is_zero() {
                let zero_flags = ZeroFlags {
                    may_unmap: detect_zeroes == BlockdevDetectZeroesOptions::Unmap,
                    no_fallback: false,
                    fua: flags.fua,
                };
                return self.zero_request(offset, len, zero_flags).await;
            }
            let request = WriteRequest {
                kind: WriteKind::Write,
                offset,
                len,
            };
            let limits = self.limits();
            let op = || self.write_fitted(&limits, offset, buf, flags);
            self.write_hooks.run(self, request, op).await
        };
        self.stats.account(IoKind::Write, len, request).await
    }

    /// What every write and write-zeroes passes first: the write
    /// threshold, and the highest offset written (counted whatever the
    /// outcome, as QEMU's `wr_highest_offset`).
    fn before_write(&self, offset: u64, len: u64) {
        self.write_threshold.check(&self.name, offset, len);
        self.stats.wrote_up_to(offset.saturating_add(len));
    }

    /// Writes `buf` padded (read-modify-write) and split to `limits`.
    async fn write_fitted(
        &self,
        limits: &Limits,
        offset: u64,
        buf: &IoBuf,
        flags: WriteFlags,
    ) -> BlockResult<()> {
        let write =
            |offset, buf: IoBuf| async move { self.driver.write(offset, &buf, flags).await };
        let read = |offset, buf: IoBuf| async move { self.driver.read(offset, &buf).await };
        limits::write(limits, &self.partial_blocks, offset, buf, write, read).await
    }

    /// Makes the range read as zeroes; it is only unmapped if the node
    /// has `discard=unmap`.
    pub async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let _busy = self.in_flight.enter();
        self.before_write(offset, len);
        let request = || self.zero_request(offset, len, flags);
        self.stats.account(IoKind::Write, len, request).await
    }

    /// A write-zeroes request, uncounted.
    async fn zero_request(&self, offset: u64, len: u64, mut flags: ZeroFlags) -> BlockResult<()> {
        if !self.settings.load().discard_unmap {
            flags.may_unmap = false;
        }
        let request = WriteRequest {
            kind: WriteKind::Zeroes,
            offset,
            len,
        };
        let limits = self.limits();
        let zero = |offset, len, flags| self.driver.write_zeroes(offset, len, flags);
        let partial = |offset, buf: IoBuf, flags| {
            let limits = &limits;
            async move { self.write_fitted(limits, offset, &buf, flags).await }
        };
        let op = || {
            limits::write_zeroes(
                &limits,
                &self.partial_blocks,
                offset,
                len,
                flags,
                zero,
                partial,
            )
        };
        self.write_hooks.run(self, request, op).await
    }

    /// Discards the range if the node has `discard=unmap`; otherwise does
    /// nothing, as QEMU does (but counts the request).
    pub async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let _busy = self.in_flight.enter();
        let request = || async move {
            if !self.settings.load().discard_unmap {
                return Ok(());
            }
            self.write_threshold.check(&self.name, offset, len);
            let request = WriteRequest {
                kind: WriteKind::Discard,
                offset,
                len,
            };
            let discard = |offset, len| self.driver.discard(offset, len);
            let limits = self.limits();
            let op = || limits::discard(&limits, &self.partial_blocks, offset, len, discard);
            self.write_hooks.run(self, request, op).await
        };
        self.stats.account(IoKind::Unmap, len, request).await
    }

    /// Makes completed writes durable. With `cache.no-flush` the node's own
    /// layer is skipped, but its children still flush by their own rules.
    pub async fn flush(&self) -> BlockResult<()> {
        let _busy = self.in_flight.enter();
        let request = || async move {
            if !self.settings.load().cache_no_flush {
                return self.driver.flush().await;
            }
            for child in self.children().iter() {
                Box::pin(child.flush()).await?;
            }
            Ok(())
        };
        self.stats.account(IoKind::Flush, 0, request).await
    }

    /// The status of the longest prefix of the range that shares one.
    pub async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        let _busy = self.in_flight.enter();
        self.driver.block_status(offset, len).await
    }

    /// Changes the virtual size (the graph checks permissions first).
    pub async fn resize(&self, new_size: u64) -> BlockResult<()> {
        let _busy = self.in_flight.enter();
        let request = WriteRequest {
            kind: WriteKind::Resize,
            offset: new_size,
            len: 0,
        };
        let op = || self.driver.resize(new_size);
        self.write_hooks.run(self, request, op).await
    }

    /// Names another backing file (and format) in the image's metadata,
    /// or none, for formats that have one (QEMU's
    /// `bdrv_change_backing_file`).
    pub async fn change_backing_file(
        &self,
        file: Option<&str>,
        format: Option<&str>,
    ) -> BlockResult<()> {
        self.driver.change_backing_file(file, format).await
    }

    /// The node's named dirty bitmaps.
    pub(crate) fn bitmaps(&self) -> &NodeBitmaps {
        &self.bitmaps
    }

    /// Attaches an observer of the node's writes.
    pub fn attach_write_observer(&self, observer: Arc<dyn WriteObserver>) {
        self.write_hooks.attach(observer);
    }

    /// Detaches an observer attached before.
    pub fn detach_write_observer(&self, observer: &Arc<dyn WriteObserver>) {
        self.write_hooks.detach(observer);
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("driver", &self.driver.format_name())
            .finish()
    }
}

/// A request counted in a node beyond a call ([`Node::hold`]).
pub struct NodeBusy(Arc<Node>);

impl NodeBusy {
    /// The node the request is in.
    pub fn node(&self) -> &Arc<Node> {
        &self.0
    }
}

impl Drop for NodeBusy {
    fn drop(&mut self) {
        self.0.in_flight.leave();
    }
}

/// A range of a node as a range of a file, for zero-copy reads (splice).
pub struct ReadSource {
    /// The file holding the bytes, byte for byte (kept open by this).
    pub fd: Arc<OwnedFd>,
    /// Where the range starts in that file.
    pub offset: u64,
}

/// Whether every byte of `buf` is zero (word at a time).
pub fn buffer_is_zero(buf: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u64; `align_to` splits off the
    // unaligned head and tail.
    let (head, words, tail) = unsafe { buf.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_covers_head_words_and_tail() {
        let mut buf = vec![0u8; 4099];
        assert!(buffer_is_zero(&buf));
        assert!(buffer_is_zero(&buf[1..]));
        for pos in [0, 1, 7, 8, 2048, 4098] {
            buf[pos] = 1;
            assert!(!buffer_is_zero(&buf), "byte {pos}");
            assert!(
                pos == 0 || !buffer_is_zero(&buf[1..]),
                "byte {pos} unaligned"
            );
            buf[pos] = 0;
        }
        assert!(buffer_is_zero(&[]));
    }

    #[test]
    fn perm_cell_round_trips() {
        let cell = PermCell::unused();
        assert_eq!(cell.get(), (Perm::NONE, Perm::ALL));
        cell.set(Perm::WRITE | Perm::CONSISTENT_READ, !Perm::RESIZE);
        assert_eq!(
            cell.get(),
            (Perm::WRITE | Perm::CONSISTENT_READ, !Perm::RESIZE)
        );
    }
}

//! [`BlockBackend`]: an export's handle on its root node.
//!
//! It holds the permissions it was created with (the graph refuses to
//! delete its node meanwhile) and gives them back when the last clone is
//! dropped. Every request is checked here, before anything is touched:
//! the range must lie within the node and a write needs a writable
//! backend. The request path takes no lock and copies nothing: a check,
//! the backend's gate (closed only during a drained section, which holds
//! new requests back here), then the root node's method. The root can be
//! replaced by the graph (inside a drained section); requests then go to
//! the new root.
//!
//! Every request is counted in the backend's [`IoStats`] (an export's
//! counters, apart from the nodes'): refused ones as invalid.
//!
//! Two properties of an export live here, whatever its type
//! ([`BackendMode`]): writethrough (every write is durable before it
//! completes, QEMU's disabled write cache) and growable (a write past the
//! end first grows the node, as QEMU's growable FUSE exports).

use std::sync::Arc;

use crate::driver::{Extent, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::graph::GraphShared;
use crate::iobuf::IoBuf;
use crate::limits::Limits;
use crate::node::{Node, NodeBusy, ReadSource};
use crate::perm_update::BackendLink;
use crate::permissions::Perm;
use crate::stats::{IoKind, IoStats};
use crate::trace::{BLK_CO_PREADV, BLK_CO_PWRITEV};

/// Bytes of a node that live in a file, held in flight until dropped (a
/// zero-copy read stays counted until its data is on the wire).
pub struct HeldReadSource {
    /// Where the bytes are.
    pub source: ReadSource,
    _busy: NodeBusy,
}

/// An export's handle on a node. Cheap to clone; clones share one set of
/// permissions, released when the last one is dropped.
#[derive(Clone)]
pub struct BlockBackend {
    inner: Arc<Inner>,
}

/// Which node a backend uses now (the graph may replace it) and its
/// counters, without holding the backend's permissions: for listings of
/// exports.
#[derive(Clone)]
pub struct BackendRoot {
    root: Arc<arc_swap::ArcSwap<Node>>,
    stats: Arc<IoStats>,
}

impl BackendRoot {
    /// The name of the node the backend uses now.
    pub fn node_name(&self) -> String {
        self.root.load().name().to_owned()
    }

    /// What the backend's requests have done.
    pub fn stats(&self) -> &IoStats {
        &self.stats
    }
}

/// How a backend treats writes, beyond its permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendMode {
    /// Every write and write-zeroes is forced to the medium (FUA), and a
    /// discard is followed by a flush.
    pub writethrough: bool,
    /// A write or write-zeroes past the end grows the node first (the
    /// backend needs the resize permission).
    pub growable: bool,
}

struct Inner {
    /// The root node (which the graph may replace) and the gate where new
    /// requests wait during a drained section; shared with the graph.
    link: BackendLink,
    writable: bool,
    mode: BackendMode,
    /// Serializes growing, so that two writes past the end cannot shrink
    /// what the other grew.
    grow: tokio::sync::Mutex<()>,
    /// The backend's attach sequence number: its key in the graph.
    seq: u64,
    graph: Arc<GraphShared>,
    stats: Arc<IoStats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.graph.release_use(self.seq);
    }
}

impl BlockBackend {
    pub(crate) fn new(
        link: BackendLink,
        perm: Perm,
        mode: BackendMode,
        seq: u64,
        graph: Arc<GraphShared>,
    ) -> Self {
        BlockBackend {
            inner: Arc::new(Inner {
                link,
                writable: perm.contains(Perm::WRITE),
                mode,
                grow: tokio::sync::Mutex::new(()),
                seq,
                graph,
                stats: Arc::default(),
            }),
        }
    }

    /// A handle on which node the backend uses, for listings.
    pub fn root(&self) -> BackendRoot {
        BackendRoot {
            root: self.inner.link.root.clone(),
            stats: self.inner.stats.clone(),
        }
    }

    /// The root node.
    pub fn node(&self) -> Arc<Node> {
        self.inner.link.root.load_full()
    }

    /// The root node's name.
    pub fn node_name(&self) -> String {
        self.inner.link.root.load().name().to_string()
    }

    /// The current size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.link.root.load().size()
    }

    /// Whether writes are refused (the backend took no write permission).
    pub fn is_read_only(&self) -> bool {
        !self.inner.writable
    }

    /// What the backend's requests have done.
    pub fn stats(&self) -> &IoStats {
        &self.inner.stats
    }

    /// Its writethrough and growable settings.
    pub fn mode(&self) -> BackendMode {
        self.inner.mode
    }

    /// Whether write-zeroes with `no_fallback` can succeed.
    pub fn can_fast_zero(&self) -> bool {
        self.inner.link.root.load().can_fast_zero()
    }

    /// What the root's requests must respect (the node layer pads and
    /// splits others, at a cost).
    pub fn limits(&self) -> Limits {
        self.inner.link.root.load().limits()
    }

    /// Where a range lives in a file whose reads never wait, counted in
    /// flight in the root until the result is dropped. `None` also while
    /// a drained section holds the backend (the caller then reads).
    pub fn read_source(&self, offset: u64, len: u64) -> Option<HeldReadSource> {
        let busy = self.inner.link.root.load().hold();
        if self.inner.link.gate.is_closed() {
            return None;
        }
        self.check_range(busy.node(), offset, len, ErrorKind::InvalidArgument)
            .ok()?;
        let source = busy.node().read_source(offset, len)?;
        self.inner.stats.count_deferred_read(len);
        Some(HeldReadSource {
            source,
            _busy: busy,
        })
    }

    /// Fills `buf` from `offset`. A range past the end is `InvalidArgument`.
    pub async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let len = buf.len() as u64;
        let busy = self.enter().await;
        let root = busy.node();
        schema::trace!(
            BLK_CO_PREADV,
            "blk {:p} bs {:p} offset {offset} bytes {len} flags 0x0",
            Arc::as_ptr(&self.inner),
            Arc::as_ptr(root),
        );
        self.check_range(root, offset, len, ErrorKind::InvalidArgument)
            .inspect_err(|_| self.inner.stats.count_invalid(IoKind::Read))?;
        let request = || root.read(offset, buf);
        self.inner.stats.account(IoKind::Read, len, request).await
    }

    /// Writes `buf` at `offset`. A read-only backend gives
    /// `PermissionDenied`, a range past the end `NoSpace` (unless the
    /// backend is growable).
    pub async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let len = buf.len() as u64;
        let busy = self.enter_write(offset, len).await?;
        let root = busy.node();
        let fua = flags.fua || self.inner.mode.writethrough;
        schema::trace!(
            BLK_CO_PWRITEV,
            "blk {:p} bs {:p} offset {offset} bytes {len} flags {:#x}",
            Arc::as_ptr(&self.inner),
            Arc::as_ptr(root),
            if fua { 0x10 } else { 0 }
        );
        self.check_write_range(root, offset, len)?;
        let flags = WriteFlags {
            fua,
            ..WriteFlags::default()
        };
        let request = || root.write(offset, buf, flags);
        self.inner.stats.account(IoKind::Write, len, request).await
    }

    /// What a write or write-zeroes of `[offset, offset + len)` passes
    /// first: the backend must be writable (else the request is invalid),
    /// and a growable one grows (a failure to grow counts as a failed
    /// write, a range whose end overflows as an invalid one).
    async fn enter_write(&self, offset: u64, len: u64) -> BlockResult<NodeBusy> {
        let stats = &self.inner.stats;
        self.check_writable()
            .inspect_err(|_| stats.count_invalid(IoKind::Write))?;
        self.grow_for(offset, len).await.inspect_err(|e| {
            if e.kind == ErrorKind::InvalidArgument {
                stats.count_invalid(IoKind::Write)
            } else {
                stats.count_failed(IoKind::Write)
            }
        })?;
        Ok(self.enter().await)
    }

    /// A write's range must fit in `root` (else it is invalid); it then
    /// counts for `wr_highest_offset`.
    fn check_write_range(&self, root: &Node, offset: u64, len: u64) -> BlockResult<()> {
        let stats = &self.inner.stats;
        self.check_range(root, offset, len, ErrorKind::NoSpace)
            .inspect_err(|_| stats.count_invalid(IoKind::Write))?;
        stats.wrote_up_to(offset + len);
        Ok(())
    }

    /// Makes the range read as zeroes; refusals as [`BlockBackend::write`].
    pub async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let busy = self.enter_write(offset, len).await?;
        let root = busy.node();
        self.check_write_range(root, offset, len)?;
        let fua = flags.fua || self.inner.mode.writethrough;
        let request = || root.write_zeroes(offset, len, ZeroFlags { fua, ..flags });
        self.inner.stats.account(IoKind::Write, len, request).await
    }

    /// Discards the range (a no-op unless the node has `discard=unmap`).
    /// A read-only backend gives `PermissionDenied`, a range past the end
    /// `InvalidArgument`.
    pub async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let stats = &self.inner.stats;
        self.check_writable()
            .inspect_err(|_| stats.count_invalid(IoKind::Unmap))?;
        let busy = self.enter().await;
        let root = busy.node();
        self.check_range(root, offset, len, ErrorKind::InvalidArgument)
            .inspect_err(|_| stats.count_invalid(IoKind::Unmap))?;
        let request = || async move {
            root.discard(offset, len).await?;
            if self.inner.mode.writethrough {
                root.flush().await?;
            }
            Ok(())
        };
        stats.account(IoKind::Unmap, len, request).await
    }

    /// Changes the node's size (the backend needs the resize permission,
    /// which the graph checked when it was attached).
    pub async fn resize(&self, new_size: u64) -> BlockResult<()> {
        self.check_writable()?;
        let _grow = self.inner.grow.lock().await;
        let busy = self.enter().await;
        busy.node().resize(new_size).await
    }

    /// Grows a growable backend's node to cover `[offset, offset + len)`.
    async fn grow_for(&self, offset: u64, len: u64) -> BlockResult<()> {
        if !self.inner.mode.growable {
            return Ok(());
        }
        let end = offset.checked_add(len).ok_or_else(|| {
            BlockError::new(ErrorKind::InvalidArgument, "Request end out of range")
        })?;
        if end <= self.size() {
            return Ok(());
        }
        let _grow = self.inner.grow.lock().await;
        let busy = self.enter().await;
        let root = busy.node();
        if end > root.size() {
            root.resize(end).await?;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> BlockResult<()> {
        let busy = self.enter().await;
        let request = || busy.node().flush();
        self.inner.stats.account(IoKind::Flush, 0, request).await
    }

    /// The status at `offset`, for at most `len` bytes; an empty range or
    /// one past the end is `InvalidArgument`.
    pub async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        if len == 0 {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "Block status of an empty range",
            ));
        }
        let busy = self.enter().await;
        let root = busy.node();
        self.check_range(root, offset, len, ErrorKind::InvalidArgument)?;
        root.block_status(offset, len).await
    }

    /// Lets a request in: waits while a drained section holds the gate,
    /// then counts the request in the root it will use. The count comes
    /// before the look at the gate, and a drain closes the gate before it
    /// looks at the count (see [`crate::drain`]).
    async fn enter(&self) -> NodeBusy {
        loop {
            let busy = self.inner.link.root.load().hold();
            if !self.inner.link.gate.is_closed() {
                return busy;
            }
            drop(busy);
            self.inner.link.gate.wait_open().await;
        }
    }

    fn check_writable(&self) -> BlockResult<()> {
        if self.inner.writable {
            Ok(())
        } else {
            Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "Write to a read-only block backend",
            ))
        }
    }

    /// `[offset, offset + len)` must lie within `root`; `kind` is what a
    /// range past the end is reported as.
    fn check_range(&self, root: &Node, offset: u64, len: u64, kind: ErrorKind) -> BlockResult<()> {
        let size = root.size();
        if offset > size || len > size - offset {
            return Err(BlockError::new(
                kind,
                format!("operation past EOF; From: {offset}, Len: {len}, Size: {size}"),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for BlockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockBackend")
            .field("node", &self.node_name())
            .field("writable", &self.inner.writable)
            .finish()
    }
}

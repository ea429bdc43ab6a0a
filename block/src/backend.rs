//! [`BlockBackend`]: an export's handle on its root node.
//!
//! It holds the permissions it was created with (the graph refuses to
//! delete its node meanwhile) and gives them back when the last clone is
//! dropped. Every request is checked here, before anything is touched:
//! the range must lie within the node and a write needs a writable
//! backend. The request path takes no lock and copies nothing: a check,
//! then the node's method.

use std::sync::Arc;

use crate::driver::{Extent, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::graph::GraphShared;
use crate::iobuf::IoBuf;
use crate::node::Node;
use crate::permissions::Perm;

/// A range of a node as a range of a file, for zero-copy reads (splice).
pub struct ReadSource<'a> {
    /// The file holding the bytes, byte for byte.
    pub fd: std::os::fd::BorrowedFd<'a>,
    /// Where the range starts in that file.
    pub offset: u64,
}

/// An export's handle on a node. Cheap to clone; clones share one set of
/// permissions, released when the last one is dropped.
#[derive(Clone)]
pub struct BlockBackend {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<Node>,
    writable: bool,
    /// The backend's attach sequence number: its key in the graph.
    seq: u64,
    graph: Arc<GraphShared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.graph.release_use(self.seq);
    }
}

impl BlockBackend {
    pub(crate) fn new(node: Arc<Node>, perm: Perm, seq: u64, graph: Arc<GraphShared>) -> Self {
        BlockBackend {
            inner: Arc::new(Inner {
                node,
                writable: perm.contains(Perm::WRITE),
                seq,
                graph,
            }),
        }
    }

    /// The root node.
    pub fn node(&self) -> &Arc<Node> {
        &self.inner.node
    }

    /// The root node's name.
    pub fn node_name(&self) -> &str {
        self.inner.node.name()
    }

    /// The current size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.node.size()
    }

    /// Whether writes are refused (the backend took no write permission).
    pub fn is_read_only(&self) -> bool {
        !self.inner.writable
    }

    /// Whether write-zeroes with `no_fallback` can succeed.
    pub fn can_fast_zero(&self) -> bool {
        self.inner.node.driver().can_fast_zero()
    }

    /// The alignment below which requests cost a read-modify-write.
    pub fn request_alignment(&self) -> u32 {
        self.inner.node.driver().request_alignment()
    }

    /// Where a range lives in a file whose reads never wait.
    pub fn read_source(&self, offset: u64, len: u64) -> Option<ReadSource<'_>> {
        self.check_range(offset, len, ErrorKind::InvalidArgument)
            .ok()?;
        let (fd, offset) = self.inner.node.driver().read_source(offset, len)?;
        Some(ReadSource { fd, offset })
    }

    /// Fills `buf` from `offset`. A range past the end is `InvalidArgument`.
    pub async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.check_range(offset, buf.len() as u64, ErrorKind::InvalidArgument)?;
        self.inner.node.read(offset, buf).await
    }

    /// Writes `buf` at `offset`. A read-only backend gives
    /// `PermissionDenied`, a range past the end `NoSpace`.
    pub async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64, ErrorKind::NoSpace)?;
        self.inner.node.write(offset, buf, flags).await
    }

    /// Makes the range read as zeroes; refusals as [`BlockBackend::write`].
    pub async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.check_writable()?;
        self.check_range(offset, len, ErrorKind::NoSpace)?;
        self.inner.node.write_zeroes(offset, len, flags).await
    }

    /// Discards the range (a no-op unless the node has `discard=unmap`).
    /// A read-only backend gives `PermissionDenied`, a range past the end
    /// `InvalidArgument`.
    pub async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.check_writable()?;
        self.check_range(offset, len, ErrorKind::InvalidArgument)?;
        self.inner.node.discard(offset, len).await
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> BlockResult<()> {
        self.inner.node.flush().await
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
        self.check_range(offset, len, ErrorKind::InvalidArgument)?;
        self.inner.node.block_status(offset, len).await
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

    /// `[offset, offset + len)` must lie within the node; `kind` is what a
    /// range past the end is reported as.
    fn check_range(&self, offset: u64, len: u64, kind: ErrorKind) -> BlockResult<()> {
        let size = self.size();
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
            .field("node", &self.inner.node.name())
            .field("writable", &self.inner.writable)
            .finish()
    }
}

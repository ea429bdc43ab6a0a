//! What the qcow2 driver needs from the nodes below it: the image file and
//! the backing image. In the graph both are edges to nodes
//! ([`NodeChild`]); tests and tools can hand it any [`BlockDriver`]
//! instead, through [`DriverChild`].

use std::sync::Arc;

use async_trait::async_trait;
use schema::block::BlkdebugEvent;

use crate::driver::{BlockDriver, Extent, WriteFlags, ZeroFlags};
use crate::error::BlockResult;
use crate::iobuf::IoBuf;
use crate::node::{Node, NodeChild};

/// The I/O interface of a child node.
#[async_trait]
pub trait BlockChild: Send + Sync + 'static {
    /// The current size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (past the end reads as zeroes).
    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()>;
    /// Writes `buf` at `offset`, growing the child if needed.
    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()>;
    /// Makes the range read as zeroes.
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()>;
    /// Hints that the range is unused.
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()>;
    /// Makes completed writes durable.
    async fn flush(&self) -> BlockResult<()>;
    /// The status of the longest prefix of the range that shares one.
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent>;
    /// Changes the size.
    async fn resize(&self, new_size: u64) -> BlockResult<()>;
    /// Raises a debug event on the child (for a `blkdebug` there); a
    /// child that is no node has nothing to arm.
    fn debug_event(&self, _event: BlkdebugEvent) {}

    /// `len` bytes from `offset`, in a new vector (metadata).
    async fn read_vec(&self, offset: u64, len: usize) -> BlockResult<Vec<u8>> {
        let buf = IoBuf::zeroed(len);
        self.read(offset, &buf).await?;
        Ok(buf.into_vec())
    }

    /// Writes a copy of `bytes` at `offset` (metadata).
    async fn write_slice(&self, offset: u64, bytes: &[u8]) -> BlockResult<()> {
        self.write(offset, &IoBuf::copy_of(bytes), WriteFlags::default())
            .await
    }
}

/// Forwards the child interface to inherent methods of the same names;
/// events go to the driver of the node `$node` names.
macro_rules! forward_child {
    ($($ty:ty => |$this:ident| $node:expr),*) => {$(
        #[async_trait]
        impl BlockChild for $ty {
            fn size(&self) -> u64 {
                <$ty>::size(self)
            }
            async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
                <$ty>::read(self, offset, buf).await
            }
            async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
                <$ty>::write(self, offset, buf, flags).await
            }
            async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
                <$ty>::write_zeroes(self, offset, len, flags).await
            }
            async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
                <$ty>::discard(self, offset, len).await
            }
            async fn flush(&self) -> BlockResult<()> {
                <$ty>::flush(self).await
            }
            async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
                <$ty>::block_status(self, offset, len).await
            }
            async fn resize(&self, new_size: u64) -> BlockResult<()> {
                <$ty>::resize(self, new_size).await
            }
            fn debug_event(&self, event: BlkdebugEvent) {
                let $this = self;
                $node.driver().debug_event(event)
            }
        }
    )*};
}

// A node is a child as it is (before any edge to it exists, e.g. while
// its image is probed); an edge forwards to the node it points at now.
forward_child!(Node => |node| node, NodeChild => |edge| edge.node());

/// A driver used directly as a child, without a node around it.
pub struct DriverChild<D>(pub D);

impl<D: BlockDriver> DriverChild<D> {
    /// Wraps `driver` into the shared handle the qcow2 driver takes.
    pub fn shared(driver: D) -> Arc<dyn BlockChild> {
        Arc::new(DriverChild(driver))
    }
}

#[async_trait]
impl<D: BlockDriver> BlockChild for DriverChild<D> {
    fn size(&self) -> u64 {
        self.0.size()
    }
    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.0.read(offset, buf).await
    }
    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.0.write(offset, buf, flags).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.0.write_zeroes(offset, len, flags).await
    }
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.0.discard(offset, len).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.0.flush().await
    }
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        self.0.block_status(offset, len).await
    }
    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        self.0.resize(new_size).await
    }
    fn debug_event(&self, event: BlkdebugEvent) {
        self.0.debug_event(event)
    }
}

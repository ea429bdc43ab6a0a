//! The export's handle on its block node, as the NBD server sees it.
//!
//! This mirrors the methods of the block layer's `BlockBackend` (bounds and
//! permission checked, cheap to clone); once that type lands, `Backend`
//! becomes an alias of it and this trait goes away.

use std::sync::Arc;

use async_trait::async_trait;
use block::{BlockResult, Extent, WriteFlags, ZeroFlags};

/// What an export needs from its root node.
#[async_trait]
pub trait BackendOps: Send + Sync + 'static {
    fn size(&self) -> u64;
    async fn read(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()>;
    async fn write(&self, offset: u64, buf: &[u8], flags: WriteFlags) -> BlockResult<()>;
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()>;
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()>;
    async fn flush(&self) -> BlockResult<()>;
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent>;
    fn is_read_only(&self) -> bool;
    fn can_fast_zero(&self) -> bool;
    fn request_alignment(&self) -> u32;
}

/// A shared handle on an export's node.
pub type Backend = Arc<dyn BackendOps>;

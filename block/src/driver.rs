//! The one trait every driver implements, format, protocol and filter alike.
//!
//! Methods take byte offsets and lengths that the caller (the node layer)
//! has already checked against the node's size. Optional capabilities have
//! defaults so a small filter only implements what it changes.

use async_trait::async_trait;

use crate::error::{BlockError, BlockResult, ErrorKind};

/// Flags of a write request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// Force unit access: the data is durable when the request completes.
    pub fua: bool,
}

/// Flags of a write-zeroes request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The range may be deallocated (punched) instead of written.
    pub may_unmap: bool,
    /// Fail with `NotSupported` rather than fall back to writing zero buffers.
    pub no_fallback: bool,
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

/// The child relations a node can have (QEMU's `BdrvChildRole` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildRole {
    File,
    Backing,
    Data,
}

impl ChildRole {
    pub fn name(self) -> &'static str {
        match self {
            ChildRole::File => "file",
            ChildRole::Backing => "backing",
            ChildRole::Data => "data-file",
        }
    }
}

/// A block driver instance: one node's behaviour.
#[async_trait]
pub trait BlockDriver: Send + Sync + 'static {
    /// The QAPI driver name (`file`, `raw`, `null-co`, ...).
    fn format_name(&self) -> &'static str;

    /// The current virtual size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`.
    async fn read(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()>;

    /// Writes `buf` at `offset`.
    async fn write(&self, offset: u64, buf: &[u8], flags: WriteFlags) -> BlockResult<()>;

    /// Makes `[offset, offset+len)` read as zeroes.
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()>;

    /// Hints that `[offset, offset+len)` is no longer needed. May do nothing.
    async fn discard(&self, _offset: u64, _len: u64) -> BlockResult<()> {
        Ok(())
    }

    /// Makes every completed write durable.
    async fn flush(&self) -> BlockResult<()>;

    /// The status of the longest prefix of `[offset, offset+len)` that shares
    /// one status. The default says "all data, allocated here".
    async fn block_status(&self, _offset: u64, len: u64) -> BlockResult<Extent> {
        Ok(Extent {
            length: len,
            data: true,
            zero: false,
            depth: 1,
        })
    }

    /// Changes the virtual size.
    async fn resize(&self, _new_size: u64) -> BlockResult<()> {
        Err(BlockError::new(
            ErrorKind::NotSupported,
            "Image format driver does not support resize",
        ))
    }

    /// Whether `write_zeroes` with `no_fallback` can ever succeed.
    fn can_fast_zero(&self) -> bool {
        false
    }

    /// The alignment requests must have to avoid a read-modify-write cycle.
    fn request_alignment(&self) -> u32 {
        1
    }

    /// The file name shown in `query-named-block-nodes`.
    fn filename(&self) -> String;
}

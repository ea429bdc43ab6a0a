//! The `compress` filter (QEMU's `block/filter-compress.c`): every write
//! through it reaches its child as a compressed write, so that an image
//! written through it (a backup target, a converted image) stores
//! compressed clusters. The child must store compressed writes (qcow2).
//! Requests are aligned to the child's cluster size, so writes reach it
//! as whole clusters (smaller ones are completed by the block layer; as in
//! QEMU, a cluster the child already holds cannot be written compressed
//! again).

use std::sync::Arc;

use async_trait::async_trait;
use schema::block::BlockdevOptionsGenericFormat;

use crate::driver::{BlockDriver, ChildRole, WriteFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::limits::Limits;
use crate::node::{NodeChild, ReadSource};
use crate::open::OpenContext;
use crate::permissions::ChildRoleFlags;

/// A `compress` node over its `file` child.
pub struct CompressFilter {
    file: Arc<NodeChild>,
}

impl CompressFilter {
    /// Opens the filter over its `file` child, which must store compressed
    /// writes (QEMU's message otherwise).
    pub async fn open(
        cx: &mut OpenContext<'_>,
        options: &BlockdevOptionsGenericFormat,
    ) -> BlockResult<Self> {
        let flags = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let file = cx.child(&options.file, ChildRole::File, flags).await?;
        let node = file.node();
        if !node.driver().supports_compressed_writes() {
            return Err(BlockError::new(
                ErrorKind::NotSupported,
                format!(
                    "Compression is not supported for underlying format: {}",
                    node.driver().format_name()
                ),
            ));
        }
        Ok(CompressFilter { file })
    }
}

#[async_trait]
impl BlockDriver for CompressFilter {
    fn format_name(&self) -> &'static str {
        "compress"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.file)
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let flags = WriteFlags {
            compressed: true,
            ..flags
        };
        self.file.write(offset, buf, flags).await
    }

    fn supports_compressed_writes(&self) -> bool {
        true
    }

    /// Whole clusters of the child (QEMU's `compress_refresh_limits`).
    fn limits(&self) -> Limits {
        let child = self.file.node();
        let cluster = child
            .driver_info()
            .and_then(|info| info.cluster_size)
            .and_then(|size| u32::try_from(size).ok())
            .unwrap_or(1);
        Limits {
            request_alignment: cluster.max(child.limits().request_alignment),
            ..child.limits()
        }
    }

    /// Reads are the child's, but never around the filter's alignment.
    fn read_source(&self, _offset: u64, _len: u64) -> Option<ReadSource> {
        None
    }
}

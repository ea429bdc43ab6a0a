//! The `copy-on-read` filter, as QEMU's: data a read finds below the top
//! image of its child (in the backing chain, down to `bottom` if given) is
//! written into the top image as well, so later reads come from there.
//!
//! The filter reads with the child's block status: ranges allocated in
//! the top layer, and ranges no layer has (they read as zeroes), are read
//! as they are; others are read and then written back, the same buffer,
//! to the child. A copy holds an exclusive lock on its range and writes
//! through the filter a shared one, so a copy never puts old data over a
//! newer write. It takes QEMU's permissions: "write unchanged" on its
//! child besides what its users take.

use std::sync::Arc;

use async_trait::async_trait;
use schema::block::BlockdevOptionsCor;

use crate::driver::{BlockDriver, ChildRole, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::node::{Node, NodeChild};
use crate::open::OpenContext;
use crate::permissions::{default_child_perms, ChildRoleFlags, Perm};
use crate::range_lock::RangeLocks;

/// Ranges are locked in units of this many bytes.
const LOCK_UNIT: u64 = 64 << 10;

/// A `copy-on-read` node over its `file` child.
pub struct CopyOnRead {
    file: Arc<NodeChild>,
    /// The lowest node whose data is copied up, if limited.
    bottom: Option<Arc<Node>>,
    copies: RangeLocks,
}

impl CopyOnRead {
    /// Opens the filter over its `file` child.
    pub async fn open(cx: &mut OpenContext<'_>, options: &BlockdevOptionsCor) -> BlockResult<Self> {
        let flags = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let file = cx.child(&options.file, ChildRole::File, flags).await?;
        let bottom = match &options.bottom {
            None => None,
            Some(name) => {
                let bottom = cx.find(name)?;
                if chain_depth(&file.node(), &bottom).is_none() {
                    return Err(BlockError::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "Bottom node '{name}' is not in the backing chain of the filtered node"
                        ),
                    ));
                }
                Some(bottom)
            }
        };
        Ok(CopyOnRead {
            file,
            bottom,
            copies: RangeLocks::default(),
        })
    }

    /// Whether data found at chain depth `depth` (1: the top image) is to
    /// be copied up.
    fn copies_from(&self, depth: u32) -> bool {
        if depth < 2 {
            return false;
        }
        match &self.bottom {
            None => true,
            Some(bottom) => chain_depth(&self.file.node(), bottom)
                .is_some_and(|bottom_depth| depth <= bottom_depth),
        }
    }

    fn lock_range(offset: u64, len: u64) -> (u64, u64) {
        (offset / LOCK_UNIT, (offset + len).div_ceil(LOCK_UNIT))
    }
}

/// How deep `wanted` is below `top` in its backing chain (1: `top`).
fn chain_depth(top: &Arc<Node>, wanted: &Arc<Node>) -> Option<u32> {
    let mut current = Some(top.clone());
    let mut depth = 1;
    while let Some(node) = current {
        if Arc::ptr_eq(&node, wanted) {
            return Some(depth);
        }
        current = node
            .child(ChildRole::Backing)
            .or_else(|| node.driver().filtered().map(|c| c.node()));
        depth += 1;
    }
    None
}

#[async_trait]
impl BlockDriver for CopyOnRead {
    fn format_name(&self) -> &'static str {
        "copy-on-read"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.file)
    }

    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let mut done = 0u64;
        let len = buf.len() as u64;
        while done < len {
            let at = offset + done;
            let extent = self.file.block_status(at, len - done).await?;
            let part = buf.slice(done as usize..(done + extent.length) as usize);
            if self.copies_from(extent.depth) {
                let (start, end) = Self::lock_range(at, extent.length);
                let _copy = self.copies.lock(start, end, true).await;
                self.file.read(at, &part).await?;
                self.file.write(at, &part, WriteFlags::default()).await?;
            } else {
                self.file.read(at, &part).await?;
            }
            done += extent.length;
        }
        Ok(())
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let (start, end) = Self::lock_range(offset, buf.len() as u64);
        let _write = self.copies.lock(start, end, false).await;
        self.file.write(offset, buf, flags).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let (start, end) = Self::lock_range(offset, len);
        let _write = self.copies.lock(start, end, false).await;
        self.file.write_zeroes(offset, len, flags).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let (start, end) = Self::lock_range(offset, len);
        let _write = self.copies.lock(start, end, false).await;
        self.file.discard(offset, len).await
    }

    /// Reads are served from the child's data only after a copy decision.
    fn read_source(&self, _offset: u64, _len: u64) -> Option<crate::node::ReadSource> {
        None
    }

    /// QEMU's `cor_child_perm`: what the users take, plus "write
    /// unchanged" whenever they read, which others may share.
    fn child_perm(
        &self,
        child: &NodeChild,
        writable: bool,
        perm: Perm,
        shared: Perm,
    ) -> (Perm, Perm) {
        let (child_perm, child_shared) = default_child_perms(child.flags(), writable, perm, shared);
        let copy = if perm.contains(Perm::CONSISTENT_READ) {
            Perm::WRITE_UNCHANGED
        } else {
            Perm::NONE
        };
        (child_perm | copy, child_shared | Perm::WRITE_UNCHANGED)
    }
}

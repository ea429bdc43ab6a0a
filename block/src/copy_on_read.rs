//! The `copy-on-read` filter, as QEMU's: data a read finds in the backing
//! chain below the top image of its child (down to `bottom`, if given) is
//! written into the top image too, so later reads come from there.
//!
//! A read asks the child's block status for the request rounded out to
//! the top image's clusters. Where the top image has the data, or where
//! the chain has nothing or only zeroes (a hole of a raw base, a zero
//! cluster, nothing at all), the filter only reads. Where a copied layer
//! has data, the whole clusters around it are read through the child (the
//! caller's buffer for the requested part, a bounce buffer for the rest)
//! and written back: as zeroes if they read as zeroes, else as data. This
//! is what QEMU 10 leaves in the top image (`qemu-img map` shows the
//! same). A copy holds an exclusive lock on its range and writes through
//! the filter a shared one, so a copy never puts old data over a newer
//! write. Permissions are QEMU's: "write unchanged" on the child whenever
//! the node is active, besides what its users take and share.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use schema::block::BlockdevOptionsCor;
use smallvec::SmallVec;

use crate::driver::{BlockDriver, ChildRole, Extent, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::node::{Node, NodeChild, ReadSource};
use crate::open::OpenContext;
use crate::permissions::{ChildRoleFlags, Perm};
use crate::range_lock::RangeLocks;

/// Ranges are locked in units of this many bytes.
const LOCK_UNIT: u64 = 64 << 10;

/// What the filter passes from its users to its child (QEMU's
/// `PERM_PASSTHROUGH`); the rest ("write unchanged") it takes and shares
/// itself.
const PASSTHROUGH: Perm = Perm::CONSISTENT_READ.union(Perm::WRITE).union(Perm::RESIZE);

/// A `copy-on-read` node over its `file` child.
pub struct CopyOnRead {
    file: Arc<NodeChild>,
    /// The lowest node whose data is copied up, if limited.
    bottom: Option<Arc<Node>>,
    /// An inactive node takes no write permission on its child.
    active: AtomicBool,
    copies: RangeLocks,
    /// Ranges that read as zeroes are copied too (as zeroes): a stream
    /// must keep them when the layers below go.
    copy_zeroes: bool,
}

impl CopyOnRead {
    /// Opens the filter over its `file` child; `bottom` must be a node of
    /// the child's backing chain that is not a filter.
    pub async fn open(cx: &mut OpenContext<'_>, options: &BlockdevOptionsCor) -> BlockResult<Self> {
        let flags = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let file = cx.child(&options.file, ChildRole::File, flags).await?;
        let bottom = match &options.bottom {
            None => None,
            Some(name) => {
                let bottom = cx
                    .find(name)
                    .map_err(|_| invalid(format!("Bottom node '{name}' not found")))?;
                if bottom.driver().filtered().is_some() {
                    return Err(invalid(format!("Bottom node '{name}' is a filter")));
                }
                // QEMU freezes the chain down to `bottom` and loops for
                // ever when `bottom` is not in it; this refuses.
                if chain_depth(&file.node(), &bottom).is_none() {
                    return Err(invalid(format!(
                        "Bottom node '{name}' is not in the backing chain of '{}'",
                        file.node().name()
                    )));
                }
                Some(bottom)
            }
        };
        Ok(CopyOnRead {
            file,
            bottom,
            active: AtomicBool::new(!cx.settings().inactive),
            copies: RangeLocks::default(),
            copy_zeroes: false,
        })
    }

    /// The filter a stream job puts above the image it fills (QEMU's
    /// implicit `copy-on-read` of `block-stream`): it copies everything
    /// found in the chain down to `bottom`, zeroes included.
    pub fn for_stream(file: Arc<NodeChild>, bottom: Option<Arc<Node>>) -> Self {
        CopyOnRead {
            file,
            bottom,
            active: AtomicBool::new(true),
            copies: RangeLocks::default(),
            copy_zeroes: true,
        }
    }

    /// Whether data with this status is copied up: found in the backing
    /// chain (not in the top image), at or above `bottom`, and not known
    /// to read as zeroes.
    fn copies(&self, extent: &Extent) -> bool {
        if (extent.zero && !self.copy_zeroes) || extent.depth < 2 {
            return false;
        }
        match &self.bottom {
            None => true,
            Some(bottom) => chain_depth(&self.file.node(), bottom)
                .is_some_and(|bottom_depth| extent.depth <= bottom_depth),
        }
    }

    /// The unit copies are made in: the top image's cluster, if it has
    /// one.
    fn cluster_size(&self) -> u64 {
        self.file
            .node()
            .driver_info()
            .and_then(|info| info.cluster_size)
            .filter(|&size| size > 0)
            .unwrap_or(1)
    }

    /// The ranges of `region` (the request rounded out to clusters) that
    /// are copied: the clusters around every extent that [`Self::copies`],
    /// merged.
    async fn copy_ranges(
        &self,
        region: Range<u64>,
        cluster: u64,
    ) -> BlockResult<SmallVec<[Range<u64>; 2]>> {
        let mut ranges: SmallVec<[Range<u64>; 2]> = SmallVec::new();
        let mut at = region.start;
        while at < region.end {
            let extent = self.file.block_status(at, region.end - at).await?;
            let end = at + extent.length.clamp(1, region.end - at);
            if self.copies(&extent) {
                let start = at / cluster * cluster;
                let end = end
                    .div_ceil(cluster)
                    .saturating_mul(cluster)
                    .min(region.end);
                match ranges.last_mut() {
                    Some(last) if last.end >= start => last.end = last.end.max(end),
                    _ => ranges.push(start..end),
                }
            }
            at = end;
        }
        Ok(ranges)
    }

    /// Reads `range` through the child into the requested part of `buf`
    /// (which starts at `offset`) and bounce buffers for the rest, and
    /// writes it back into the child.
    async fn copy(&self, range: Range<u64>, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let end = offset + buf.len() as u64;
        let inside = range.start.max(offset)..range.end.min(end);
        let mut parts: SmallVec<[IoBuf; 3]> = SmallVec::new();
        if range.start < inside.start {
            parts.push(IoBuf::zeroed((inside.start - range.start) as usize));
        }
        parts.push(buf.slice((inside.start - offset) as usize..(inside.end - offset) as usize));
        if inside.end < range.end {
            parts.push(IoBuf::zeroed((range.end - inside.end) as usize));
        }
        let whole = IoBuf::concat(parts);
        let (start, units) = lock_range(range.start, range.end - range.start);
        let _copy = self.copies.lock(start, units, true).await;
        self.file.read(range.start, &whole).await?;
        if whole.is_zero() {
            let len = range.end - range.start;
            self.file
                .write_zeroes(range.start, len, ZeroFlags::default())
                .await
        } else {
            self.file
                .write(range.start, &whole, WriteFlags::default())
                .await
        }
    }
}

/// How deep `wanted` is below `top` in its backing chain, as block status
/// counts depth: 1 for `top` (or a filter above it), one more for each
/// backing edge.
pub(crate) fn chain_depth(top: &Arc<Node>, wanted: &Arc<Node>) -> Option<u32> {
    let mut current = Some(top.clone());
    let mut depth = 1;
    while let Some(node) = current {
        if Arc::ptr_eq(&node, wanted) {
            return Some(depth);
        }
        current = match node.driver().filtered() {
            Some(child) => Some(child.node()),
            None => {
                depth += 1;
                node.child(ChildRole::Backing)
            }
        };
    }
    None
}

/// The lock units covering `[offset, offset + len)`.
fn lock_range(offset: u64, len: u64) -> (u64, u64) {
    (offset / LOCK_UNIT, (offset + len).div_ceil(LOCK_UNIT))
}

fn invalid(message: String) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

#[async_trait]
impl BlockDriver for CopyOnRead {
    fn format_name(&self) -> &'static str {
        "copy-on-read"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.file)
    }

    /// Reads the parts nothing is copied for straight into `buf`, and
    /// copies the rest.
    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let end = offset + buf.len() as u64;
        let cluster = self.cluster_size();
        let limit = self.file.size().max(end);
        let region = offset / cluster * cluster..end.div_ceil(cluster).saturating_mul(cluster);
        let copies = self
            .copy_ranges(region.start..region.end.min(limit), cluster)
            .await?;
        let mut at = offset;
        for range in copies {
            if at < range.start {
                let part = buf.slice((at - offset) as usize..(range.start - offset) as usize);
                self.file.read(at, &part).await?;
            }
            self.copy(range.clone(), offset, buf).await?;
            at = range.end;
        }
        if at < end {
            let part = buf.slice((at - offset) as usize..buf.len());
            self.file.read(at, &part).await?;
        }
        Ok(())
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let (start, end) = lock_range(offset, buf.len() as u64);
        let _write = self.copies.lock(start, end, false).await;
        self.file.write(offset, buf, flags).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let (start, end) = lock_range(offset, len);
        let _write = self.copies.lock(start, end, false).await;
        self.file.write_zeroes(offset, len, flags).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let (start, end) = lock_range(offset, len);
        let _write = self.copies.lock(start, end, false).await;
        self.file.discard(offset, len).await
    }

    /// Reads are served from the child's data only after a copy decision.
    fn read_source(&self, _offset: u64, _len: u64) -> Option<ReadSource> {
        None
    }

    /// QEMU's `cor_child_perm`: read, write and resize as the users take
    /// and share them; "write unchanged" taken while active, and shared.
    fn child_perm(
        &self,
        _child: &NodeChild,
        _writable: bool,
        perm: Perm,
        shared: Perm,
    ) -> (Perm, Perm) {
        let copies = if self.active.load(Ordering::Acquire) {
            Perm::WRITE_UNCHANGED
        } else {
            Perm::NONE
        };
        (
            (perm & PASSTHROUGH) | copies,
            (shared & PASSTHROUGH) | Perm::WRITE_UNCHANGED,
        )
    }

    fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
    }
}

//! The `preallocate` filter, as QEMU's: when a write goes past the end of
//! the data in its child's file, the file is grown ahead of it by
//! `prealloc-size` (rounded to `prealloc-align`) with zeroes the file
//! system allocates at once, so a growing image (a qcow2 allocating
//! clusters) does not extend its file with every write. The node's size is
//! the end of the data; when the node closes, the file is cut back to it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use schema::block::BlockdevOptionsPreallocate;
use tokio::sync::Mutex;

use crate::driver::{BlockDriver, ChildRole, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::node::NodeChild;
use crate::open::OpenContext;
use crate::permissions::{default_child_perms, ChildRoleFlags, Perm};

/// QEMU's defaults.
const DEFAULT_ALIGN: u64 = 1 << 20;
const DEFAULT_SIZE: u64 = 128 << 20;

/// A `preallocate` node over its `file` child.
pub struct Preallocate {
    file: Arc<NodeChild>,
    align: u64,
    size: u64,
    /// Where the data ends: the node's size.
    data_end: AtomicU64,
    /// Where the file ends, preallocation included.
    file_end: Mutex<u64>,
    /// Cleared when the file system cannot preallocate (no fast zeroing).
    enabled: AtomicBool,
}

impl Preallocate {
    /// Opens the filter over its `file` child.
    pub async fn open(
        cx: &mut OpenContext<'_>,
        options: &BlockdevOptionsPreallocate,
    ) -> BlockResult<Self> {
        let align = positive("prealloc-align", options.prealloc_align, DEFAULT_ALIGN)?;
        let size = positive("prealloc-size", options.prealloc_size, DEFAULT_SIZE)?;
        if !align.is_multiple_of(512) {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "prealloc-align parameter of preallocate filter is not aligned to 512",
            ));
        }
        let flags = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let file = cx.child(&options.file, ChildRole::File, flags).await?;
        let end = file.size();
        Ok(Preallocate {
            file,
            align,
            size,
            data_end: AtomicU64::new(end),
            file_end: Mutex::new(end),
            enabled: AtomicBool::new(true),
        })
    }

    /// Before a request that ends at `end`: grows the file ahead of it if
    /// it reaches past the file's end, and records the new data end.
    async fn before_write(&self, end: u64) {
        if end <= self.data_end.load(Ordering::Acquire) {
            return;
        }
        if self.enabled.load(Ordering::Relaxed) {
            let mut file_end = self.file_end.lock().await;
            if end > *file_end {
                let target = (end + self.size).div_ceil(self.align) * self.align;
                let zeroes = ZeroFlags {
                    may_unmap: false,
                    no_fallback: true,
                    fua: false,
                };
                match self
                    .file
                    .write_zeroes(*file_end, target - *file_end, zeroes)
                    .await
                {
                    Ok(()) => *file_end = target,
                    // Without fast zeroing, preallocating costs more than
                    // it saves: the filter passes writes on as they are.
                    Err(_) => self.enabled.store(false, Ordering::Relaxed),
                }
            }
        }
        self.data_end.fetch_max(end, Ordering::AcqRel);
    }
}

fn positive(name: &str, value: Option<i64>, default: u64) -> BlockResult<u64> {
    match value {
        None => Ok(default),
        Some(value) => u64::try_from(value).ok().filter(|&v| v > 0).ok_or_else(|| {
            BlockError::new(
                ErrorKind::InvalidArgument,
                format!("Value '{value}' is out of range for parameter '{name}'"),
            )
        }),
    }
}

#[async_trait]
impl BlockDriver for Preallocate {
    fn format_name(&self) -> &'static str {
        "preallocate"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.file)
    }

    fn size(&self) -> u64 {
        self.data_end.load(Ordering::Acquire)
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.before_write(offset + buf.len() as u64).await;
        self.file.write(offset, buf, flags).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.before_write(offset + len).await;
        self.file.write_zeroes(offset, len, flags).await
    }

    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        let mut file_end = self.file_end.lock().await;
        self.file.resize(new_size).await?;
        *file_end = new_size;
        self.data_end.store(new_size, Ordering::Release);
        Ok(())
    }

    /// Cuts the file back to the data, as QEMU does when the filter's
    /// writers go.
    async fn close(&self) -> BlockResult<()> {
        let mut file_end = self.file_end.lock().await;
        let data_end = self.data_end.load(Ordering::Acquire);
        if *file_end > data_end {
            self.file.resize(data_end).await?;
            *file_end = data_end;
        }
        Ok(())
    }

    /// The filter resizes its child whenever its users write.
    fn child_perm(
        &self,
        child: &NodeChild,
        writable: bool,
        perm: Perm,
        shared: Perm,
    ) -> (Perm, Perm) {
        let (child_perm, child_shared) = default_child_perms(child.flags(), writable, perm, shared);
        if perm.contains(Perm::WRITE) {
            (child_perm | Perm::RESIZE, child_shared & !Perm::RESIZE)
        } else {
            (child_perm, child_shared)
        }
    }
}

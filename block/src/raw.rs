//! The `raw` format driver: its child's bytes as they are, optionally a
//! window of them (`offset`, `size`), as QEMU's `raw-format`.
//!
//! Without a window it behaves like a filter (permissions pass through);
//! with one, the child is a data child, whose size nobody else may change.
//! `blockdev-reopen` may move or resize the window (checked as at open).

use std::any::Any;
use std::sync::Arc;

use arc_swap::ArcSwap;

use async_trait::async_trait;
use schema::block::{BlkdebugEvent, BlockdevDriver, BlockdevOptionsRaw};
use serde_json::{Map, Value as Json};

use crate::driver::{
    flush_child, BlockDriver, ChildRole, DriverInfo, Extent, WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::limits::Limits;
use crate::node::{NodeChild, ReadSource, SECTOR_SIZE};
use crate::open::{ObjectLookup, OpenContext};
use crate::permissions::{ChildRoleFlags, Perm};

/// A `raw` node over its `file` child.
pub struct RawDriver {
    file: Arc<NodeChild>,
    /// The window; a reopen replaces it while the node is drained.
    window: ArcSwap<Window>,
}

/// Where the node's bytes are in the child.
#[derive(Debug, PartialEq, Eq)]
struct Window {
    offset: u64,
    /// `Some` when the window has a fixed size.
    size: Option<u64>,
    /// The options as given, for `json:` file names.
    given_offset: Option<i64>,
    given_size: Option<i64>,
}

impl Window {
    /// The window `options` ask for, checked against a child of
    /// `real_size` bytes (QEMU's `raw_apply_options`).
    fn checked(options: &BlockdevOptionsRaw, real_size: u64) -> BlockResult<Window> {
        let offset = non_negative("offset", options.offset)?.unwrap_or(0);
        let size = non_negative("size", options.size)?;
        if offset > real_size {
            return Err(invalid(format!(
                "Offset ({offset}) cannot be greater than size of the containing file ({real_size})"
            )));
        }
        if let Some(size) = size {
            if real_size - offset < size {
                return Err(invalid(format!(
                    "The sum of offset ({offset}) and size ({size}) has to be smaller or equal to the  actual size of the containing file ({real_size})"
                )));
            }
            // Whole sectors, so that rounding never leaks out of the window.
            if size % SECTOR_SIZE != 0 {
                return Err(invalid(format!(
                    "Specified size is not multiple of {SECTOR_SIZE}"
                )));
            }
        }
        Ok(Window {
            offset,
            size,
            given_offset: options.offset,
            given_size: options.size,
        })
    }
}

impl RawDriver {
    /// A raw view of its `file` child, checked against the child's size.
    pub async fn open(cx: &mut OpenContext<'_>, options: &BlockdevOptionsRaw) -> BlockResult<Self> {
        let role = Self::file_role(options);
        let file = cx.child(&options.file, ChildRole::File, role).await?;
        let window = Window::checked(options, file.size())?;
        Ok(RawDriver {
            file,
            window: ArcSwap::from_pointee(window),
        })
    }

    /// What the child is to a node with these options: a filtered child
    /// without a window (QEMU looks at the values: `offset=0` is no
    /// window), a data child with one.
    fn file_role(options: &BlockdevOptionsRaw) -> ChildRoleFlags {
        let role = if options.offset.unwrap_or(0) != 0 || options.size.is_some() {
            ChildRoleFlags::DATA
        } else {
            ChildRoleFlags::FILTERED
        };
        role.union(ChildRoleFlags::PRIMARY)
    }

    /// Maps a request into the child; a range outside a fixed window is
    /// refused (`NoSpace` for writes, `InvalidArgument` otherwise), as
    /// QEMU's `raw_adjust_offset`.
    fn map(&self, offset: u64, len: u64, is_write: bool) -> BlockResult<u64> {
        let window = self.window.load();
        if let Some(size) = window.size {
            if offset > size || len > size - offset {
                let kind = if is_write {
                    ErrorKind::NoSpace
                } else {
                    ErrorKind::InvalidArgument
                };
                return Err(BlockError::new(
                    kind,
                    format!("Request [{offset}, +{len}) outside the raw window of {size} bytes"),
                ));
            }
        }
        offset
            .checked_add(window.offset)
            .ok_or_else(|| invalid("Request offset overflows"))
    }
}

#[async_trait]
impl BlockDriver for RawDriver {
    fn format_name(&self) -> &'static str {
        "raw"
    }

    fn size(&self) -> u64 {
        let window = self.window.load();
        let available = self.file.size().saturating_sub(window.offset);
        window.size.map_or(available, |size| size.min(available))
    }

    /// Raises `read_aio` on the file (for a `blkdebug` there), as QEMU.
    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let offset = self.map(offset, buf.len() as u64, false)?;
        let file = self.file.node();
        file.driver().debug_event(BlkdebugEvent::ReadAio);
        file.read(offset, buf).await
    }

    /// Raises `write_aio` on the file, as QEMU.
    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let offset = self.map(offset, buf.len() as u64, true)?;
        let file = self.file.node();
        file.driver().debug_event(BlkdebugEvent::WriteAio);
        file.write(offset, buf, flags).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let offset = self.map(offset, len, true)?;
        self.file.write_zeroes(offset, len, flags).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let offset = self.map(offset, len, true)?;
        self.file.discard(offset, len).await
    }

    async fn flush(&self) -> BlockResult<()> {
        flush_child(&self.file).await
    }

    /// The child's status at the mapped offset, depth included.
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        let offset = self.map(offset, len, false)?;
        self.file.block_status(offset, len).await
    }

    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        let window = self.window.load_full();
        if window.size.is_some() {
            return Err(BlockError::new(
                ErrorKind::NotSupported,
                "Cannot resize fixed-size raw disks",
            ));
        }
        let file_size = new_size
            .checked_add(window.offset)
            .ok_or_else(|| invalid("Disk size too large for the chosen offset"))?;
        self.file.resize(file_size).await
    }

    fn can_fast_zero(&self) -> bool {
        self.file.node().can_fast_zero()
    }

    fn read_source(&self, offset: u64, len: u64) -> Option<ReadSource> {
        let mapped = self.map(offset, len, false).ok()?;
        self.file.node().read_source(mapped, len)
    }

    fn limits(&self) -> Limits {
        self.file.node().limits()
    }

    /// Raw has no name of its own: it shows its file's, or `json:`.
    fn filename(&self) -> String {
        String::new()
    }

    /// A reopen may move or resize the window (QEMU's
    /// `raw_reopen_prepare`), checked against the child as it is.
    fn prepare_reopen(
        &self,
        options: &BlockdevDriver,
        _settings: &crate::node::NodeSettings,
        _objects: Option<&dyn ObjectLookup>,
    ) -> BlockResult<Option<Arc<dyn Any + Send + Sync>>> {
        let BlockdevDriver::Raw(options) = options else {
            return Ok(None);
        };
        let window = Window::checked(options, self.file.size())?;
        Ok(Some(Arc::new(window)))
    }

    fn commit_reopen(&self, prepared: Arc<dyn Any + Send + Sync>) {
        if let Ok(window) = prepared.downcast::<Window>() {
            self.window.store(window);
        }
    }

    fn strong_options(&self) -> Map<String, Json> {
        let window = self.window.load();
        let mut options = Map::new();
        if let Some(offset) = window.given_offset {
            options.insert("offset".to_string(), Json::from(offset));
        }
        if let Some(size) = window.given_size {
            options.insert("size".to_string(), Json::from(size));
        }
        options
    }

    fn driver_info(&self) -> Option<DriverInfo> {
        self.file.node().driver_info()
    }

    /// QEMU's `raw_child_perm`: the default rules, but write and resize
    /// only when this node's users take them.
    fn child_perm(
        &self,
        child: &NodeChild,
        writable: bool,
        perm: Perm,
        shared: Perm,
    ) -> (Perm, Perm) {
        let (child_perm, child_shared) =
            crate::permissions::default_child_perms(child.flags(), writable, perm, shared);
        let passed = Perm::WRITE | Perm::RESIZE;
        ((child_perm & !passed) | (perm & passed), child_shared)
    }
}

fn non_negative(name: &str, value: Option<i64>) -> BlockResult<Option<u64>> {
    value
        .map(|v| {
            u64::try_from(v).map_err(|_| {
                invalid(format!(
                    "Value '{v}' is out of range for parameter '{name}'"
                ))
            })
        })
        .transpose()
}

fn invalid(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

//! The `preallocate` filter, as QEMU's: meant to sit between a format and
//! its file, it grows the file ahead when a write goes past its end, so a
//! growing image extends its file in large steps rather than with every
//! new cluster, and gives the space back when it is done.
//!
//! When a write (or write-zeroes) ends past the end of the file, the
//! filter first zeroes the file from its end to `prealloc-size` bytes past
//! the write, rounded up to `prealloc-align` (a write-zeroes that must not
//! fall back to writing buffers: `fallocate` on a file); a write-zeroes
//! into that zeroed tail is then already done. The node's size stays the
//! end of the data written (the format above allocates from there), and
//! the file is cut back to it when the node closes, when its users give
//! up write or resize permission, and before it is resized.
//!
//! The filter only does this while its users may write and resize: then
//! it takes write and resize on its file and shares neither, so the ends
//! it tracks stay true. When they give them up it drops its preallocation
//! in a task (QEMU's bottom half) and then lets go of the file, having the
//! graph's permissions applied again. Growing, cutting and resizing the
//! file are serialised; writes inside the grown file go straight through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use schema::block::{BlockdevDriver, BlockdevOptionsPreallocate};

use crate::driver::{BlockDriver, ChildRole, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::node::{NodeChild, SECTOR_SIZE};
use crate::open::{OpenContext, PermRefresh};
use crate::permissions::{default_child_perms, ChildRoleFlags, Perm};

/// `prealloc-align` when not given: 1 MiB.
const DEFAULT_ALIGN: u64 = 1 << 20;

/// `prealloc-size` when not given: 128 MiB.
const DEFAULT_SIZE: u64 = 128 << 20;

/// What the filter needs from its users to preallocate, and then takes on
/// its file without sharing it.
const WRITE_RESIZE: Perm = Perm::WRITE.union(Perm::RESIZE);

/// A `preallocate` node over its `file` child.
pub struct Preallocate {
    inner: Arc<Inner>,
}

/// What the node and its preallocation-dropping task share.
struct Inner {
    file: Arc<NodeChild>,
    /// `prealloc-align` (a reopen may change it).
    align: AtomicU64,
    /// `prealloc-size` (a reopen may change it).
    size: AtomicU64,
    ends: Mutex<Ends>,
    /// Held while the file grows, is cut back or resized.
    resizing: tokio::sync::Mutex<()>,
    refresh: PermRefresh,
}

/// What the filter knows of its file; `None` is unknown. All are `None`
/// unless the filter holds write and resize on the file.
#[derive(Debug, Default)]
struct Ends {
    /// The end of the data: the file's length when the filter took
    /// control, or the end of a later write past it.
    data_end: Option<u64>,
    /// Where the zeroed tail starts: `[zero_start, file_end)` reads as
    /// zeroes.
    zero_start: Option<u64>,
    /// The file's length, preallocation included.
    file_end: Option<u64>,
    /// The users gave up write or resize: the preallocation is to go.
    dropping: bool,
}

impl Ends {
    /// The file has bytes past the data (or may have): the filter keeps
    /// the file to itself until they are cut off.
    fn holds_preallocation(&self) -> bool {
        self.data_end.is_some() && self.file_end != self.data_end
    }

    fn forget(&mut self) {
        *self = Ends::default();
    }

    fn start_at(&mut self, len: u64) {
        self.data_end = Some(len);
        self.zero_start = Some(len);
        self.file_end = Some(len);
    }
}

/// Whether `perm` has both write and resize.
fn can_write_resize(perm: Perm) -> bool {
    perm.contains(WRITE_RESIZE)
}

fn invalid(message: String) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

/// A size option: not negative (QEMU's words for a size that does not
/// parse).
fn size_option(name: &str, value: Option<i64>, default: u64) -> BlockResult<u64> {
    value.map_or(Ok(default), |v| {
        u64::try_from(v).map_err(|_| {
            invalid(format!(
                "Value '{v}' is out of range for parameter '{name}'"
            ))
        })
    })
}

impl Preallocate {
    /// Opens the filter over its `file` child, with QEMU's checks of the
    /// options in QEMU's order (after the child is opened).
    pub async fn open(
        cx: &mut OpenContext<'_>,
        options: &BlockdevOptionsPreallocate,
    ) -> BlockResult<Self> {
        let flags = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let file = cx.child(&options.file, ChildRole::File, flags).await?;
        let (align, size) = checked_sizes(options, &file)?;
        Ok(Preallocate {
            inner: Arc::new(Inner {
                file,
                align: AtomicU64::new(align),
                size: AtomicU64::new(size),
                ends: Mutex::default(),
                resizing: tokio::sync::Mutex::new(()),
                refresh: cx.perm_refresh(),
            }),
        })
    }
}

/// `prealloc-align` and `prealloc-size` of `options` over `file`, with
/// QEMU's checks (`preallocate_absorb_opts`).
fn checked_sizes(
    options: &BlockdevOptionsPreallocate,
    file: &NodeChild,
) -> BlockResult<(u64, u64)> {
    let align = size_option("prealloc-align", options.prealloc_align, DEFAULT_ALIGN)?;
    let size = size_option("prealloc-size", options.prealloc_size, DEFAULT_SIZE)?;
    if !align.is_multiple_of(SECTOR_SIZE) {
        return Err(invalid(format!(
            "prealloc-align parameter of preallocate filter is not aligned to {SECTOR_SIZE}"
        )));
    }
    let file_align = u64::from(file.node().limits().request_alignment.max(1));
    if !align.is_multiple_of(file_align) {
        return Err(invalid(format!(
            "prealloc-align parameter of preallocate filter is not aligned to underlying node request alignment ({file_align})"
        )));
    }
    Ok((align, size))
}

impl Inner {
    fn ends(&self) -> MutexGuard<'_, Ends> {
        self.ends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file's request alignment.
    fn file_align(&self) -> u64 {
        u64::from(self.file.node().limits().request_alignment.max(1))
    }

    /// QEMU's `handle_write`, before a write of `[offset, offset + len)`:
    /// records the new data end and grows the file if the write ends past
    /// it. Returns whether the range, for a write of zeroes that may be
    /// merged (`merge_zero`), already reads as zeroes (nothing left to do).
    async fn before_write(&self, offset: u64, len: u64, merge_zero: bool) -> bool {
        if !can_write_resize(self.file.perms().0) {
            return false;
        }
        let end = offset + len;
        {
            let mut ends = self.ends();
            if ends.data_end.is_none() {
                let size = self.file.size();
                ends.data_end = Some(size);
                ends.file_end.get_or_insert(size);
            }
            if ends.data_end.is_some_and(|data_end| end <= data_end) {
                return false;
            }
            ends.data_end = Some(end);
            if ends.zero_start.is_none() || !merge_zero {
                ends.zero_start = Some(end);
            }
            if let Some(done) = Self::inside_file(&mut ends, &self.file, offset, end, merge_zero) {
                return done;
            }
        }
        self.grow(offset, end, merge_zero).await
    }

    /// `Some(already zero)` if the write ends inside the file; `None` if
    /// the file must grow first.
    fn inside_file(
        ends: &mut Ends,
        file: &NodeChild,
        offset: u64,
        end: u64,
        merge_zero: bool,
    ) -> Option<bool> {
        let file_end = *ends.file_end.get_or_insert_with(|| file.size());
        (end <= file_end).then(|| {
            merge_zero
                && ends
                    .zero_start
                    .is_some_and(|zero_start| offset >= zero_start)
        })
    }

    /// Grows the file past `end` (one grower at a time; a write that
    /// waited may find the file grown already).
    async fn grow(&self, offset: u64, end: u64, merge_zero: bool) -> bool {
        let _resizing = self.resizing.lock().await;
        let (start, grown_end, merged) = {
            let mut ends = self.ends();
            if let Some(done) = Self::inside_file(&mut ends, &self.file, offset, end, merge_zero) {
                return done;
            }
            let file_end = ends.file_end.unwrap_or(0);
            let file_align = self.file_align();
            let align = self.align.load(Ordering::Relaxed).max(file_align);
            let from = if merge_zero {
                offset.min(file_end)
            } else {
                file_end
            };
            let Some(start) = from.checked_next_multiple_of(file_align) else {
                return false;
            };
            let Some(grown_end) = start
                .max(end)
                .checked_add(self.size.load(Ordering::Relaxed))
                .and_then(|e| e.checked_next_multiple_of(align))
            else {
                return false;
            };
            (start, grown_end, merge_zero && start <= offset)
        };
        let zeroes = ZeroFlags {
            no_fallback: true,
            ..ZeroFlags::default()
        };
        let grown = self
            .file
            .write_zeroes(start, grown_end - start, zeroes)
            .await;
        let mut ends = self.ends();
        match grown {
            Ok(()) => {
                ends.file_end = Some(grown_end);
                merged
            }
            Err(_) => {
                ends.file_end = None;
                false
            }
        }
    }

    /// Cuts the file back to the data end, if it has more; the caller
    /// holds `resizing`. Returns the data end it cut to.
    async fn cut_to_data_end(&self) -> BlockResult<Option<u64>> {
        let (data_end, file_end) = {
            let mut ends = self.ends();
            let Some(data_end) = ends.data_end else {
                return Ok(None);
            };
            let file_end = ends.file_end.unwrap_or_else(|| self.file.size());
            // Writes past the data end now wait for `resizing`.
            ends.file_end = Some(data_end);
            (data_end, file_end)
        };
        if data_end < file_end {
            if let Err(e) = self.file.resize(data_end).await {
                self.ends().file_end = None;
                return Err(e);
            }
        }
        Ok(Some(data_end))
    }

    /// The task that drops the preallocation once the users gave up write
    /// or resize (QEMU's `preallocate_drop_resize`), unless they took them
    /// back meanwhile; then lets go of the file. On failure the filter
    /// keeps the file to itself, as QEMU does, and tries again on close.
    async fn drop_preallocation(self: Arc<Self>) {
        {
            let _resizing = self.resizing.lock().await;
            if !self.ends().dropping {
                return;
            }
            let cut = self.cut_to_data_end().await;
            let mut ends = self.ends();
            let still_dropping = std::mem::take(&mut ends.dropping);
            if let Err(e) = cut {
                tracing::warn!("preallocate: could not drop the preallocation: {e}");
                return;
            }
            if !still_dropping {
                return;
            }
            ends.forget();
        }
        if let Err(e) = self.refresh.run().await {
            tracing::warn!("preallocate: could not give up the file's permissions: {e}");
        }
    }
}

#[async_trait]
impl BlockDriver for Preallocate {
    fn format_name(&self) -> &'static str {
        "preallocate"
    }

    /// A reopen may change the sizes (QEMU's `preallocate_reopen_prepare`).
    fn prepare_reopen(
        &self,
        options: &BlockdevDriver,
        _settings: &crate::node::NodeSettings,
        _objects: Option<&dyn crate::open::ObjectLookup>,
    ) -> BlockResult<Option<Arc<dyn std::any::Any + Send + Sync>>> {
        let BlockdevDriver::Preallocate(options) = options else {
            return Ok(None);
        };
        Ok(Some(Arc::new(checked_sizes(options, &self.inner.file)?)))
    }

    fn commit_reopen(&self, prepared: Arc<dyn std::any::Any + Send + Sync>) {
        if let Ok(sizes) = prepared.downcast::<(u64, u64)>() {
            self.inner.align.store(sizes.0, Ordering::Relaxed);
            self.inner.size.store(sizes.1, Ordering::Relaxed);
        }
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.inner.file)
    }

    /// The end of the data, not of the file.
    fn size(&self) -> u64 {
        self.inner
            .ends()
            .data_end
            .unwrap_or_else(|| self.inner.file.size())
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.inner
            .before_write(offset, buf.len() as u64, false)
            .await;
        self.inner.file.write(offset, buf, flags).await
    }

    /// Zeroes that land in the zeroed tail are already there.
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let merge_zero = !flags.may_unmap && !flags.fua;
        if self.inner.before_write(offset, len, merge_zero).await {
            return Ok(());
        }
        self.inner.file.write_zeroes(offset, len, flags).await
    }

    /// QEMU's `preallocate_co_truncate` (without a preallocation mode):
    /// growing drops the preallocation first, so the file gets exactly the
    /// new size.
    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        let inner = &self.inner;
        let _resizing = inner.resizing.lock().await;
        let data_end = inner.ends().data_end;
        if data_end.is_some_and(|data_end| new_size > data_end) {
            inner.cut_to_data_end().await.map_err(|e| {
                BlockError::new(
                    e.kind,
                    format!("preallocate-filter: failed to drop write-zero preallocation: {e}"),
                )
            })?;
            inner.ends().data_end = Some(new_size);
        }
        let resized = inner.file.resize(new_size).await;
        let mut ends = inner.ends();
        match resized {
            Ok(()) if can_write_resize(inner.file.perms().0) => ends.start_at(new_size),
            Ok(()) => {}
            Err(_) => {
                let dropping = ends.dropping;
                ends.forget();
                ends.dropping = dropping;
            }
        }
        resized
    }

    /// Cuts the preallocation off before the file closes.
    async fn close(&self) -> BlockResult<()> {
        let _resizing = self.inner.resizing.lock().await;
        let cut = self.inner.cut_to_data_end().await;
        self.inner.ends().forget();
        cut.map(drop)
    }

    /// As QEMU's `preallocate_inactivate`: the file goes back to its data
    /// before another process takes it; activation starts afresh from the
    /// file's length then.
    async fn inactivate(&self) -> BlockResult<()> {
        self.close().await
    }

    /// QEMU's `preallocate_child_perm`: the default, plus write and resize
    /// taken and not shared while the users may write and resize, or while
    /// a preallocation is still to be dropped.
    fn child_perm(
        &self,
        child: &NodeChild,
        writable: bool,
        perm: Perm,
        shared: Perm,
    ) -> (Perm, Perm) {
        let (child_perm, child_shared) = default_child_perms(child.flags(), writable, perm, shared);
        if can_write_resize(perm) || self.inner.ends().holds_preallocation() {
            (child_perm | WRITE_RESIZE, child_shared & !WRITE_RESIZE)
        } else {
            (child_perm, child_shared)
        }
    }

    /// Takes control of the file's ends when the users may write and
    /// resize; when they give that up, forgets them at once if nothing
    /// was preallocated, else has the preallocation dropped.
    fn set_perm(&self, perm: Perm, _shared: Perm) {
        let mut ends = self.inner.ends();
        if can_write_resize(perm) {
            ends.dropping = false;
            if ends.data_end.is_none() {
                ends.start_at(self.inner.file.size());
            }
        } else if !ends.holds_preallocation() {
            ends.forget();
        } else if !ends.dropping {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                // No runtime to drop it in: close does it.
                return;
            };
            ends.dropping = true;
            runtime.spawn(self.inner.clone().drop_preallocation());
        }
    }
}

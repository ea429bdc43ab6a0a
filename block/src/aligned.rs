//! Zero-filled heap buffers with a chosen alignment, for `O_DIRECT`
//! bounce buffers and for payloads that the kernel copies into and out of
//! the page cache (as the memory of an [`crate::IoBuf`]): a copy between
//! a page and a buffer that starts off a page boundary is slower.
//!
//! Large buffers are mappings of their own, which the kernel zeroes as
//! they are first touched; they may be asked for on a huge-page boundary
//! ([`AlignedBuf::huge`]), which the kernel may then back with
//! transparent huge pages: where it copies into such a buffer page by page
//! (a FUSE request read from `/dev/fuse` pins each page of the reader's
//! buffer in turn), each page then costs it less.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoMemory;

/// A zeroed buffer whose start is aligned to a power of two.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

/// Where an [`AlignedBuf`]'s memory comes from.
enum Backing {
    /// The global allocator, with this layout.
    Heap(Layout),
    /// A mapping of this many bytes at `ptr`.
    Map(usize),
}

/// The size of a transparent huge page on x86-64 and arm64 (4 KiB base
/// pages), the alignment of [`AlignedBuf::huge`] buffers.
pub const HUGE_PAGE: usize = 2 << 20;

/// The base page size on x86-64 and arm64 (Linux's default there).
pub const PAGE: usize = 4096;

/// Page-aligned buffers of at least this size are mappings of their own
/// (see [`AlignedBuf::zeroed`]).
const MAP_FROM: usize = 256 << 10;

// SAFETY: the buffer is plain owned memory, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read the memory.
unsafe impl Sync for AlignedBuf {}

// SAFETY: the memory is a heap allocation owned by the value: it stays at
// `ptr` for `len` bytes until the value is dropped, whatever moves it.
unsafe impl IoMemory for AlignedBuf {
    fn io_memory(&mut self) -> (*mut u8, usize) {
        (self.ptr.as_ptr(), self.len)
    }
}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align` (a power of two). Fails with
    /// `TooLarge` if the memory cannot be had.
    ///
    /// From [`MAP_FROM`] bytes up, page-aligned buffers are mappings of
    /// their own: the kernel hands their pages out zeroed as they are
    /// first touched, where the allocator's memory would be written with
    /// zeroes first (at the size of payload buffers, a pass over memory
    /// that the first request into the buffer overwrites anyway).
    pub fn zeroed(len: usize, align: usize) -> BlockResult<Self> {
        if len >= MAP_FROM && align <= PAGE {
            return Self::mapped(len, PAGE);
        }
        let too_large = || {
            BlockError::new(
                ErrorKind::TooLarge,
                format!("Cannot allocate a {len} byte buffer"),
            )
        };
        let layout = Layout::from_size_align(len.max(1), align).map_err(|_| too_large())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(too_large)?;
        Ok(AlignedBuf {
            ptr,
            len,
            backing: Backing::Heap(layout),
        })
    }

    /// `len` zero bytes in an anonymous mapping of their own that starts
    /// on a [`HUGE_PAGE`] boundary and spans whole huge pages, offered to
    /// the kernel for transparent huge pages (`MADV_HUGEPAGE`; where it
    /// does not use them, only the pages touched take memory). Fails
    /// with `TooLarge` if the memory cannot be had.
    pub fn huge(len: usize) -> BlockResult<Self> {
        Self::mapped(len, HUGE_PAGE)
    }

    /// `len` zero bytes in an anonymous mapping of their own that starts
    /// on a `boundary` (a power-of-two multiple of the page size) and
    /// spans whole multiples of it; huge-page boundaries are offered to
    /// the kernel for transparent huge pages.
    fn mapped(len: usize, boundary: usize) -> BlockResult<Self> {
        let too_large = |e: std::io::Error| {
            BlockError::new(
                ErrorKind::TooLarge,
                format!("Cannot map a {len} byte buffer: {e}"),
            )
        };
        let map_len = len
            .max(1)
            .checked_next_multiple_of(boundary)
            .ok_or_else(|| too_large(std::io::ErrorKind::OutOfMemory.into()))?;
        // Room to move the start to the boundary (mappings start on a page).
        let reserve = map_len + (boundary - PAGE);
        // SAFETY: a new private anonymous mapping; no existing memory is
        // touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(too_large(std::io::Error::last_os_error()));
        }
        let head = (boundary - base as usize % boundary) % boundary;
        let tail = reserve - head - map_len;
        // SAFETY: `base` starts a fresh mapping of `reserve` bytes;
        // `[head, head + map_len)` stays mapped, and only the parts
        // before and after it (page multiples, since `base` and
        // `boundary` are) are unmapped. madvise only advises.
        let start = unsafe {
            let start = base.cast::<u8>().add(head);
            if head > 0 {
                libc::munmap(base, head);
            }
            if tail > 0 {
                libc::munmap(start.add(map_len).cast(), tail);
            }
            if boundary >= HUGE_PAGE {
                libc::madvise(start.cast(), map_len, libc::MADV_HUGEPAGE);
            }
            start
        };
        let ptr = NonNull::new(start).ok_or_else(|| too_large(std::io::ErrorKind::Other.into()))?;
        Ok(AlignedBuf {
            ptr,
            len,
            backing: Backing::Map(map_len),
        })
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` owns at least `len` initialized (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match self.backing {
            // SAFETY: allocated in `zeroed` with this very layout.
            Backing::Heap(layout) => unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) },
            // SAFETY: mapped in `mapped` with this length, and no view of
            // it outlives the value.
            Backing::Map(map_len) => unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), map_len);
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for align in [512, 4096] {
            let mut buf = AlignedBuf::zeroed(3 * align, align).expect("alloc");
            assert_eq!(buf.as_ptr() as usize % align, 0);
            assert!(buf.iter().all(|&b| b == 0));
            buf[5] = 7;
            assert_eq!(buf[5], 7);
        }
    }

    #[test]
    fn large_buffers_are_mappings_on_a_page_and_zeroed() {
        for len in [MAP_FROM, MAP_FROM + 1, 3 * MAP_FROM] {
            let mut buf = AlignedBuf::zeroed(len, 4096).expect("map");
            assert!(matches!(buf.backing, Backing::Map(n) if n >= len && n % PAGE == 0));
            assert_eq!(buf.as_ptr() as usize % PAGE, 0);
            assert!(buf.iter().all(|&b| b == 0));
            buf[len - 1] = 7;
            assert_eq!(buf[len - 1], 7);
        }
    }

    #[test]
    fn huge_buffers_start_on_a_huge_page_and_are_zeroed() {
        for len in [1, HUGE_PAGE, HUGE_PAGE + 1] {
            let mut buf = AlignedBuf::huge(len).expect("map");
            assert_eq!(buf.as_ptr() as usize % HUGE_PAGE, 0);
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&b| b == 0));
            buf[len - 1] = 7;
            assert_eq!(buf[len - 1], 7);
        }
    }
}

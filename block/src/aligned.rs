//! Zero-filled heap buffers with a chosen alignment, for `O_DIRECT`
//! bounce buffers and for payloads that the kernel copies into and out of
//! the page cache (as the memory of an [`crate::IoBuf`]): a copy between
//! a page and a buffer that starts off a page boundary is slower.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoMemory;

/// A zeroed buffer whose start is aligned to a power of two.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

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
    pub fn zeroed(len: usize, align: usize) -> BlockResult<Self> {
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
        Ok(AlignedBuf { ptr, len, layout })
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
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
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
}

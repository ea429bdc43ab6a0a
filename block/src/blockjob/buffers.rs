//! The copy buffers of one job, reused and page-aligned. A job copies the
//! same sizes over and over: a fresh large buffer per copy costs a page
//! fault per page (and zeroing) each time. And where a buffer starts
//! matters to the kernel's copies into and out of the page cache: a
//! buffer that is not page-aligned made a 1 GiB mirror twice as slow in
//! about half the runs (the copy into tmpfs pages ran at half speed).
//! At most `MAX_KEPT` buffers are kept.

use std::sync::Mutex;

use crate::aligned::AlignedBuf;
use crate::error::BlockResult;
use crate::iobuf::IoBuf;

/// Buffers kept for reuse (a job has at most this many copies in flight).
const MAX_KEPT: usize = 16;

/// Where buffers start.
const ALIGN: usize = 4096;

#[derive(Default)]
pub(crate) struct CopyBuffers {
    free: Mutex<Vec<AlignedBuf>>,
}

impl CopyBuffers {
    fn free(&self) -> std::sync::MutexGuard<'_, Vec<AlignedBuf>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `len` bytes; its contents are whatever a previous copy
    /// left (the copy reads over all of it).
    pub(crate) fn take(&self, len: usize) -> BlockResult<IoBuf> {
        let reused = {
            let mut free = self.free();
            let fits = free.iter().position(|buf| buf.len() >= len);
            fits.map(|index| free.swap_remove(index))
        };
        let buf = match reused {
            Some(buf) => buf,
            None => AlignedBuf::zeroed(len, ALIGN)?,
        };
        Ok(IoBuf::from_owner(buf).slice(0..len))
    }

    /// Gives a buffer from [`CopyBuffers::take`] back.
    pub(crate) fn give(&self, buf: IoBuf) {
        if let Ok(buf) = buf.into_owner::<AlignedBuf>() {
            let mut free = self.free();
            if free.len() < MAX_KEPT {
                free.push(buf);
            }
        }
    }
}

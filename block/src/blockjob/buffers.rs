//! The copy buffers of one job, reused: a job copies the same sizes over
//! and over, and a fresh large buffer per copy costs a page fault per
//! page (and zeroing) each time. At most `MAX_KEPT` buffers are kept.

use std::sync::Mutex;

use crate::iobuf::IoBuf;

/// Buffers kept for reuse (a job has at most this many copies in flight).
const MAX_KEPT: usize = 16;

#[derive(Default)]
pub(crate) struct CopyBuffers {
    free: Mutex<Vec<Vec<u8>>>,
}

impl CopyBuffers {
    /// A buffer of `len` bytes; its contents are whatever a previous copy
    /// left (the copy reads over all of it).
    pub(crate) fn take(&self, len: usize) -> IoBuf {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut vec = reused.unwrap_or_default();
        vec.resize(len, 0);
        IoBuf::from_vec(vec)
    }

    /// Gives a buffer from [`CopyBuffers::take`] back.
    pub(crate) fn give(&self, buf: IoBuf) {
        let vec = buf.into_vec();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < MAX_KEPT {
            free.push(vec);
        }
    }
}

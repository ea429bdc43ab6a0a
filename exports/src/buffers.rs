//! Reusable payload buffers for one connection or export.
//!
//! Read replies and write payloads need a buffer of up to the maximum
//! payload size per request. Allocating (and zeroing) those per request
//! costs more than the I/O for small requests and page faults for large
//! ones, so buffers return to a per-connection pool when their reply has
//! been written. The pool is bounded per size class.

use std::sync::{Arc, Mutex};

use block::IoMemory;

/// The smallest buffer handed out; smaller requests round up to it.
const MIN_CLASS_SHIFT: u32 = 12;
/// The largest pooled size class (32 MiB, the maximum payload).
const MAX_CLASS_SHIFT: u32 = 25;
const CLASS_COUNT: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
/// Bytes a size class may keep idle.
const MAX_IDLE_BYTES_PER_CLASS: usize = 16 << 20;
/// Buffers a size class may keep idle, whatever their size.
const MAX_IDLE_BUFFERS_PER_CLASS: usize = 256;

/// A pool of zero-initialised byte buffers, one stack per power-of-two class.
#[derive(Default)]
pub struct BufferPool {
    classes: Mutex<[Vec<Vec<u8>>; CLASS_COUNT]>,
}

impl BufferPool {
    pub fn new() -> Arc<BufferPool> {
        Arc::new(BufferPool::default())
    }

    /// A buffer whose `as_mut()` is exactly `len` bytes long. The contents
    /// are unspecified (old data of this connection or zeroes).
    pub fn get(self: &Arc<Self>, len: usize) -> Buffer {
        let vec = match class_of(len) {
            Some(class) => {
                let reused = self.lock()[class].pop();
                reused.unwrap_or_else(|| vec![0; class_size(class)])
            }
            None => vec![0; len],
        };
        Buffer {
            vec,
            len,
            pool: Arc::clone(self),
        }
    }

    fn put(&self, vec: Vec<u8>) {
        let Some(class) = class_of(vec.len()).filter(|&c| class_size(c) == vec.len()) else {
            return;
        };
        let limit = (MAX_IDLE_BYTES_PER_CLASS / vec.len()).clamp(1, MAX_IDLE_BUFFERS_PER_CLASS);
        let mut classes = self.lock();
        if classes[class].len() < limit {
            classes[class].push(vec);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Vec<Vec<u8>>; CLASS_COUNT]> {
        // A panic while holding this lock cannot leave the stacks invalid.
        self.classes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn class_of(len: usize) -> Option<usize> {
    let shift = len
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_CLASS_SHIFT);
    (shift <= MAX_CLASS_SHIFT).then(|| (shift - MIN_CLASS_SHIFT) as usize)
}

fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_CLASS_SHIFT)
}

/// A buffer on loan from a [`BufferPool`]; it goes back when dropped.
pub struct Buffer {
    vec: Vec<u8>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl Buffer {
    pub fn len(&self) -> usize {
        self.len
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.vec[..self.len]
    }
}

impl AsMut<[u8]> for Buffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.vec[..self.len]
    }
}

// SAFETY: the memory is the vector's heap buffer, which stays where it is
// while the `Buffer` moves; the vector is neither grown nor touched by
// anything else while the `Buffer` is inside an `IoBuf`.
unsafe impl IoMemory for Buffer {
    fn io_memory(&mut self) -> (*mut u8, usize) {
        (self.vec.as_mut_ptr(), self.len)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.vec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_class() {
        let pool = BufferPool::new();
        let mut first = pool.get(1000);
        assert_eq!(first.len(), 1000);
        first.as_mut()[0] = 42;
        let ptr = first.as_ref().as_ptr();
        drop(first);
        let second = pool.get(4096);
        assert_eq!(second.as_ref().as_ptr(), ptr);
        assert_eq!(second.len(), 4096);
        let other = pool.get(4097);
        assert_ne!(other.as_ref().as_ptr(), ptr);
        assert_eq!(other.len(), 4097);
    }

    #[test]
    fn oversized_buffers_are_not_pooled() {
        let pool = BufferPool::new();
        let big = pool.get((32 << 20) + 1);
        assert_eq!(big.len(), (32 << 20) + 1);
        drop(big);
        assert!(pool.lock().iter().all(|class| class.is_empty()));
    }
}

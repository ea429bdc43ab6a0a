//! [`IoBuf`]: the one buffer type of the I/O path, from an export through
//! [`crate::BlockBackend`], [`crate::Node`] and every driver to the
//! system call.
//!
//! An `IoBuf` is a list of segments of memory, each kept alive by an owner
//! (`Send + 'static`): a `Vec<u8>`, an export's pooled buffer, an aligned
//! bounce buffer, and later a virtqueue's guest memory. Views are cheap to
//! clone and to slice, so a driver can hand a request's buffer to a thread
//! pool and let go of it even if its caller gives up: the memory lives as
//! long as the last view.
//!
//! The memory behind an `IoBuf` is I/O memory, as guest memory is for a
//! device: it is shared by every view and may change under them (the
//! kernel writes into it, a guest may write into its own pages). It is
//! therefore never read or written through Rust references while views
//! exist, only by raw copies ([`IoBuf::copy_from_slice`],
//! [`IoBuf::copy_to_slice`], [`IoBuf::fill_zeroes`], ...) and by the
//! kernel through [`IoBuf::iovecs`]. Two requests writing the same memory
//! at once is a caller's logic error that leaves its bytes unspecified,
//! never a memory-safety fault. Memory comes in through one audited
//! place, the [`IoMemory`] trait; the owner is given back
//! ([`IoBuf::into_owner`]) only when no other view is left.

use std::any::Any;
use std::ops::Range;
use std::sync::Arc;

use smallvec::SmallVec;

/// Memory an [`IoBuf`] can point into.
///
/// # Safety
///
/// `io_memory` must return a pointer valid for reads and writes of `len`
/// bytes for as long as the value lives, the same each time it is called,
/// and the memory must not move when the value is moved. While the value
/// is inside an `IoBuf`, nothing may access the memory through a Rust
/// reference (the value is only reachable again through
/// [`IoBuf::into_owner`], once no view is left).
pub unsafe trait IoMemory: Any + Send + Sync {
    /// The memory: its start and length.
    fn io_memory(&mut self) -> (*mut u8, usize);
}

// SAFETY: a Vec's heap buffer does not move when the Vec moves, and the
// pointer comes from `as_mut_ptr`, which materializes no reference.
unsafe impl IoMemory for Vec<u8> {
    fn io_memory(&mut self) -> (*mut u8, usize) {
        (self.as_mut_ptr(), self.len())
    }
}

/// What keeps a segment's memory alive.
type Owner = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
struct Segment {
    ptr: *mut u8,
    len: usize,
    owner: Owner,
}

/// A request's data: segments of I/O memory, read and written by copies
/// and by the kernel. Cheap to clone (a clone is another view of the same
/// memory) and to slice.
#[derive(Clone)]
pub struct IoBuf {
    segments: SmallVec<[Segment; 2]>,
    len: usize,
}

// SAFETY: the segments' memory is owned by `Send + Sync` owners that keep
// it alive; it is only accessed by raw copies, never through references
// (see the module comment), so views may move to and be used from any
// thread.
unsafe impl Send for IoBuf {}
// SAFETY: as for `Send`: shared views only copy bytes in and out.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// A buffer over all of `owner`'s memory.
    pub fn from_owner<T: IoMemory>(mut owner: T) -> IoBuf {
        let (ptr, len) = owner.io_memory();
        let mut segments = SmallVec::new();
        segments.push(Segment {
            ptr,
            len,
            owner: Arc::new(owner),
        });
        IoBuf { segments, len }
    }

    /// A buffer over `len` bytes at `ptr` inside memory that `owner`
    /// keeps mapped, such as a guest's RAM, which many requests share:
    /// each segment clones the owner instead of allocating one.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes for as long
    /// as `owner` lives, and that memory must be I/O memory in the sense
    /// of [`IoMemory`]: nothing in this process reads or writes it through
    /// a Rust reference while `owner` lives (other parties, such as the
    /// guest, may change it at any time).
    pub unsafe fn from_shared(
        owner: Arc<dyn Any + Send + Sync>,
        ptr: *mut u8,
        len: usize,
    ) -> IoBuf {
        let mut segments = SmallVec::new();
        segments.push(Segment { ptr, len, owner });
        IoBuf { segments, len }
    }

    /// A buffer over `vec`'s bytes.
    pub fn from_vec(vec: Vec<u8>) -> IoBuf {
        IoBuf::from_owner(vec)
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> IoBuf {
        IoBuf::from_vec(vec![0; len])
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> IoBuf {
        IoBuf::from_vec(bytes.to_vec())
    }

    /// An empty buffer.
    pub fn empty() -> IoBuf {
        IoBuf {
            segments: SmallVec::new(),
            len: 0,
        }
    }

    /// The buffers one after the other, as one buffer (no copy).
    pub fn concat(parts: impl IntoIterator<Item = IoBuf>) -> IoBuf {
        let mut all = IoBuf::empty();
        for part in parts {
            all.len += part.len;
            all.segments.extend(part.segments);
        }
        all
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many segments the memory is in.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The owner, if this is the last view of it and covers one segment.
    /// Otherwise the buffer comes back unchanged.
    pub fn into_owner<T: Any + Send + Sync>(mut self) -> Result<T, IoBuf> {
        if self.segments.len() != 1 || !self.segments[0].owner.is::<T>() {
            return Err(self);
        }
        let segment = self.segments.pop().expect("one segment");
        let owner = Arc::downcast::<T>(segment.owner).expect("type checked above");
        Arc::try_unwrap(owner).map_err(|owner| {
            self.segments.push(Segment {
                ptr: segment.ptr,
                len: segment.len,
                owner,
            });
            self
        })
    }

    /// The bytes as a vector: the owner itself when this is the last view
    /// of a whole `Vec`, else a copy.
    pub fn into_vec(self) -> Vec<u8> {
        let whole_vec = self.segments.len() == 1 && {
            let segment = &self.segments[0];
            segment
                .owner
                .downcast_ref::<Vec<u8>>()
                .is_some_and(|v| v.as_ptr() == segment.ptr.cast_const() && v.len() == segment.len)
        };
        if whole_vec {
            match self.into_owner::<Vec<u8>>() {
                Ok(vec) => return vec,
                Err(buf) => return buf.to_vec(),
            }
        }
        self.to_vec()
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        self.copy_to_slice(0, &mut out);
        out
    }

    /// The view of bytes `range` (no copy). Panics if the range is not
    /// within the buffer.
    pub fn slice(&self, range: Range<usize>) -> IoBuf {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "slice {range:?} of an IoBuf of {} bytes",
            self.len
        );
        let mut segments = SmallVec::new();
        self.visit(range.clone(), |segment, at, len| {
            segments.push(Segment {
                // SAFETY: `at + len` is within the segment (`visit`).
                ptr: unsafe { segment.ptr.add(at) },
                len,
                owner: segment.owner.clone(),
            });
        });
        IoBuf {
            segments,
            len: range.len(),
        }
    }

    /// Copies `src` into the buffer at byte `at`.
    pub fn copy_from_slice(&self, at: usize, src: &[u8]) {
        let mut done = 0;
        self.visit(at..at + src.len(), |segment, offset, len| {
            // SAFETY: the segment's memory is valid for `offset + len`
            // bytes (`visit`), and `src` is a Rust slice, which cannot
            // overlap memory no reference points to.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr().add(done), segment.ptr.add(offset), len)
            };
            done += len;
        });
    }

    /// Copies the buffer's bytes from `at` into `dst`.
    pub fn copy_to_slice(&self, at: usize, dst: &mut [u8]) {
        let mut done = 0;
        self.visit(at..at + dst.len(), |segment, offset, len| {
            // SAFETY: as in `copy_from_slice`, the other way round.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    segment.ptr.add(offset),
                    dst.as_mut_ptr().add(done),
                    len,
                )
            };
            done += len;
        });
    }

    /// Copies all of `src` into this buffer at byte `at`.
    pub fn copy_from(&self, at: usize, src: &IoBuf) {
        let mut done = 0;
        for from in &src.segments {
            let mut taken = 0;
            self.visit(at + done..at + done + from.len, |to, offset, len| {
                // SAFETY: both ranges are within their segments (`visit`
                // stays within `from.len` in total); `copy` allows them to
                // overlap (two views of one memory).
                unsafe { std::ptr::copy(from.ptr.add(taken), to.ptr.add(offset), len) };
                taken += len;
            });
            done += from.len;
        }
    }

    /// Sets every byte to zero.
    pub fn fill_zeroes(&self) {
        self.visit(0..self.len, |segment, offset, len| {
            // SAFETY: the range is within the segment (`visit`).
            unsafe { std::ptr::write_bytes(segment.ptr.add(offset), 0, len) };
        });
    }

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.segments.iter().all(|segment| {
            // SAFETY: the segment's memory is valid for `len` bytes; the
            // slice lives only for the check and nothing writes through a
            // reference meanwhile (writers copy by pointer; a concurrent
            // writer is a logic error whose result here is unspecified).
            let bytes = unsafe { std::slice::from_raw_parts(segment.ptr, segment.len) };
            crate::node::buffer_is_zero(bytes)
        })
    }

    /// The segments as `iovec`s, for vectored system calls.
    pub fn iovecs(&self) -> SmallVec<[libc::iovec; 4]> {
        self.segments
            .iter()
            .filter(|s| s.len > 0)
            .map(|s| libc::iovec {
                iov_base: s.ptr.cast(),
                iov_len: s.len,
            })
            .collect()
    }

    /// Whether every segment starts at a multiple of `memory` and has a
    /// length that is a multiple of `length` (what `O_DIRECT` needs).
    pub fn is_aligned(&self, memory: usize, length: usize) -> bool {
        self.segments
            .iter()
            .all(|s| (s.ptr as usize).is_multiple_of(memory) && s.len.is_multiple_of(length))
    }

    /// Calls `f(segment, offset in segment, length)` for each piece of
    /// `range`, in order. Panics if the range is not within the buffer.
    fn visit(&self, range: Range<usize>, mut f: impl FnMut(&Segment, usize, usize)) {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} of an IoBuf of {} bytes",
            self.len
        );
        let mut start = 0;
        for segment in &self.segments {
            let end = start + segment.len;
            let from = range.start.max(start);
            let to = range.end.min(end);
            if from < to {
                f(segment, from - start, to - from);
            }
            if end >= range.end {
                break;
            }
            start = end;
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("segments", &self.segments.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn slices_and_concatenations_copy_the_right_bytes() {
        let a = IoBuf::copy_of(&pattern(100));
        let b = IoBuf::zeroed(50);
        let joined = IoBuf::concat([a.slice(10..60), b.clone(), a.slice(0..5)]);
        assert_eq!(joined.len(), 105);
        assert_eq!(joined.segment_count(), 3);
        let expected: Vec<u8> = pattern(100)[10..60]
            .iter()
            .chain(&[0u8; 50])
            .chain(&pattern(100)[..5])
            .copied()
            .collect();
        assert_eq!(joined.to_vec(), expected);
        // Writing through a slice of the joined view reaches `b`.
        joined.slice(50..100).copy_from_slice(3, &[7, 8, 9]);
        assert_eq!(&b.to_vec()[3..6], &[7, 8, 9]);
        let mut out = [0u8; 4];
        joined.copy_to_slice(48, &mut out);
        assert_eq!(out, [58, 59, 0, 0]);
    }

    #[test]
    fn copy_from_crosses_segments_both_sides() {
        let src = IoBuf::concat([IoBuf::copy_of(&[1, 2, 3]), IoBuf::copy_of(&[4, 5])]);
        let dst = IoBuf::concat([IoBuf::zeroed(2), IoBuf::zeroed(2), IoBuf::zeroed(3)]);
        dst.copy_from(1, &src);
        assert_eq!(dst.to_vec(), [0, 1, 2, 3, 4, 5, 0]);
    }

    #[test]
    fn zeroes_are_found_and_made() {
        let buf = IoBuf::concat([IoBuf::zeroed(4096), IoBuf::copy_of(&[0, 0, 1])]);
        assert!(!buf.is_zero());
        assert!(buf.slice(0..4098).is_zero());
        buf.fill_zeroes();
        assert!(buf.is_zero());
        assert!(IoBuf::empty().is_zero());
    }

    #[test]
    fn the_owner_comes_back_only_from_its_last_view() {
        let buf = IoBuf::from_vec(pattern(10));
        let other = buf.clone();
        let buf = buf
            .into_owner::<Vec<u8>>()
            .expect_err("another view is alive");
        drop(other);
        assert!(buf.clone().into_owner::<String>().is_err());
        let vec = buf.into_owner::<Vec<u8>>().expect("last view");
        assert_eq!(vec, pattern(10));
        // A slice of a vector is copied out, its owner stays whole.
        let part = IoBuf::from_vec(pattern(10)).slice(2..4).into_vec();
        assert_eq!(part, [2, 3]);
    }

    #[test]
    fn iovecs_and_alignment_describe_the_segments() {
        let buf = IoBuf::concat([IoBuf::zeroed(8), IoBuf::empty(), IoBuf::zeroed(4)]);
        let iovecs = buf.iovecs();
        assert_eq!(iovecs.len(), 2);
        assert_eq!(iovecs[0].iov_len + iovecs[1].iov_len, 12);
        assert!(buf.is_aligned(1, 4));
        assert!(!buf.is_aligned(1, 8));
    }

    #[test]
    #[should_panic(expected = "slice")]
    fn slices_past_the_end_are_refused() {
        IoBuf::zeroed(4).slice(2..5);
    }
}

//! Reusable payload buffers for one connection or export.
//!
//! Read replies and write payloads need a buffer of up to the maximum
//! payload size per request. Allocating (and zeroing) those per request
//! costs more than the I/O for small requests and page faults for large
//! ones, so buffers return to a per-connection pool when their reply has
//! been written.
//!
//! What pools keep idle is bounded three ways: per size class, per pool
//! ([`MAX_IDLE_BYTES_PER_POOL`] unless its owner needs more to keep a deep
//! queue of large requests from allocating, [`BufferPool::with_idle_limit`])
//! and for the whole daemon
//! ([`MAX_IDLE_BYTES_TOTAL`]), whatever the number of connections. A
//! pool that served nothing for a second gives its idle buffers back (a
//! sweeper thread looks once a second). A pool that is dropped leaves its
//! idle buffers to the next pools (a client that connects again, or
//! opens its connections one after another, finds memory that is already
//! mapped), and what no pool took by the next sweep is given back; large
//! buffers are their own memory mappings (see [`tune_allocator`];
//! from 2 MiB up, mappings on a huge-page boundary that the kernel may
//! back with transparent huge pages: `AlignedBuf::huge`), so what is
//! given back leaves the process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::Duration;

use block::{AlignedBuf, IoMemory, HUGE_PAGE, PAGE};

/// The smallest buffer handed out; smaller requests round up to it.
const MIN_CLASS_SHIFT: u32 = 12;
/// The largest pooled size class (32 MiB, the maximum payload).
const MAX_CLASS_SHIFT: u32 = 25;
const CLASS_COUNT: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
/// Buffers a size class may keep idle, whatever their size.
const MAX_IDLE_BUFFERS_PER_CLASS: usize = 256;
/// Bytes one pool may keep idle, all classes together.
pub const MAX_IDLE_BYTES_PER_POOL: usize = 16 << 20;
/// Bytes all pools of the daemon may keep idle together.
pub const MAX_IDLE_BYTES_TOTAL: usize = 64 << 20;
/// A pool that served nothing for this long gives its idle buffers back.
const IDLE_RELEASE_AFTER: Duration = Duration::from_secs(1);
/// Allocations at least this large are memory mappings of their own,
/// returned to the system when freed.
const MMAP_THRESHOLD: usize = 256 << 10;

/// Idle bytes in all pools.
static IDLE_BYTES_TOTAL: AtomicUsize = AtomicUsize::new(0);

/// Every live pool, for the sweeper.
static POOLS: Mutex<Vec<Weak<BufferPool>>> = Mutex::new(Vec::new());

/// The idle buffers of dropped pools, for any pool to take; counted in
/// [`IDLE_BYTES_TOTAL`].
static ORPHANS: Mutex<Idle> = Mutex::new(Idle::EMPTY);
/// Set when a buffer goes into or out of [`ORPHANS`]; the sweeper clears
/// it, and releases the orphans it finds cleared.
static ORPHANS_USED: AtomicBool = AtomicBool::new(false);

/// Makes glibc serve large allocations (payload buffers) with memory
/// mappings of their own, always: its default raises that threshold
/// after the first large buffer is freed, and the memory of later ones
/// then stays in the heap after they are freed. Called once at start.
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
}

/// A pool of zero-initialised byte buffers, one stack per power-of-two class.
pub struct BufferPool {
    idle: Mutex<Idle>,
    /// Bytes this pool may keep idle, all classes together.
    max_idle_bytes: usize,
    /// Set by every loan; the sweeper clears it, and releases the idle
    /// buffers of a pool it finds cleared.
    used: AtomicBool,
}

#[derive(Default)]
struct Idle {
    classes: [Vec<AlignedBuf>; CLASS_COUNT],
    bytes: usize,
}

impl Idle {
    const EMPTY: Idle = Idle {
        classes: [const { Vec::new() }; CLASS_COUNT],
        bytes: 0,
    };

    fn pop(&mut self, class: usize) -> Option<AlignedBuf> {
        let vec = self.classes[class].pop()?;
        self.bytes -= vec.len();
        Some(vec)
    }

    /// Moves every buffer of `other` here.
    fn absorb(&mut self, other: Idle) {
        for (mine, theirs) in self.classes.iter_mut().zip(other.classes) {
            mine.extend(theirs);
        }
        self.bytes += other.bytes;
    }
}

impl BufferPool {
    pub fn new() -> Arc<BufferPool> {
        BufferPool::with_idle_limit(MAX_IDLE_BYTES_PER_POOL)
    }

    /// A pool that may keep `max_idle_bytes` idle (still within the
    /// daemon's [`MAX_IDLE_BYTES_TOTAL`]).
    pub fn with_idle_limit(max_idle_bytes: usize) -> Arc<BufferPool> {
        let pool = Arc::new(BufferPool {
            idle: Mutex::default(),
            max_idle_bytes,
            used: AtomicBool::new(false),
        });
        lock(&POOLS).push(Arc::downgrade(&pool));
        start_sweeper();
        pool
    }

    /// A buffer whose `as_mut()` is exactly `len` bytes long. The contents
    /// are unspecified (old data of this connection or zeroes).
    pub fn get(self: &Arc<Self>, len: usize) -> Buffer {
        self.used.store(true, Ordering::Relaxed);
        let memory = match class_of(len) {
            Some(class) => self
                .take(class)
                .unwrap_or_else(|| page_aligned(class_size(class))),
            None => page_aligned(len),
        };
        Buffer {
            memory: Some(memory),
            len,
            pool: Arc::clone(self),
        }
    }

    /// An idle buffer of `class`: this pool's own, else a dropped pool's.
    fn take(&self, class: usize) -> Option<AlignedBuf> {
        let own = lock(&self.idle).pop(class);
        let vec = match own {
            Some(vec) => vec,
            None => {
                let vec = lock(&ORPHANS).pop(class)?;
                ORPHANS_USED.store(true, Ordering::Relaxed);
                vec
            }
        };
        IDLE_BYTES_TOTAL.fetch_sub(vec.len(), Ordering::Relaxed);
        Some(vec)
    }

    fn put(&self, vec: AlignedBuf) {
        let Some(class) = class_of(vec.len()).filter(|&c| class_size(c) == vec.len()) else {
            return;
        };
        let len = vec.len();
        let mut idle = lock(&self.idle);
        if idle.classes[class].len() >= MAX_IDLE_BUFFERS_PER_CLASS
            || idle.bytes + len > self.max_idle_bytes
        {
            return;
        }
        // A live pool's buffers come before those nobody holds: if the
        // daemon's share is used up, the orphans make room.
        if reserve_idle(len) || (release_orphans() > 0 && reserve_idle(len)) {
            idle.bytes += len;
            idle.classes[class].push(vec);
        }
    }

    /// Frees every idle buffer; returns how many bytes.
    fn release_idle(&self) -> usize {
        let released = std::mem::take(&mut *lock(&self.idle));
        IDLE_BYTES_TOTAL.fetch_sub(released.bytes, Ordering::Relaxed);
        released.bytes
    }

    /// Bytes this pool keeps idle.
    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        lock(&self.idle).bytes
    }
}

impl Drop for BufferPool {
    /// Leaves the idle buffers to other pools until the next sweep (they
    /// stay within [`IDLE_BYTES_TOTAL`], where they were already counted).
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        if idle.bytes > 0 {
            lock(&ORPHANS).absorb(idle);
            ORPHANS_USED.store(true, Ordering::Relaxed);
        }
    }
}

/// Starts the thread that gives back the idle buffers of unused pools.
fn start_sweeper() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("buffer sweeper".into())
            .spawn(|| loop {
                std::thread::sleep(IDLE_RELEASE_AFTER);
                sweep();
            });
        if let Err(e) = spawned {
            tracing::warn!("idle buffers will not be released: {e}");
        }
    });
}

/// Releases the idle buffers of every pool unused since the last sweep,
/// and the orphans if no pool took or left any since then; forgets
/// dropped pools.
fn sweep() {
    let pools: Vec<Arc<BufferPool>> = {
        let mut pools = lock(&POOLS);
        pools.retain(|pool| pool.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    };
    let mut released = 0;
    for pool in pools {
        if !pool.used.swap(false, Ordering::Relaxed) {
            released += pool.release_idle();
        }
    }
    if !ORPHANS_USED.swap(false, Ordering::Relaxed) {
        released += release_orphans();
    }
    if released > 0 {
        // Small buffers live in the heap: give its free top back too.
        // SAFETY: malloc_trim only returns free heap memory to the system.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Counts `len` more idle bytes if the daemon's share has room for them.
fn reserve_idle(len: usize) -> bool {
    IDLE_BYTES_TOTAL
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
            (total + len <= MAX_IDLE_BYTES_TOTAL).then_some(total + len)
        })
        .is_ok()
}

/// Frees the orphans; returns how many bytes.
fn release_orphans() -> usize {
    let orphans = std::mem::take(&mut *lock(&ORPHANS));
    IDLE_BYTES_TOTAL.fetch_sub(orphans.bytes, Ordering::Relaxed);
    orphans.bytes
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave their data invalid.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Zeroed memory of `len` bytes starting on a page: the kernel copies
/// payloads into and out of the page cache faster from there (a buffer
/// 16 bytes off a page, where glibc puts large allocations, halved the
/// speed of such copies in a job's measurements).
fn page_aligned(len: usize) -> AlignedBuf {
    let buf = if len >= HUGE_PAGE {
        AlignedBuf::huge(len)
    } else {
        AlignedBuf::zeroed(len, PAGE)
    };
    buf.unwrap_or_else(|_| {
        // As a `Vec` does when memory runs out.
        std::alloc::handle_alloc_error(
            std::alloc::Layout::from_size_align(len.max(1), PAGE)
                .unwrap_or(std::alloc::Layout::new::<u8>()),
        )
    })
}

/// A buffer on loan from a [`BufferPool`]; it goes back when dropped.
pub struct Buffer {
    /// Always `Some` until the buffer goes back in `drop`.
    memory: Option<AlignedBuf>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl Buffer {
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Buffer {
    fn memory(&self) -> &AlignedBuf {
        self.memory
            .as_ref()
            .expect("a loaned buffer has its memory")
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.memory()[..self.len]
    }
}

impl AsMut<[u8]> for Buffer {
    fn as_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self
            .memory
            .as_mut()
            .expect("a loaned buffer has its memory")[..len]
    }
}

// SAFETY: the memory is a heap allocation that stays where it is while
// the `Buffer` moves, and nothing else touches it while the `Buffer` is
// inside an `IoBuf`.
unsafe impl IoMemory for Buffer {
    fn io_memory(&mut self) -> (*mut u8, usize) {
        let len = self.len;
        (self.as_mut()[..len].as_mut_ptr(), len)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take() {
            self.pool.put(memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share the daemon-wide share and the orphans: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn orphan_bytes() -> usize {
        lock(&ORPHANS).bytes
    }

    #[test]
    fn buffers_are_reused_by_class() {
        let _serial = lock(&SERIAL);
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
        let _serial = lock(&SERIAL);
        let pool = BufferPool::new();
        let big = pool.get((32 << 20) + 1);
        assert_eq!(big.len(), (32 << 20) + 1);
        drop(big);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn a_pool_keeps_a_bounded_amount_idle_and_gives_it_back() {
        let _serial = lock(&SERIAL);
        let pool = BufferPool::new();
        let loans: Vec<Buffer> = (0..40).map(|_| pool.get(1 << 20)).collect();
        drop(loans);
        let kept = pool.idle_bytes();
        assert_eq!(kept, MAX_IDLE_BYTES_PER_POOL);
        assert_eq!(pool.release_idle(), kept);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn all_pools_together_keep_a_bounded_amount_idle() {
        let _serial = lock(&SERIAL);
        let pools: Vec<_> = (0..8).map(|_| BufferPool::new()).collect();
        for pool in &pools {
            let loans: Vec<Buffer> = (0..16).map(|_| pool.get(1 << 20)).collect();
            drop(loans);
        }
        let kept: usize = pools.iter().map(|p| p.idle_bytes()).sum();
        assert!(kept <= MAX_IDLE_BYTES_TOTAL, "{kept}");
        drop(pools);
    }

    #[test]
    fn a_dropped_pools_buffers_serve_the_next_pool_until_two_sweeps_pass() {
        let _serial = lock(&SERIAL);
        let first = BufferPool::new();
        let buffer = first.get(512 << 10);
        let ptr = buffer.as_ref().as_ptr();
        drop(buffer);
        assert_eq!(first.idle_bytes(), 512 << 10);
        drop(first);
        assert!(orphan_bytes() >= 512 << 10);
        let second = BufferPool::new();
        let buffer = second.get(300 << 10);
        assert_eq!(buffer.as_ref().as_ptr(), ptr);
        drop(buffer);
        drop(second);
        // The first sweep finds the orphans used since the last one, the
        // second gives them back.
        sweep();
        sweep();
        assert_eq!(orphan_bytes(), 0);
    }

    #[test]
    fn orphans_make_room_for_a_live_pools_buffers() {
        let _serial = lock(&SERIAL);
        let pools: Vec<_> = (0..MAX_IDLE_BYTES_TOTAL / MAX_IDLE_BYTES_PER_POOL)
            .map(|_| BufferPool::new())
            .collect();
        for pool in &pools {
            let loans: Vec<Buffer> = (0..16).map(|_| pool.get(1 << 20)).collect();
            drop(loans);
        }
        drop(pools);
        assert_eq!(orphan_bytes(), MAX_IDLE_BYTES_TOTAL);
        let live = BufferPool::new();
        drop(live.get(8 << 20));
        assert_eq!(live.idle_bytes(), 8 << 20);
        assert_eq!(orphan_bytes(), 0);
        assert!(IDLE_BYTES_TOTAL.load(Ordering::Relaxed) <= MAX_IDLE_BYTES_TOTAL);
    }
}

//! The `file` protocol driver: a regular file on the host, as QEMU's
//! `file-posix`.
//!
//! Requests are positioned system calls on one descriptor. A read first
//! tries `preadv2(RWF_NOWAIT)` inline, which serves page-cache hits
//! without leaving the task; only a miss goes to the blocking pool
//! (`blocking`), with its own view of the request's buffer, so the thread
//! that polls never waits for a disk. Writes do the same with `pwritev2`
//! where the file system supports non-blocking buffered writes. On tmpfs
//! and ramfs, whose data is the page cache (no disk to wait for),
//! buffered I/O simply runs inline, and long writes take turns on a lock
//! of their own rather than spin on the inode's. The read side of a lock
//! serializes `O_DIRECT` read-modify-write cycles (`cache.direct` mode
//! only). Block status keeps QEMU's one-entry cache of the last data
//! range found, so sequential queries inside it skip the `lseek` calls.
//! With `cache.direct=on` the file is opened `O_DIRECT` and requests go
//! through `direct_io`. Image locks follow QEMU's scheme (`locking`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use schema::block::{BlockdevAioOptions, BlockdevOptionsFile, OnOffAuto};
use schema::info::{ImageInfoSpecific, ImageInfoSpecificFile};
use schema::stats::{BlockStatsSpecific, BlockStatsSpecificFile};
use serde_json::{Map, Value as Json};

use crate::aligned::AlignedBuf;
use crate::blocking::offload;
use crate::direct_io::{DirectError, DirectIo};
use crate::driver::{BlockDriver, DriverInfo, Extent, WriteFlags, ZeroFlags};
use crate::error::{os_error_text, BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::limits::Limits;
use crate::locking::ImageLocks;
use crate::node::{NodeSettings, ReadSource};
use crate::open::OpenContext;
use crate::permissions::Perm;
use crate::posix_io::{self, RwFlags};

/// The largest zero buffer written when the file system cannot zero a
/// range by itself.
const ZERO_CHUNK: usize = 1 << 20;

/// Buffered writes to a file in memory at least this long take their turn
/// (`FileDriver::write_turn`); shorter ones hold the inode's lock too
/// briefly for spinning on it to cost much.
const WRITE_TURN_MIN_LEN: usize = 64 << 10;
/// `statfs` magic numbers of file systems that live in memory.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A regular file opened as a block node.
pub struct FileDriver {
    /// Shared with the blocking calls in flight, which may outlive a
    /// request whose caller gave up.
    fd: Arc<OwnedFd>,
    filename: String,
    /// The size at open, grown by writes past it and set by resize (a
    /// format's image file grows as it allocates).
    size: AtomicU64,
    /// The file lives in memory (tmpfs, ramfs): buffered I/O never waits
    /// for a disk and runs inline.
    in_memory: bool,
    /// Held by each long buffered write to a file in memory while it runs.
    /// The kernel runs such writes one at a time anyway, on the inode's
    /// lock, and a thread that finds that lock taken spins on it for the
    /// whole of the other's copy (two event loops writing one file: a
    /// tenth of the daemon's CPU). This lock puts the waiting thread to
    /// sleep after a short spin, giving its CPU to others (often the
    /// client), and it then copies a payload still in its cache.
    write_turn: Mutex<()>,
    /// The last data range block status found, `[start, end)` (QEMU's
    /// `BdrvBlockStatusCache`); cleared by anything that may dig holes.
    data_cache: Mutex<Option<(u64, u64)>>,
    /// `Some` with `cache.direct=on`.
    direct: Option<DirectIo>,
    /// `None` with `locking=off`.
    locks: Option<ImageLocks>,
    /// An inactive node takes no locks (QEMU's `raw_handle_perm_lock`).
    active: AtomicBool,
    /// Whether the descriptor is open for writing (`auto-read-only` may
    /// have fallen back to read-only); the errno of that fallback.
    write_refusal: Option<io::Error>,
    /// Capabilities learnt by trying; cleared on `EOPNOTSUPP`.
    nowait_reads: AtomicBool,
    nowait_writes: AtomicBool,
    space: Arc<SpaceCalls>,
    /// The errno of a failed `fdatasync` in buffered mode: after one, the
    /// page cache no longer says what is on disk, so every later flush
    /// fails too (as QEMU's `page_cache_inconsistent`).
    flush_failure: AtomicI32,
    /// Discards that reached the file (`driver-specific` statistics).
    discards: DiscardCounts,
}

/// How the discards that reached the file went (QEMU's
/// `BlockStatsSpecificFile`).
#[derive(Default)]
struct DiscardCounts {
    ok: AtomicU64,
    failed: AtomicU64,
    bytes_ok: AtomicU64,
}

impl FileDriver {
    /// Opens the file of a new node.
    pub fn open(cx: &OpenContext<'_>, options: &BlockdevOptionsFile) -> BlockResult<Self> {
        Self::new(options, cx.settings())
    }

    /// Opens `options.filename` with these node settings (also outside a
    /// graph, for tools and tests).
    pub fn new(options: &BlockdevOptionsFile, settings: &NodeSettings) -> BlockResult<Self> {
        let filename = options.filename.clone();
        if options.aio == Some(BlockdevAioOptions::Native) && !settings.cache_direct {
            return Err(invalid(
                "aio=native was specified, but it requires cache.direct=on, which was not specified.",
            ));
        }
        if let Some(id) = &options.pr_manager {
            return Err(invalid(format!(
                "No persistent reservation manager with id '{id}'"
            )));
        }
        // `aio`, `aio-max-batch`, `drop-cache` and `x-check-cache-dropped`
        // are accepted for compatibility: the I/O engine is this driver's
        // own and there is no migration whose cache could be dropped.
        let (fd, write_refusal) = open_file(&filename, settings)?;
        let st = posix_io::fstat(fd.as_raw_fd())
            .map_err(|e| BlockError::from_io("Could not stat file", e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(invalid(format!(
                "'file' driver requires '{filename}' to be a regular file"
            )));
        }
        // QEMU learns a file's length by seeking to its end; files that
        // cannot be (procfs files such as /proc/self/mem) are refused.
        // SAFETY: lseek on a descriptor this function owns; no memory is passed.
        if unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            return Err(BlockError::from_io(
                "Could not refresh total sector count",
                io::Error::last_os_error(),
            ));
        }
        let direct = if settings.cache_direct {
            Some(DirectIo::probe(fd.as_raw_fd())?)
        } else {
            None
        };
        let locks = if options.locking.unwrap_or_default() != OnOffAuto::Off {
            match ImageLocks::new(fd.as_raw_fd()) {
                Ok(locks) => Some(locks),
                // `auto` quietly goes without locks where the kernel has none.
                Err(_) if options.locking.unwrap_or_default() == OnOffAuto::Auto => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let in_memory = direct.is_none() && is_in_memory(fd.as_raw_fd());
        Ok(FileDriver {
            fd: Arc::new(fd),
            filename,
            size: AtomicU64::new(u64::try_from(st.st_size).unwrap_or(0)),
            in_memory,
            write_turn: Mutex::new(()),
            data_cache: Mutex::new(None),
            direct,
            locks,
            active: AtomicBool::new(!settings.inactive),
            write_refusal,
            // Pointless where nothing waits.
            nowait_reads: AtomicBool::new(!in_memory),
            nowait_writes: AtomicBool::new(!in_memory),
            space: Arc::new(SpaceCalls {
                zero_range: AtomicBool::new(true),
                punch_hole: AtomicBool::new(true),
            }),
            flush_failure: AtomicI32::new(0),
            discards: DiscardCounts::default(),
        })
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The image locks, if the node uses them and is active.
    fn active_locks(&self) -> Option<&ImageLocks> {
        self.locks
            .as_ref()
            .filter(|_| self.active.load(Ordering::Acquire))
    }

    /// Runs a system call on the descriptor that may wait for the disk:
    /// inline for files in memory, else on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(RawFd) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        if self.in_memory {
            return f(self.raw_fd());
        }
        let fd = Arc::clone(&self.fd);
        offload(move || f(fd.as_raw_fd())).await
    }

    /// Records that the file now reaches at least `end`.
    fn grown_to(&self, end: u64) {
        if end > self.size.load(Ordering::Relaxed) {
            self.size.fetch_max(end, Ordering::Relaxed);
        }
    }

    /// Forgets the cached data range (a hole may have been dug).
    fn forget_data_range(&self) {
        *self.data_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The cached data range covering `offset`, if any. Never waits: a
    /// cache busy elsewhere is a miss.
    fn cached_data_range(&self, offset: u64) -> Option<u64> {
        let cache = self.data_cache.try_lock().ok()?;
        cache.and_then(|(start, end)| (start <= offset && offset < end).then_some(end))
    }

    fn io_error(&self, what: &str, offset: u64, err: io::Error) -> BlockError {
        BlockError::from_io(
            format!("{what} at offset {offset} of '{}'", self.filename),
            err,
        )
    }

    /// Buffered read: page-cache hits inline, misses in a blocking call.
    async fn read_buffered(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let mut done = 0;
        if self.nowait_reads.load(Ordering::Relaxed) {
            match posix_io::read_into(self.raw_fd(), buf, offset, RwFlags::NOWAIT, false) {
                Ok(n) => done = n,
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.nowait_reads.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(self.io_error("Read", offset, e)),
            }
        }
        if done < buf.len() {
            let rest = buf.slice(done..buf.len());
            let at = offset + done as u64;
            done += self
                .blocking(move |fd| posix_io::read_into(fd, &rest, at, RwFlags::NONE, false))
                .await
                .map_err(|e| self.io_error("Read", offset, e))?;
        }
        // Past the end of the file reads as zeroes (a file shrunk behind
        // our back), as QEMU's short-read handling.
        buf.slice(done..buf.len()).fill_zeroes();
        Ok(())
    }

    /// Buffered write: inline for a file in memory, else non-blocking
    /// first where supported.
    async fn write_buffered(&self, offset: u64, buf: &IoBuf, flags: RwFlags) -> BlockResult<()> {
        if self.in_memory {
            let _turn = (buf.len() >= WRITE_TURN_MIN_LEN)
                .then(|| self.write_turn.lock().unwrap_or_else(|e| e.into_inner()));
            return posix_io::write_from(self.raw_fd(), buf, offset, flags)
                .map(drop)
                .map_err(|e| self.io_error("Write", offset, e));
        }
        let mut done = 0;
        if flags == RwFlags::NONE && self.nowait_writes.load(Ordering::Relaxed) {
            match posix_io::write_from(self.raw_fd(), buf, offset, RwFlags::NOWAIT) {
                Ok(n) => done = n,
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.nowait_writes.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(self.io_error("Write", offset, e)),
            }
        }
        if done < buf.len() {
            let rest = buf.slice(done..buf.len());
            let at = offset + done as u64;
            self.blocking(move |fd| posix_io::write_from(fd, &rest, at, flags))
                .await
                .map_err(|e| self.io_error("Write", offset, e))?;
        }
        Ok(())
    }

    /// The slow path of write-zeroes: writes zero buffers.
    async fn write_zero_buffers(&self, offset: u64, len: u64, flags: RwFlags) -> BlockResult<()> {
        let chunk_len = usize::try_from(len).unwrap_or(ZERO_CHUNK).min(ZERO_CHUNK);
        let align = self.direct.as_ref().map_or(1, |d| d.memory_align());
        let zeroes = IoBuf::from_owner(AlignedBuf::zeroed(chunk_len, align)?);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk_len as u64) as usize;
            self.write_bytes(offset + done, &zeroes.slice(0..n), flags)
                .await?;
            done += n as u64;
        }
        Ok(())
    }

    async fn write_bytes(&self, offset: u64, buf: &IoBuf, flags: RwFlags) -> BlockResult<()> {
        match &self.direct {
            Some(direct) => direct
                .write(&self.fd, offset, buf, flags)
                .await
                .map_err(|e| self.direct_error("Write", offset, e)),
            None => self.write_buffered(offset, buf, flags).await,
        }
    }

    fn direct_error(&self, what: &str, offset: u64, err: DirectError) -> BlockError {
        match err {
            DirectError::Io(e) => self.io_error(what, offset, e),
            DirectError::Block(e) => e,
        }
    }

    async fn fdatasync(&self) -> BlockResult<()> {
        let failed = self.flush_failure.load(Ordering::Relaxed);
        if failed != 0 {
            return Err(BlockError::from_io(
                "Flush",
                io::Error::from_raw_os_error(failed),
            ));
        }
        self.blocking(posix_io::fdatasync).await.map_err(|e| {
            if self.direct.is_none() {
                self.flush_failure
                    .store(e.raw_os_error().unwrap_or(libc::EIO), Ordering::Relaxed);
            }
            BlockError::from_io("Flush", e)
        })
    }
}

#[async_trait]
impl BlockDriver for FileDriver {
    fn format_name(&self) -> &'static str {
        "file"
    }

    fn specific_stats(&self) -> Option<BlockStatsSpecific> {
        let counts = &self.discards;
        let n = |c: &AtomicU64| i64::try_from(c.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        Some(BlockStatsSpecific::File(BlockStatsSpecificFile {
            discard_nb_ok: n(&counts.ok),
            discard_nb_failed: n(&counts.failed),
            discard_bytes_ok: n(&counts.bytes_ok),
        }))
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        match &self.direct {
            Some(direct) => direct
                .read(&self.fd, offset, buf)
                .await
                .map_err(|e| self.direct_error("Read", offset, e)),
            None => self.read_buffered(offset, buf).await,
        }
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.write_bytes(offset, buf, fua_flags(flags.fua)).await?;
        self.grown_to(offset + buf.len() as u64);
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        if len == 0 {
            return Ok(());
        }
        // Zeroing may turn data into holes (or unwritten extents, which
        // `SEEK_DATA` skips).
        self.forget_data_range();
        let space = Arc::clone(&self.space);
        let may_unmap = flags.may_unmap;
        let zeroed = self
            .blocking(move |fd| space.zero_by_fallocate(fd, offset, len, may_unmap))
            .await
            .map_err(|e| self.io_error("Write zeroes", offset, e))?;
        if !zeroed {
            if flags.no_fallback {
                return Err(BlockError::new(
                    ErrorKind::NotSupported,
                    "Write zeroes without fallback is not supported by the file system",
                ));
            }
            self.write_zero_buffers(offset, len, fua_flags(flags.fua))
                .await?;
        } else if flags.fua {
            self.fdatasync().await?;
        }
        self.grown_to(offset + len);
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        if len == 0 || !self.space.punch_hole.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.forget_data_range();
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let result = self
            .blocking(move |fd| posix_io::fallocate(fd, mode, offset, len))
            .await;
        let counts = &self.discards;
        match &result {
            Ok(()) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                counts.bytes_ok.fetch_add(len, Ordering::Relaxed);
            }
            Err(_) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        match result {
            Ok(()) => Ok(()),
            // Discard is a hint: where the file system cannot, nothing happens.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                ) =>
            {
                self.space.punch_hole.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.io_error("Discard", offset, e)),
        }
    }

    async fn flush(&self) -> BlockResult<()> {
        self.fdatasync().await
    }

    /// Data or hole by `SEEK_DATA`/`SEEK_HOLE` (QEMU's `find_allocation`),
    /// or the cached data range. The seeks run in place, as QEMU runs
    /// them: they read file system metadata, not data, and a whole-disk
    /// status of a fragmented file is one seek per extent, which a
    /// thread hand-over each would make many times slower.
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        let data = |length: u64| Extent {
            length,
            data: true,
            zero: false,
            depth: 1,
        };
        let hole = |length: u64| Extent {
            length,
            data: false,
            zero: true,
            depth: 1,
        };
        if let Some(end) = self.cached_data_range(offset) {
            return Ok(data((end - offset).min(len)));
        }
        let found = find_allocation(self.raw_fd(), offset);
        Ok(match found {
            Allocation::HoleUntil(next_data) => hole((next_data - offset).min(len)),
            Allocation::DataUntil(next_hole) => {
                if let Ok(mut cache) = self.data_cache.try_lock() {
                    *cache = Some((offset, next_hole));
                }
                data((next_hole - offset).min(len))
            }
            Allocation::TrailingHole => hole(len),
            // Nothing known: everything is data.
            Allocation::Unknown => data(len),
        })
    }

    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        self.forget_data_range();
        self.blocking(move |fd| posix_io::ftruncate(fd, new_size))
            .await
            .map_err(|e| BlockError::from_io("Could not resize file", e))?;
        self.size.store(new_size, Ordering::Relaxed);
        Ok(())
    }

    fn can_fast_zero(&self) -> bool {
        true
    }

    fn read_source(&self, offset: u64, len: u64) -> Option<ReadSource> {
        let size = self.size.load(Ordering::Relaxed);
        let inside = offset <= size && len <= size - offset;
        (self.in_memory && self.direct.is_none() && inside).then(|| ReadSource {
            fd: Arc::clone(&self.fd),
            offset,
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            request_alignment: self
                .direct
                .as_ref()
                .map_or(1, |d| u32::try_from(d.request_align()).unwrap_or(u32::MAX)),
            ..Limits::default()
        }
    }

    fn filename(&self) -> String {
        self.filename.clone()
    }

    fn strong_options(&self) -> Map<String, Json> {
        let mut options = Map::new();
        options.insert("filename".to_string(), Json::String(self.filename.clone()));
        options
    }

    fn is_protocol(&self) -> bool {
        true
    }

    fn allocated_size(&self) -> Option<u64> {
        let st = posix_io::fstat(self.raw_fd()).ok()?;
        u64::try_from(st.st_blocks).ok().map(|blocks| blocks * 512)
    }

    fn driver_info(&self) -> Option<DriverInfo> {
        Some(DriverInfo::default())
    }

    fn format_specific(&self) -> Option<ImageInfoSpecific> {
        Some(ImageInfoSpecific::File(ImageInfoSpecificFile::default()))
    }

    fn check_perm(&self, perm: Perm, shared: Perm) -> BlockResult<()> {
        if let Some(err) = &self.write_refusal {
            if perm.intersects(Perm::WRITE | Perm::WRITE_UNCHANGED | Perm::RESIZE) {
                return Err(open_error(&self.filename, err));
            }
        }
        match self.active_locks() {
            Some(locks) => locks.prepare(perm, shared),
            None => Ok(()),
        }
    }

    fn set_perm(&self, perm: Perm, shared: Perm) {
        if let Some(locks) = self.active_locks() {
            locks.commit(perm, shared);
        }
    }

    fn abort_perm(&self) {
        if let Some(locks) = self.active_locks() {
            locks.abort();
        }
    }

    fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
    }

    async fn refresh_length(&self) -> BlockResult<()> {
        let st = posix_io::fstat(self.raw_fd())
            .map_err(|e| BlockError::from_io("Could not refresh total sector count", e))?;
        self.size
            .store(u64::try_from(st.st_size).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }
}

/// The space-management calls a file system may lack (learnt by trying;
/// shared with the blocking calls in flight).
struct SpaceCalls {
    zero_range: AtomicBool,
    punch_hole: AtomicBool,
}

impl SpaceCalls {
    /// Zeroes with the file system's help, as QEMU's
    /// `handle_aiocb_write_zeroes[_unmap]`: punch (if unmapping is allowed),
    /// zero-range, punch-and-reallocate. `Ok(false)`: none of them works.
    fn zero_by_fallocate(
        &self,
        fd: RawFd,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> io::Result<bool> {
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let is =
            |e: &io::Error, codes: &[i32]| e.raw_os_error().is_some_and(|c| codes.contains(&c));
        if may_unmap && self.punch_hole.load(Ordering::Relaxed) {
            match posix_io::fallocate(fd, punch, offset, len) {
                Ok(()) => return Ok(true),
                Err(e)
                    if is(
                        &e,
                        &[libc::EOPNOTSUPP, libc::EINVAL, libc::EBUSY, libc::ENOSYS],
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        if self.zero_range.load(Ordering::Relaxed) {
            match posix_io::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, offset, len) {
                Ok(()) => return Ok(true),
                Err(e) if is(&e, &[libc::EOPNOTSUPP, libc::ENOSYS]) => {
                    self.zero_range.store(false, Ordering::Relaxed)
                }
                // Some file systems refuse unaligned ranges; try the rest.
                Err(e) if is(&e, &[libc::EINVAL]) => {}
                Err(e) => return Err(e),
            }
        }
        if self.punch_hole.load(Ordering::Relaxed) {
            match posix_io::fallocate(fd, punch, offset, len) {
                Ok(()) => return posix_io::fallocate(fd, 0, offset, len).map(|()| true),
                Err(e) if is(&e, &[libc::EOPNOTSUPP, libc::ENOSYS]) => {
                    self.punch_hole.store(false, Ordering::Relaxed)
                }
                Err(e) if is(&e, &[libc::EINVAL]) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// What `SEEK_DATA`/`SEEK_HOLE` found at an offset.
enum Allocation {
    /// A hole, up to the next data.
    HoleUntil(u64),
    /// Data, up to the next hole.
    DataUntil(u64),
    /// A hole up to the end of the file (or past it).
    TrailingHole,
    /// The file system would not tell.
    Unknown,
}

/// QEMU's `find_allocation`: what `SEEK_DATA`/`SEEK_HOLE` say at `offset`.
fn find_allocation(fd: RawFd, offset: u64) -> Allocation {
    match posix_io::lseek(fd, offset, libc::SEEK_DATA) {
        Ok(next_data) if next_data > offset => Allocation::HoleUntil(next_data),
        Ok(_) => match posix_io::lseek(fd, offset, libc::SEEK_HOLE) {
            Ok(next_hole) if next_hole > offset => Allocation::DataUntil(next_hole),
            // A hole was dug between the two calls, or an error: data
            // is the safe answer.
            _ => Allocation::Unknown,
        },
        // A trailing hole, or past the end of a file that shrank.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Allocation::TrailingHole,
        Err(_) => Allocation::Unknown,
    }
}

/// Whether the file lives in memory (tmpfs or ramfs).
fn is_in_memory(fd: RawFd) -> bool {
    // SAFETY: an all-zero `statfs` is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for the call.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return false;
    }
    // `f_type`'s width differs between architectures.
    #[allow(clippy::useless_conversion)]
    let magic = i64::from(st.f_type);
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

/// Opens the file for reading and writing; for a read-only or
/// `auto-read-only` node, falls back to read-only where writing is
/// refused, and returns why.
fn open_file(filename: &str, settings: &NodeSettings) -> BlockResult<(OwnedFd, Option<io::Error>)> {
    let path = CString::new(filename).map_err(|_| {
        invalid(format!(
            "Could not open '{filename}': file name contains a NUL byte"
        ))
    })?;
    let mut flags = libc::O_CLOEXEC;
    if settings.cache_direct {
        flags |= libc::O_DIRECT;
    }
    let open = |access: libc::c_int| -> io::Result<OwnedFd> {
        // SAFETY: `path` is a valid C string for the call.
        let fd = unsafe { libc::open(path.as_ptr(), flags | access) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: `open` returned a fresh descriptor we now own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    // A read-only node still opens the file for writing where it can, so
    // that `blockdev-reopen` can make it writable without a new
    // descriptor (and its locks); the node's permissions keep writers out.
    match open(libc::O_RDWR) {
        Ok(fd) => Ok((fd, None)),
        Err(e)
            if settings.read_only
                || (settings.auto_read_only
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
                    )) =>
        {
            let fd = open(libc::O_RDONLY).map_err(|e| open_error(filename, &e))?;
            Ok((fd, Some(e)))
        }
        Err(e) => Err(open_error(filename, &e)),
    }
}

/// QEMU's `error_setg_file_open`.
fn open_error(filename: &str, err: &io::Error) -> BlockError {
    let copy = err
        .raw_os_error()
        .map_or_else(|| io::Error::from(err.kind()), io::Error::from_raw_os_error);
    let mut error = BlockError::from_io("", copy);
    error.message = format!("Could not open '{filename}': {}", os_error_text(err));
    error
}

/// `RWF_DSYNC` for a FUA request.
fn fua_flags(fua: bool) -> RwFlags {
    if fua {
        RwFlags::DSYNC
    } else {
        RwFlags::NONE
    }
}

fn invalid(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

//! The one file a FUSE export shows: a node's contents as a raw image.
//!
//! The kernel's requests arrive on the session's threads (one per cloned
//! `/dev/fuse` descriptor); each data request becomes a task on the
//! export's event loop, which replies when the node is done, so requests
//! never wait for one another while the node could serve them together.
//! Each request counts as a client of the export while it runs: a safe
//! `block-export-del` is refused meanwhile, and once the export is closed
//! new requests fail with `ENOTCONN` (as if the server were gone).
//!
//! Semantics follow QSD 10's FUSE export: reads are cut at the end;
//! writes past the end grow a growable export or are cut short;
//! `truncate` resizes a writable export; `fallocate` punches holes
//! (discard), zeroes ranges and grows at the end; `fsync` and each
//! `close` flush; `lseek` finds data and holes from the node's block
//! status; the mode may be changed only as far as it grants nothing the
//! export cannot give.

use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use block::{BlockBackend, BlockError, IoBuf, WriteFlags, ZeroFlags};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyWrite, Request,
    TimeOrNow, WriteFlags as FuseWriteFlags,
};
use tokio::runtime::Handle;

use crate::buffers::{Buffer, BufferPool};
use crate::life::{ExportLife, LifeGuard};

/// How long the kernel may cache the file's attributes (QEMU's 1 s).
const ATTR_TTL: Duration = Duration::from_secs(1);
/// The largest write the kernel is asked to send (it caps this at its
/// page limit, 1 MiB unless raised).
const MAX_WRITE: u32 = 16 << 20;
/// Asynchronous requests the kernel may have outstanding: enough for
/// deep direct I/O queues.
const MAX_BACKGROUND: u16 = 128;

/// The file's owner and mode, which `chmod`/`chown` may change.
#[derive(Debug, Clone, Copy)]
struct Owner {
    /// Permission bits only.
    mode: u32,
    uid: u32,
    gid: u32,
}

/// What the session's threads and the export share.
pub struct ImageShared {
    pub life: ExportLife,
    /// Taken away when the export shuts down.
    backend: Mutex<Option<BlockBackend>>,
    writable: bool,
    growable: bool,
    allow_other: bool,
    owner: Mutex<Owner>,
    /// The export's event loop, where requests run.
    runtime: Handle,
    /// Reported as the file's times.
    mounted_at: SystemTime,
    /// Payload buffers, reused from request to request.
    buffers: Arc<BufferPool>,
    /// Requests running inline on session threads now, and how many may
    /// (fewer than the threads: one always reads).
    inline: AtomicUsize,
    inline_limit: usize,
}

impl ImageShared {
    pub fn new(
        backend: BlockBackend,
        writable: bool,
        growable: bool,
        allow_other: bool,
        runtime: Handle,
        inline_limit: usize,
    ) -> ImageShared {
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mode = if writable { 0o600 } else { 0o400 };
        ImageShared {
            life: ExportLife::new(None),
            backend: Mutex::new(Some(backend)),
            writable,
            growable,
            allow_other,
            owner: Mutex::new(Owner { mode, uid, gid }),
            runtime,
            mounted_at: SystemTime::now(),
            buffers: BufferPool::new(),
            inline: AtomicUsize::new(0),
            inline_limit,
        }
    }

    /// Lets go of the node (the export is closed).
    pub fn release_backend(&self) {
        lock(&self.backend).take();
    }

    /// A request's hold on the export and its backend; `None` once the
    /// export is closed.
    fn enter(&self) -> Option<(LifeGuard, BlockBackend)> {
        let guard = self.life.attach_client()?;
        let backend = lock(&self.backend).clone()?;
        Some((guard, backend))
    }

    fn attr(&self, backend: &BlockBackend) -> FileAttr {
        let owner = *lock(&self.owner);
        let size = backend.size();
        let node = backend.node();
        let allocated = block::info::allocated_file_size(&node)
            .filter(|&bytes| bytes > 0)
            .unwrap_or(size);
        FileAttr {
            ino: INodeNo::ROOT,
            size,
            blocks: allocated.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::RegularFile,
            perm: owner.mode as u16,
            nlink: 1,
            uid: owner.uid,
            gid: owner.gid,
            rdev: 0,
            blksize: node.limits().request_alignment,
            flags: 0,
        }
    }
}

/// The filesystem the session serves.
pub struct ImageFile(pub Arc<ImageShared>);

/// fuser's reply types, which have no common trait, as far as a request
/// refused before it runs needs them.
trait ErrorReply {
    fn error(self, errno: Errno);
}

macro_rules! error_reply {
    ($($reply:ty),*) => {$(
        impl ErrorReply for $reply {
            fn error(self, errno: Errno) {
                <$reply>::error(self, errno)
            }
        }
    )*};
}

error_reply!(ReplyAttr, ReplyData, ReplyWrite, ReplyEmpty, ReplyLseek);

impl ImageFile {
    /// Runs a request that replies with `reply` when done; once the export
    /// is closed it is refused with `ENOTCONN` (as if the server were
    /// gone). While few requests run inline, this one runs inline too, on
    /// the session thread that read it (no hand-over to another thread:
    /// the latency of a lone request); past that it becomes a task of the
    /// export's event loop, and the thread goes back to reading requests.
    fn serve<Rp, F, Fut>(&self, reply: Rp, work: F)
    where
        Rp: ErrorReply,
        F: FnOnce(Arc<ImageShared>, BlockBackend, Rp) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some((guard, backend)) = self.0.enter() else {
            return reply.error(Errno::from_i32(libc::ENOTCONN));
        };
        let request = work(Arc::clone(&self.0), backend, reply);
        let shared = &self.0;
        let inline = shared.inline.fetch_add(1, Ordering::AcqRel) < shared.inline_limit;
        if inline {
            // Session threads are not the runtime's: blocking here is
            // what they are for.
            shared.runtime.block_on(request);
            shared.inline.fetch_sub(1, Ordering::AcqRel);
            drop(guard);
            return;
        }
        shared.inline.fetch_sub(1, Ordering::AcqRel);
        shared.runtime.spawn(async move {
            request.await;
            drop(guard);
        });
    }
}

fn errno(e: &BlockError) -> Errno {
    Errno::from_i32(e.errno())
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values: consistent whatever a holder did.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replies to a request that only succeeds or fails.
fn reply_result(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for ImageFile {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Direct I/O may have many requests in flight, not one per thread.
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEntry) {
        // There is only the mountpoint itself.
        reply.error(Errno::ENOENT);
    }

    fn getattr(&self, _req: &Request, _ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match lock(&self.0.backend).clone() {
            Some(backend) => reply.attr(&ATTR_TTL, &self.0.attr(&backend)),
            None => reply.error(Errno::from_i32(libc::ENOTCONN)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        crtime: Option<SystemTime>,
        chgtime: Option<SystemTime>,
        bkuptime: Option<SystemTime>,
        flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let owner_change = uid.is_some() || gid.is_some();
        let times = atime.is_some() || mtime.is_some() || ctime.is_some();
        let other = crtime.is_some() || chgtime.is_some() || bkuptime.is_some() || flags.is_some();
        if times || other || (owner_change && !self.0.allow_other) {
            return reply.error(Errno::ENOTSUP);
        }
        if let Some(mode) = mode {
            // Without allow_other nobody else can reach the file: granting
            // them access would be a lie; +w on a read-only export too.
            if !self.0.allow_other && mode & 0o077 != 0 {
                return reply.error(Errno::EPERM);
            }
            if !self.0.writable && mode & 0o222 != 0 {
                return reply.error(Errno::EROFS);
            }
        }
        if size.is_some() && !self.0.writable {
            return reply.error(Errno::EACCES);
        }
        self.serve(reply, move |shared, backend, reply| async move {
            if let Some(size) = size {
                if let Err(e) = backend.resize(size).await {
                    return reply.error(errno(&e));
                }
            }
            {
                let mut owner = lock(&shared.owner);
                if let Some(mode) = mode {
                    owner.mode = mode & 0o7777;
                }
                owner.uid = uid.unwrap_or(owner.uid);
                owner.gid = gid.unwrap_or(owner.gid);
            }
            reply.attr(&ATTR_TTL, &shared.attr(&backend));
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.serve(reply, move |shared, backend, reply| async move {
            // Reads are cut at the end, as a file's are.
            let end = backend.size();
            let len = u64::from(size).min(end.saturating_sub(offset)) as usize;
            let buf = IoBuf::from_owner(shared.buffers.get(len));
            let result = backend.read(offset, &buf).await;
            match (result, buf.into_owner::<Buffer>()) {
                (Ok(()), Ok(data)) => reply.data(data.as_ref()),
                (Ok(()), Err(buf)) => reply.data(&buf.to_vec()),
                (Err(e), _) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: FuseWriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if !self.0.writable {
            return reply.error(Errno::EACCES);
        }
        // The request buffer is the session thread's: the payload is
        // copied once, into a pooled buffer the write owns.
        let mut payload = self.0.buffers.get(data.len());
        payload.as_mut().copy_from_slice(data);
        self.serve(reply, move |shared, backend, reply| async move {
            let mut len = payload.len();
            if !shared.growable {
                // Past the end, a write is cut short.
                let room = backend.size().saturating_sub(offset);
                len = room.min(len as u64) as usize;
            }
            if len == 0 {
                return reply.written(0);
            }
            let buf = IoBuf::from_owner(payload).slice(0..len);
            match backend.write(offset, &buf, WriteFlags::default()).await {
                Ok(()) => reply.written(len as u32),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.flush_node(reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.flush_node(reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if !self.0.writable {
            return reply.error(Errno::EACCES);
        }
        self.serve(reply, move |_, backend, reply| async move {
            let result = fallocate(&backend, offset, length, mode).await;
            reply_result(reply, result);
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return reply.error(Errno::EINVAL);
        }
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        self.serve(reply, move |_, backend, reply| async move {
            match seek(&backend, offset, whence == libc::SEEK_DATA).await {
                Ok(found) => reply.offset(found as i64),
                Err(e) => reply.error(e),
            }
        });
    }
}

impl ImageFile {
    fn flush_node(&self, reply: ReplyEmpty) {
        self.serve(reply, move |_, backend, reply| async move {
            let result = backend.flush().await.map_err(|e| errno(&e));
            reply_result(reply, result);
        });
    }
}

/// `fallocate` modes: 0 grows at the end; `PUNCH_HOLE|KEEP_SIZE`
/// discards; `ZERO_RANGE` writes zeroes (growing the node unless
/// `KEEP_SIZE`); anything else is not supported.
async fn fallocate(
    backend: &BlockBackend,
    offset: u64,
    length: u64,
    mode: i32,
) -> Result<(), Errno> {
    let size = backend.size();
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    let end = offset.checked_add(length).ok_or(Errno::EINVAL)?;
    // With KEEP_SIZE nothing happens past the end.
    let clamp = |end: u64| if keep_size { end.min(size) } else { end };
    let result = if mode == 0 {
        if offset < size {
            return Err(Errno::EOPNOTSUPP);
        }
        backend.resize(end).await
    } else if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
        if !keep_size {
            return Err(Errno::EINVAL);
        }
        let end = clamp(end);
        if end <= offset {
            return Ok(());
        }
        backend.discard(offset, end - offset).await
    } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
        let end = clamp(end);
        if end > size {
            if let Err(e) = backend.resize(end).await {
                return Err(errno(&e));
            }
        }
        if end <= offset {
            return Ok(());
        }
        backend
            .write_zeroes(offset, end - offset, ZeroFlags::default())
            .await
    } else {
        return Err(Errno::EOPNOTSUPP);
    };
    result.map_err(|e| errno(&e))
}

/// The first offset at or after `offset` that is data (`want_data`) or a
/// hole, from the node's block status; `ENXIO` past the end, and for data
/// when there is none. The end of the file counts as a hole.
async fn seek(backend: &BlockBackend, mut offset: u64, want_data: bool) -> Result<u64, Errno> {
    let size = backend.size();
    if offset >= size {
        return Err(Errno::ENXIO);
    }
    while offset < size {
        let extent = backend
            .block_status(offset, size - offset)
            .await
            .map_err(|e| errno(&e))?;
        if extent.data == want_data {
            return Ok(offset);
        }
        offset += extent.length.max(1);
    }
    if want_data {
        Err(Errno::ENXIO)
    } else {
        Ok(size)
    }
}

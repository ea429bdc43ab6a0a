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

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use block::{BlockBackend, IoBuf, WriteFlags, ZeroFlags};
use tokio::runtime::Handle;

use super::abi::{self, Attr, Request, SetAttr};
use super::session::Reply;
use crate::buffers::BufferPool;
use crate::life::{ExportLife, LifeGuard};

/// How long the kernel may cache the file's attributes (QEMU's 1 s).
const ATTR_TTL_S: u64 = 1;

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
    /// Reported as the file's times: seconds and nanoseconds since the
    /// epoch.
    mounted_at: (u64, u32),
    /// Request and payload buffers, reused from request to request.
    buffers: Arc<BufferPool>,
    /// Requests running inline on session threads now, and how many may
    /// (fewer than the threads: one always reads).
    inline: AtomicUsize,
    inline_limit: usize,
    /// Large writes being served now (see [`LARGE_WRITES`]).
    large_writes: AtomicUsize,
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
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        ImageShared {
            life: ExportLife::new(None),
            backend: Mutex::new(Some(backend)),
            writable,
            growable,
            allow_other,
            owner: Mutex::new(Owner { mode, uid, gid }),
            runtime,
            mounted_at: (since_epoch.as_secs(), since_epoch.subsec_nanos()),
            buffers: BufferPool::with_idle_limit(super::session::IDLE_BUFFER_BYTES),
            inline: AtomicUsize::new(0),
            inline_limit,
            large_writes: AtomicUsize::new(0),
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

    /// `fuse_attr_out` of the file now.
    fn attr_out(&self, backend: &BlockBackend) -> Vec<u8> {
        let owner = *lock(&self.owner);
        let size = backend.size();
        let node = backend.node();
        let allocated = block::info::allocated_file_size(&node)
            .filter(|&bytes| bytes > 0)
            .unwrap_or(size);
        let attr = Attr {
            size,
            blocks: allocated.div_ceil(512),
            time: self.mounted_at,
            mode: libc::S_IFREG | owner.mode,
            uid: owner.uid,
            gid: owner.gid,
            blksize: node.limits().request_alignment,
        };
        abi::attr_out(ATTR_TTL_S, &attr)
    }
}

/// Large writes (of [`super::session::HAND_OVER_MIN`] bytes or more) that
/// may be served at once before the session threads stop reading
/// requests to serve one themselves (so at most this many plus one per
/// session thread are in flight; small requests are not limited). Each
/// holds a read buffer (2 MiB): a few keep the node and the CPUs
/// busy, and more only spread the kernel's copies over more memory than
/// the caches hold and queue them behind the file's lock. Measured with
/// 1 MiB writes at depth 32 on tmpfs: 4 in flight rather than 32 gave
/// 18-47% more throughput and 7-25% less server CPU per write.
const LARGE_WRITES: usize = 4;

/// A large write being served: counted in `ImageShared::large_writes`
/// while it lives.
struct LargeWrite(Arc<ImageShared>);

impl LargeWrite {
    /// Counts a write; true if [`LARGE_WRITES`] were being served already.
    fn enter(shared: &Arc<ImageShared>) -> (LargeWrite, bool) {
        let before = shared.large_writes.fetch_add(1, Ordering::AcqRel);
        (LargeWrite(Arc::clone(shared)), before >= LARGE_WRITES)
    }
}

impl Drop for LargeWrite {
    fn drop(&mut self) {
        self.0.large_writes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The file the session serves.
#[derive(Clone)]
pub struct ImageFile(pub Arc<ImageShared>);

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values: consistent whatever a holder did.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replies to a request that only succeeds or fails.
fn reply_result(reply: Reply, result: Result<(), i32>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl ImageFile {
    /// The pool of the session's read buffers and the payloads.
    pub fn buffers(&self) -> &Arc<BufferPool> {
        &self.0.buffers
    }

    /// Runs a request that replies with `reply` when done; once the export
    /// is closed it is refused with `ENOTCONN` (as if the server were
    /// gone). While few requests run inline, this one runs inline too, on
    /// the session thread that read it (no hand-over to another thread:
    /// the latency of a lone request); past that it is polled once there
    /// (done if it needs no waiting), then becomes a task of the export's
    /// event loop, and the thread goes back to reading requests. With an
    /// iothread, every request is a task of the iothread.
    fn serve<F, Fut>(&self, reply: Reply, work: F)
    where
        F: FnOnce(Arc<ImageShared>, BlockBackend, Reply) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.serve_sized(reply, false, work);
    }

    /// [`ImageFile::serve`] for a request that is a `large` write or not.
    /// Once [`LARGE_WRITES`] large writes are being served, another one
    /// runs inline whatever else does: the session thread then reads no
    /// more requests until it is done (not with an iothread, where every
    /// request runs).
    fn serve_sized<F, Fut>(&self, reply: Reply, large: bool, work: F)
    where
        F: FnOnce(Arc<ImageShared>, BlockBackend, Reply) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some((guard, backend)) = self.0.enter() else {
            return reply.error(libc::ENOTCONN);
        };
        let request = work(Arc::clone(&self.0), backend, reply);
        let shared = &self.0;
        let large = large.then(|| LargeWrite::enter(shared));
        let over_limit = shared.inline_limit > 0 && large.as_ref().is_some_and(|(_, over)| *over);
        let inline = shared.inline.fetch_add(1, Ordering::AcqRel) < shared.inline_limit;
        if inline || over_limit {
            // Session threads are not the runtime's: blocking here is
            // what they are for.
            shared.runtime.block_on(request);
            shared.inline.fetch_sub(1, Ordering::AcqRel);
            drop((guard, large));
            return;
        }
        shared.inline.fetch_sub(1, Ordering::AcqRel);
        let mut task = Box::pin(async move {
            request.await;
            drop((guard, large));
        });
        // Without an iothread, polled once here first: a request that
        // needs no waiting (a file in memory, cached metadata) is done
        // without a hand-over to another thread. One that waits (a call
        // that may block goes to the blocking pool rather than holding
        // this thread) goes to the event loop, whose first poll registers
        // its own waker. With one, the request runs on the iothread only.
        if shared.inline_limit > 0
            && block::blocking::poll_here(&shared.runtime, task.as_mut()).is_ready()
        {
            return;
        }
        shared.runtime.spawn(task);
    }

    /// Serves every request but `WRITE` (see [`ImageFile::write`]) and
    /// those the session answers itself.
    pub fn request(&self, request: Request, reply: Reply) {
        match request {
            // There is only the mountpoint itself.
            Request::Lookup => reply.error(libc::ENOENT),
            Request::GetAttr => match lock(&self.0.backend).clone() {
                Some(backend) => reply.bytes(&self.0.attr_out(&backend)),
                None => reply.error(libc::ENOTCONN),
            },
            Request::SetAttr(attr) => self.setattr(attr, reply),
            Request::Open => reply.bytes(&abi::open_out()),
            Request::Read { offset, size } => self.read(offset, size, reply),
            Request::Statfs => reply.bytes(&abi::statfs_out()),
            Request::Release => reply.ok(),
            Request::Flush | Request::Fsync => self.flush_node(reply),
            Request::Fallocate {
                offset,
                length,
                mode,
            } => self.fallocate(offset, length, mode as i32, reply),
            Request::Lseek { offset, whence } => self.lseek(offset, whence as i32, reply),
            _ => reply.error(libc::ENOSYS),
        }
    }

    fn setattr(&self, attr: SetAttr, reply: Reply) {
        let owner_change = attr.uid().is_some() || attr.gid().is_some();
        if attr.times() || (owner_change && !self.0.allow_other) {
            return reply.error(libc::ENOTSUP);
        }
        if let Some(mode) = attr.mode() {
            // Without allow_other nobody else can reach the file: granting
            // them access would be a lie; +w on a read-only export too.
            if !self.0.allow_other && mode & 0o077 != 0 {
                return reply.error(libc::EPERM);
            }
            if !self.0.writable && mode & 0o222 != 0 {
                return reply.error(libc::EROFS);
            }
        }
        if attr.size().is_some() && !self.0.writable {
            return reply.error(libc::EACCES);
        }
        self.serve(reply, move |shared, backend, reply| async move {
            if let Some(size) = attr.size() {
                if let Err(e) = backend.resize(size).await {
                    return reply.error(e.errno());
                }
            }
            {
                let mut owner = lock(&shared.owner);
                if let Some(mode) = attr.mode() {
                    owner.mode = mode & 0o7777;
                }
                owner.uid = attr.uid().unwrap_or(owner.uid);
                owner.gid = attr.gid().unwrap_or(owner.gid);
            }
            reply.bytes(&shared.attr_out(&backend));
        });
    }

    fn read(&self, offset: u64, size: u32, reply: Reply) {
        self.serve(reply, move |shared, backend, reply| async move {
            // Reads are cut at the end, as a file's are.
            let end = backend.size();
            let len = u64::from(size).min(end.saturating_sub(offset)) as usize;
            let buf = IoBuf::from_owner(shared.buffers.get(len));
            match backend.read(offset, &buf).await {
                Ok(()) => reply.data(&buf),
                Err(e) => reply.error(e.errno()),
            }
        });
    }

    /// A write of `payload` (a buffer the write owns: see `session`).
    pub fn write(&self, offset: u64, payload: IoBuf, reply: Reply) {
        if !self.0.writable {
            return reply.error(libc::EACCES);
        }
        let large = payload.len() >= super::session::HAND_OVER_MIN;
        self.serve_sized(reply, large, move |shared, backend, reply| async move {
            let mut len = payload.len();
            if !shared.growable {
                // Past the end, a write is cut short.
                let room = backend.size().saturating_sub(offset);
                len = room.min(len as u64) as usize;
            }
            if len == 0 {
                return reply.bytes(&abi::write_out(0));
            }
            let buf = payload.slice(0..len);
            match backend.write(offset, &buf, WriteFlags::default()).await {
                Ok(()) => reply.bytes(&abi::write_out(len as u32)),
                Err(e) => reply.error(e.errno()),
            }
        });
    }

    fn fallocate(&self, offset: u64, length: u64, mode: i32, reply: Reply) {
        if !self.0.writable {
            return reply.error(libc::EACCES);
        }
        self.serve(reply, move |_, backend, reply| async move {
            let result = fallocate(&backend, offset, length, mode).await;
            reply_result(reply, result);
        });
    }

    fn lseek(&self, offset: u64, whence: i32, reply: Reply) {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return reply.error(libc::EINVAL);
        }
        // The kernel's offset is an `loff_t`.
        if offset > i64::MAX as u64 {
            return reply.error(libc::ENXIO);
        }
        self.serve(reply, move |_, backend, reply| async move {
            match seek(&backend, offset, whence == libc::SEEK_DATA).await {
                Ok(found) => reply.bytes(&abi::lseek_out(found)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush_node(&self, reply: Reply) {
        self.serve(reply, move |_, backend, reply| async move {
            let result = backend.flush().await.map_err(|e| e.errno());
            reply_result(reply, result);
        });
    }
}

/// `fallocate` modes: 0 grows at the end; `PUNCH_HOLE|KEEP_SIZE`
/// discards; `ZERO_RANGE` writes zeroes (growing the node unless
/// `KEEP_SIZE`); anything else is not supported.
async fn fallocate(backend: &BlockBackend, offset: u64, length: u64, mode: i32) -> Result<(), i32> {
    let size = backend.size();
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    let end = offset.checked_add(length).ok_or(libc::EINVAL)?;
    // With KEEP_SIZE nothing happens past the end.
    let clamp = |end: u64| if keep_size { end.min(size) } else { end };
    let result = if mode == 0 {
        if offset < size {
            return Err(libc::EOPNOTSUPP);
        }
        backend.resize(end).await
    } else if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
        if !keep_size {
            return Err(libc::EINVAL);
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
                return Err(e.errno());
            }
        }
        if end <= offset {
            return Ok(());
        }
        backend
            .write_zeroes(offset, end - offset, ZeroFlags::default())
            .await
    } else {
        return Err(libc::EOPNOTSUPP);
    };
    result.map_err(|e| e.errno())
}

/// The first offset at or after `offset` that is data (`want_data`) or a
/// hole, from the node's block status; `ENXIO` past the end, and for data
/// when there is none. The end of the file counts as a hole.
async fn seek(backend: &BlockBackend, mut offset: u64, want_data: bool) -> Result<u64, i32> {
    let size = backend.size();
    if offset >= size {
        return Err(libc::ENXIO);
    }
    while offset < size {
        let extent = backend
            .block_status(offset, size - offset)
            .await
            .map_err(|e| e.errno())?;
        if extent.data == want_data {
            return Ok(offset);
        }
        offset += extent.length.max(1);
    }
    if want_data {
        Err(libc::ENXIO)
    } else {
        Ok(size)
    }
}

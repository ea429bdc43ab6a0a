//! One NBD connection in transmission, shared by every request of the
//! node: requests are written under a lock, each with its own cookie, and
//! one reader task takes the replies as they come (in any order, in
//! chunks for structured and extended replies) and completes the request
//! each belongs to. Many requests are in flight at once.
//!
//! When the link breaks, a node with `reconnect-delay` dials again for
//! that long; on the new link every request still in flight is sent again
//! (and new ones wait meanwhile). Without it, or when the delay passes,
//! every request in flight and every later one fails with `EIO`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nbdwire::client::ReplyMode;
use nbdwire::proto::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::driver::Extent;
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;

/// The longest error message or status payload read from a reply.
const MAX_CHUNK_META: usize = 64 << 10;

/// A request to send.
pub struct Request {
    pub command: u16,
    pub flags: u16,
    pub offset: u64,
    pub length: u64,
    /// The data of a write.
    pub payload: Option<IoBuf>,
    /// Where a read's data goes.
    pub into: Option<IoBuf>,
}

/// What a completed request gives back.
#[derive(Debug, Default)]
pub struct Completion {
    /// `base:allocation` extents of a block status request: (length,
    /// flags).
    pub extents: Vec<(u64, u32)>,
}

struct Pending {
    request: Request,
    /// Sent on the current link (a request is sent again after a
    /// reconnection).
    sent: bool,
    completion: Completion,
    /// The first error chunk, if any.
    error: Option<BlockError>,
    done: oneshot::Sender<BlockResult<Completion>>,
}

impl Pending {
    /// The read buffer, and the offset it starts at.
    fn read_target(&self) -> Option<(&IoBuf, u64)> {
        self.request
            .into
            .as_ref()
            .map(|buf| (buf, self.request.offset))
    }
}

/// A fresh link to the same export, made again after a break.
pub struct Link {
    pub read: Box<dyn AsyncRead + Send + Unpin>,
    pub write: Box<dyn AsyncWrite + Send + Unpin>,
}

/// Makes a new link (connect and handshake), for reconnection.
pub type Dialer = Arc<dyn Fn() -> BoxFuture<io::Result<Link>> + Send + Sync>;
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// How to come back after a break: dial again for up to `delay`.
pub struct Redial {
    pub dial: Dialer,
    pub delay: Duration,
}

/// The state shared by the requesters and the link task.
struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    /// Set once the connection is gone for good.
    broken: Mutex<Option<String>>,
    /// The link's writing half; `None` while it is down.
    writer: tokio::sync::Mutex<Option<Box<dyn AsyncWrite + Send + Unpin>>>,
    /// Requests the server refuses because it is shutting down wait for
    /// the next link (only when the node reconnects).
    retry_shutdown: bool,
    /// Message buffers for reuse (a fresh large buffer per write would be
    /// a new mapping and a page fault per page).
    spare_messages: Mutex<Vec<Vec<u8>>>,
    /// Cancelled when the current link breaks, so that a write stuck on it
    /// lets go of the writer.
    link_alive: Mutex<CancellationToken>,
}

/// A connection in transmission.
pub struct Connection {
    shared: Arc<Shared>,
    next_cookie: AtomicU64,
    mode: ReplyMode,
    /// The `base:allocation` context id, if negotiated.
    allocation_context: Option<u32>,
    link_task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.link_task.abort();
    }
}

impl Connection {
    /// Starts transmission on `link`; after a break, `redial` (if any)
    /// makes a new one and the requests in flight are sent again.
    pub fn start(
        link: Link,
        mode: ReplyMode,
        allocation_context: Option<u32>,
        redial: Option<Redial>,
    ) -> Connection {
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            broken: Mutex::default(),
            writer: tokio::sync::Mutex::new(Some(link.write)),
            retry_shutdown: redial.is_some(),
            spare_messages: Mutex::default(),
            link_alive: Mutex::new(CancellationToken::new()),
        });
        let link_task = tokio::spawn(run_link(link.read, Arc::clone(&shared), mode, redial));
        Connection {
            shared,
            next_cookie: AtomicU64::new(1),
            mode,
            allocation_context,
            link_task,
        }
    }

    pub fn allocation_context(&self) -> Option<u32> {
        self.allocation_context
    }

    /// Sends `request` and waits for its reply (through reconnections).
    pub async fn call(&self, request: Request) -> BlockResult<Completion> {
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let mut message = lock(&self.shared.spare_messages).pop().unwrap_or_default();
        encode(self.mode, cookie, &request, &mut message)?;
        let (done, completed) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if let Some(reason) = lock(&self.shared.broken).clone() {
                return Err(broken(&reason));
            }
            pending.insert(
                cookie,
                Pending {
                    request,
                    sent: false,
                    completion: Completion::default(),
                    error: None,
                    done,
                },
            );
        }
        {
            // Sent now if the link is up and a reconnection has not sent
            // it already; else the link task sends it when it is back.
            let alive = lock(&self.shared.link_alive).clone();
            let mut writer = tokio::select! {
                writer = self.shared.writer.lock() => writer,
                () = alive.cancelled() => self.shared.writer.lock().await,
            };
            if let Some(write) = writer.as_mut() {
                let unsent = {
                    let mut pending = lock(&self.shared.pending);
                    match pending.get_mut(&cookie) {
                        Some(p) if !p.sent => {
                            p.sent = true;
                            true
                        }
                        _ => false,
                    }
                };
                let failed = unsent
                    && (write.write_all(&message).await.is_err() || write.flush().await.is_err());
                if failed {
                    // The link task sees the break and resends or fails it.
                    *writer = None;
                }
            }
        }
        self.shared.keep_spare(message);
        completed
            .await
            .unwrap_or_else(|_| Err(broken("the connection closed")))
    }
}

/// Spare message buffers kept, and the largest kept.
const SPARE_MESSAGES: usize = 16;
const SPARE_MESSAGE_CAPACITY: usize = 4 << 20;

impl Shared {
    fn keep_spare(&self, mut message: Vec<u8>) {
        if message.capacity() > SPARE_MESSAGE_CAPACITY {
            return;
        }
        message.clear();
        let mut spare = lock(&self.spare_messages);
        if spare.len() < SPARE_MESSAGES {
            spare.push(message);
        }
    }
}

/// A request's bytes on the wire into `message` (empty): its header, then
/// a write's payload.
fn encode(
    mode: ReplyMode,
    cookie: u64,
    request: &Request,
    message: &mut Vec<u8>,
) -> BlockResult<()> {
    let payload_len = request.payload.as_ref().map_or(0, IoBuf::len);
    message.reserve(EXTENDED_REQUEST_LEN + payload_len);
    if mode == ReplyMode::Extended {
        message.extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        message.extend_from_slice(&request.flags.to_be_bytes());
        message.extend_from_slice(&request.command.to_be_bytes());
        message.extend_from_slice(&cookie.to_be_bytes());
        message.extend_from_slice(&request.offset.to_be_bytes());
        message.extend_from_slice(&request.length.to_be_bytes());
    } else {
        let length = u32::try_from(request.length).map_err(|_| {
            BlockError::new(ErrorKind::TooLarge, "request too long for compact headers")
        })?;
        message.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        message.extend_from_slice(&request.flags.to_be_bytes());
        message.extend_from_slice(&request.command.to_be_bytes());
        message.extend_from_slice(&cookie.to_be_bytes());
        message.extend_from_slice(&request.offset.to_be_bytes());
        message.extend_from_slice(&length.to_be_bytes());
    }
    if let Some(payload) = &request.payload {
        let start = message.len();
        message.resize(start + payload_len, 0);
        payload.copy_to_slice(0, &mut message[start..]);
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn broken(reason: &str) -> BlockError {
    BlockError::new(ErrorKind::Io, format!("NBD connection broken: {reason}")).with_errno(libc::EIO)
}

/// The error an NBD error number stands for.
fn nbd_error(code: u32, message: &str) -> BlockError {
    let (kind, errno) = match code {
        EPERM => (ErrorKind::PermissionDenied, libc::EPERM),
        ENOMEM => (ErrorKind::Io, libc::ENOMEM),
        EINVAL => (ErrorKind::InvalidArgument, libc::EINVAL),
        ENOSPC => (ErrorKind::NoSpace, libc::ENOSPC),
        EOVERFLOW => (ErrorKind::TooLarge, libc::EOVERFLOW),
        ENOTSUP => (ErrorKind::NotSupported, libc::ENOTSUP),
        ESHUTDOWN => (ErrorKind::Io, libc::ESHUTDOWN),
        _ => (ErrorKind::Io, libc::EIO),
    };
    let message = if message.is_empty() {
        format!("NBD server error {code}")
    } else {
        message.to_string()
    };
    BlockError::new(kind, message).with_errno(errno)
}

/// Pause between two attempts to reconnect.
const REDIAL_PAUSE: Duration = Duration::from_millis(200);

/// The link task: replies until the link breaks; then, with `redial`, a
/// new link within its delay, on which every request in flight is sent
/// again; without, or past the delay, every request fails.
async fn run_link(
    mut read: Box<dyn AsyncRead + Send + Unpin>,
    shared: Arc<Shared>,
    mode: ReplyMode,
    redial: Option<Redial>,
) {
    // Read data passes through here on its way to the request's buffer.
    let mut scratch = Vec::new();
    loop {
        let reason = loop {
            if let Err(e) = read_reply(&mut read, &shared, mode, &mut scratch).await {
                break e.to_string();
            }
        };
        // Writers stuck on the dead link let go of it.
        let dead = std::mem::take(&mut *lock(&shared.link_alive));
        dead.cancel();
        let mut writer = shared.writer.lock().await;
        *writer = None;
        // The old link is closed before a new one is dialed: a server that
        // waits for its clients to leave before it exits does exit.
        drop(read);
        for pending in lock(&shared.pending).values_mut() {
            pending.sent = false;
        }
        let link = loop {
            let Some(link) = reconnect(redial.as_ref()).await else {
                drop(writer);
                fail_all(&shared, &reason);
                return;
            };
            let mut write = link.write;
            if resend(&shared, mode, &mut write).await.is_ok() {
                break Link {
                    read: link.read,
                    write,
                };
            }
        };
        tracing::info!("NBD connection re-established after: {reason}");
        *writer = Some(link.write);
        read = link.read;
    }
}

/// A new link, if `redial` allows and one comes within its delay.
async fn reconnect(redial: Option<&Redial>) -> Option<Link> {
    let redial = redial?;
    let deadline = tokio::time::Instant::now() + redial.delay;
    loop {
        let attempt = tokio::time::timeout_at(deadline, (redial.dial)());
        match attempt
            .await
            .unwrap_or_else(|_| Err(io::Error::other("timed out")))
        {
            Ok(link) => return Some(link),
            Err(e) if tokio::time::Instant::now() + REDIAL_PAUSE < deadline => {
                tracing::debug!("NBD reconnection failed: {e}");
                tokio::time::sleep(REDIAL_PAUSE).await;
            }
            Err(_) => return None,
        }
    }
}

/// Sends every request still in flight, oldest first, on a new link.
async fn resend(
    shared: &Shared,
    mode: ReplyMode,
    write: &mut Box<dyn AsyncWrite + Send + Unpin>,
) -> io::Result<()> {
    let messages: Vec<Vec<u8>> = {
        let mut pending = lock(&shared.pending);
        let mut cookies: Vec<u64> = pending.keys().copied().collect();
        cookies.sort_unstable();
        let mut messages = Vec::new();
        for cookie in cookies {
            let Some(p) = pending.get_mut(&cookie) else {
                continue;
            };
            p.sent = true;
            p.completion = Completion::default();
            p.error = None;
            let mut message = Vec::new();
            match encode(mode, cookie, &p.request, &mut message) {
                Ok(()) => messages.push(message),
                Err(e) => {
                    if let Some(p) = pending.remove(&cookie) {
                        let _ = p.done.send(Err(e));
                    }
                }
            }
        }
        messages
    };
    for message in messages {
        write.write_all(&message).await?;
    }
    write.flush().await
}

/// Fails every request in flight, and every later one.
fn fail_all(shared: &Shared, reason: &str) {
    let pending: Vec<Pending> = {
        let mut pending = lock(&shared.pending);
        *lock(&shared.broken) = Some(reason.to_string());
        pending.drain().map(|(_, p)| p).collect()
    };
    for request in pending {
        let _ = request.done.send(Err(broken(reason)));
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one reply (simple) or chunk (structured, extended) and applies it.
async fn read_reply(
    read: &mut Box<dyn AsyncRead + Send + Unpin>,
    shared: &Shared,
    mode: ReplyMode,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    let magic = read.read_u32().await?;
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let error = read.read_u32().await?;
            let cookie = read.read_u64().await?;
            let mut pending = take(shared, cookie)?;
            if error != 0 {
                return finish(shared, cookie, pending, Err(nbd_error(error, "")));
            }
            if let Some((buf, _)) = pending.read_target() {
                read_payload(read, buf, 0, buf.len(), scratch).await?;
            }
            let _ = pending
                .done
                .send(Ok(std::mem::take(&mut pending.completion)));
            Ok(())
        }
        STRUCTURED_REPLY_MAGIC | EXTENDED_REPLY_MAGIC => {
            let extended = magic == EXTENDED_REPLY_MAGIC;
            if extended != (mode == ReplyMode::Extended) {
                return Err(invalid("reply header of the wrong kind"));
            }
            let flags = read.read_u16().await?;
            let kind = read.read_u16().await?;
            let cookie = read.read_u64().await?;
            let length = if extended {
                let _offset = read.read_u64().await?;
                read.read_u64().await?
            } else {
                u64::from(read.read_u32().await?)
            };
            let mut pending = take(shared, cookie)?;
            apply_chunk(read, &mut pending, kind, length, extended, scratch).await?;
            if flags & REPLY_FLAG_DONE != 0 {
                let result = match pending.error.take() {
                    Some(error) => Err(error),
                    None => Ok(std::mem::take(&mut pending.completion)),
                };
                finish(shared, cookie, pending, result)?;
            } else {
                lock(&shared.pending).insert(cookie, pending);
            }
            Ok(())
        }
        _ => Err(invalid("bad reply magic")),
    }
}

/// Completes a request, unless the server refused it only because it is
/// shutting down and the node reconnects: then it waits for the next link,
/// and this one is given up (an error the link task takes as a break).
fn finish(
    shared: &Shared,
    cookie: u64,
    mut pending: Pending,
    result: BlockResult<Completion>,
) -> io::Result<()> {
    let shutting_down = matches!(&result, Err(e) if e.errno() == libc::ESHUTDOWN);
    if shutting_down && shared.retry_shutdown {
        pending.sent = false;
        pending.completion = Completion::default();
        lock(&shared.pending).insert(cookie, pending);
        return Err(io::Error::other("the server is shutting down"));
    }
    let _ = pending.done.send(result);
    Ok(())
}

fn take(shared: &Shared, cookie: u64) -> io::Result<Pending> {
    lock(&shared.pending)
        .remove(&cookie)
        .ok_or_else(|| invalid("a reply to no request"))
}

/// Applies one chunk's payload of `length` bytes to its request.
async fn apply_chunk<R: AsyncRead + Unpin>(
    read: &mut R,
    pending: &mut Pending,
    kind: u16,
    length: u64,
    extended: bool,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    match kind {
        REPLY_TYPE_NONE if length == 0 => Ok(()),
        REPLY_TYPE_OFFSET_DATA => {
            let offset = read.read_u64().await?;
            let data_len = length
                .checked_sub(8)
                .ok_or_else(|| invalid("short data chunk"))?;
            let (buf, start) = pending
                .read_target()
                .ok_or_else(|| invalid("data for a request that reads nothing"))?;
            let at = offset
                .checked_sub(start)
                .filter(|at| at + data_len <= buf.len() as u64)
                .ok_or_else(|| invalid("data chunk outside the request"))?;
            read_payload(read, buf, at as usize, data_len as usize, scratch).await
        }
        REPLY_TYPE_OFFSET_HOLE if length == 12 => {
            let offset = read.read_u64().await?;
            let hole = u64::from(read.read_u32().await?);
            let (buf, start) = pending
                .read_target()
                .ok_or_else(|| invalid("a hole for a request that reads nothing"))?;
            let at = offset
                .checked_sub(start)
                .filter(|at| at + hole <= buf.len() as u64)
                .ok_or_else(|| invalid("hole chunk outside the request"))?;
            buf.slice(at as usize..(at + hole) as usize).fill_zeroes();
            Ok(())
        }
        REPLY_TYPE_BLOCK_STATUS | REPLY_TYPE_BLOCK_STATUS_EXT => {
            let payload = read_bounded(read, length).await?;
            let wide = kind == REPLY_TYPE_BLOCK_STATUS_EXT;
            if wide != extended {
                return Err(invalid("block status chunk of the wrong kind"));
            }
            pending.completion.extents = parse_extents(&payload, wide)?;
            Ok(())
        }
        REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
            let payload = read_bounded(read, length).await?;
            if payload.len() < 6 {
                return Err(invalid("short error chunk"));
            }
            let code = u32::from_be_bytes(payload[0..4].try_into().expect("4"));
            let len = usize::from(u16::from_be_bytes(payload[4..6].try_into().expect("2")));
            let message = payload
                .get(6..6 + len)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            pending
                .error
                .get_or_insert_with(|| nbd_error(code, &message));
            Ok(())
        }
        _ => Err(invalid("unknown reply chunk")),
    }
}

/// The most read data that passes through the link task's scratch buffer
/// at once.
const SCRATCH_LEN: usize = 1 << 20;

/// Reads `len` bytes of data into `buf` at `at`, through `scratch` (kept
/// by the link task: a fresh buffer per reply would be a new mapping and a
/// page fault per page for every large read).
async fn read_payload<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &IoBuf,
    at: usize,
    len: usize,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let step = (len - done).min(SCRATCH_LEN);
        if scratch.len() < step {
            scratch.resize(step, 0);
        }
        read.read_exact(&mut scratch[..step]).await?;
        buf.copy_from_slice(at + done, &scratch[..step]);
        done += step;
    }
    Ok(())
}

async fn read_bounded<R: AsyncRead + Unpin>(read: &mut R, length: u64) -> io::Result<Vec<u8>> {
    if length > MAX_CHUNK_META as u64 {
        return Err(invalid("reply chunk too long"));
    }
    let mut payload = vec![0; length as usize];
    read.read_exact(&mut payload).await?;
    Ok(payload)
}

/// A block status payload: the context id, then (length, flags) pairs of
/// 32 bits, or with extended headers a count and pairs of 64 bits.
fn parse_extents(payload: &[u8], wide: bool) -> io::Result<Vec<(u64, u32)>> {
    let (start, step) = if wide { (8, 16) } else { (4, 8) };
    let descriptors = payload
        .get(start..)
        .ok_or_else(|| invalid("short block status chunk"))?
        .chunks_exact(step);
    if !descriptors.remainder().is_empty() {
        return Err(invalid("malformed block status chunk"));
    }
    let extents = descriptors.map(|d| {
        if wide {
            let length = u64::from_be_bytes(d[..8].try_into().expect("8"));
            let flags = u64::from_be_bytes(d[8..].try_into().expect("8"));
            (length, flags as u32)
        } else {
            let length = u32::from_be_bytes(d[..4].try_into().expect("4"));
            let flags = u32::from_be_bytes(d[4..].try_into().expect("4"));
            (u64::from(length), flags)
        }
    });
    Ok(extents.collect())
}

/// The first extent of a `base:allocation` reply as the node reports it.
pub fn extent_of(extents: &[(u64, u32)], limit: u64) -> Option<Extent> {
    let &(length, flags) = extents.first()?;
    let hole = flags & STATE_HOLE != 0;
    Some(Extent {
        length: length.min(limit),
        data: !hole,
        zero: flags & STATE_ZERO != 0,
        depth: u32::from(!hole),
    })
}

//! One client connection: the handshake under its time limit, then the
//! transmission phase.
//!
//! The reader (this task) decodes requests and reads write payloads; each
//! checked request runs in its own task, so requests proceed concurrently
//! and complete in any order; replies go to the connection's single writer
//! task. In-flight requests and their buffered bytes are bounded: at the
//! bound the reader stops reading, which pushes back on the client.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::buffers::BufferPool;
use super::codec::Request;
use super::dispatch::{self, CACHE_CHUNK};
use super::export::ClientGuard;
use super::handshake::{negotiate, HandshakeConfig, Outcome, Session};
use super::proto::*;
use super::reply::{InFlight, Reply};
use super::request::{self, Limits, MAX_PAYLOAD};
use super::writer::write_replies;

/// Requests of one connection being processed or waiting for their reply
/// to be written.
pub const MAX_IN_FLIGHT_REQUESTS: u32 = 256;
/// Payload bytes (write data and read replies) one connection may hold.
pub const MAX_IN_FLIGHT_BYTES: u32 = 64 << 20;
/// Socket read buffering: many request headers per system call.
const READ_BUFFER_LEN: usize = 128 << 10;
/// Chunk size for discarding an unwanted payload.
const DRAIN_CHUNK: usize = 64 << 10;

const _: () = assert!(MAX_PAYLOAD <= MAX_IN_FLIGHT_BYTES as u64);

/// What a connection needs from its server.
pub struct ConnectionConfig {
    pub handshake: HandshakeConfig,
    /// `None` for no limit.
    pub handshake_limit: Option<Duration>,
    /// Fires when the server stops.
    pub stop: CancellationToken,
    /// Request handlers are tracked so that a stop can wait for them.
    pub tasks: TaskTracker,
}

/// Serves one client until it leaves, breaks the protocol, or is told to go.
pub async fn serve<R, W>(read: R, mut write: W, config: Arc<ConnectionConfig>, peer: &str)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = BufReader::with_capacity(READ_BUFFER_LEN, read);
    let handshake = negotiate(&mut reader, &mut write, &config.handshake);
    let limited = async {
        match config.handshake_limit {
            Some(limit) => tokio::time::timeout(limit, handshake).await.ok(),
            None => Some(handshake.await),
        }
    };
    let outcome = tokio::select! {
        _ = config.stop.cancelled() => return,
        outcome = limited => outcome,
    };
    match outcome {
        None => tracing::info!(peer, "NBD client dropped: handshake took too long"),
        Some(Err(e)) => tracing::info!(peer, "NBD client dropped: {e}"),
        Some(Ok(Outcome::Aborted)) => tracing::debug!(peer, "NBD client aborted the handshake"),
        Some(Ok(Outcome::Transmission(session))) => {
            let export = session.client.export().name().to_string();
            tracing::debug!(peer, export, "NBD client entered transmission");
            transmit(reader, write, session, &config.tasks).await;
            tracing::debug!(peer, export, "NBD client gone");
        }
    }
}

/// The state request handlers share.
struct Shared {
    cx: dispatch::Context,
    limits: Limits,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    /// Keeps the export's client count up until the last handler is done.
    _client: ClientGuard,
}

/// How the request loop ended.
enum End {
    /// End of file or `NBD_CMD_DISC`: finish what is in flight, then close.
    Drain,
    /// Server stop, export deletion or writer failure.
    Cancelled,
    /// The client broke the protocol or the socket failed.
    Fatal(String),
}

async fn transmit<R, W>(
    mut reader: BufReader<R>,
    mut writer: W,
    session: Session,
    tasks: &TaskTracker,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let export = Arc::clone(session.client.export());
    let stop = export.disconnect_token().child_token();
    let has_contexts = !session.contexts.is_empty();
    let shared = Arc::new(Shared {
        cx: dispatch::Context {
            backend: export.backend().clone(),
            meta: export.meta().clone(),
            mode: session.mode,
            writethrough: export.writethrough(),
            contexts: session.contexts,
            buffers: BufferPool::new(),
        },
        limits: Limits {
            mode: session.mode,
            size: export.size(),
            writable: export.writable(),
            alignment: session.alignment,
            has_contexts,
        },
        requests: Arc::new(Semaphore::new(MAX_IN_FLIGHT_REQUESTS as usize)),
        bytes: Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES as usize)),
        _client: session.client,
    });
    let (replies, mut queue) = mpsc::unbounded_channel();
    let writer_stop = stop.clone();
    let writer_task = tokio::spawn(async move {
        tokio::select! {
            _ = writer_stop.cancelled() => {}
            result = write_replies(&mut writer, &mut queue) => {
                if let Err(e) = result {
                    tracing::debug!("NBD reply write failed: {e}");
                    writer_stop.cancel();
                }
            }
        }
    });
    let end = read_requests(&mut reader, &shared, &replies, &stop, tasks).await;
    match end {
        End::Drain => {
            let all = shared
                .requests
                .clone()
                .acquire_many_owned(MAX_IN_FLIGHT_REQUESTS);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = all => {}
            }
        }
        End::Cancelled => {}
        End::Fatal(reason) => {
            tracing::info!("NBD client disconnected: {reason}");
            stop.cancel();
        }
    }
    drop(replies);
    drop(shared);
    let _ = writer_task.await;
}

async fn read_requests<R>(
    reader: &mut BufReader<R>,
    shared: &Arc<Shared>,
    replies: &UnboundedSender<Reply>,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) -> End
where
    R: AsyncRead + Unpin,
{
    let mode = shared.limits.mode;
    let mut header = [0; EXTENDED_REQUEST_LEN];
    loop {
        let header = &mut header[..mode.request_len()];
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => return End::Cancelled,
            read = read_header(reader, header) => read,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return End::Drain,
            Err(e) => return End::Fatal(format!("reading a request failed: {e}")),
        }
        let req = match Request::decode(mode, header) {
            Ok(req) => req,
            Err(bad) => return End::Fatal(format!("invalid magic (got {:#x})", bad.0)),
        };
        if req.command == CMD_DISC {
            return End::Drain;
        }
        let payload_len = request::payload_len(&req, mode);
        if payload_len > MAX_PAYLOAD {
            return End::Fatal(format!(
                "payload of {payload_len} bytes is larger than the maximum ({MAX_PAYLOAD})"
            ));
        }
        let in_flight = tokio::select! {
            _ = stop.cancelled() => return End::Cancelled,
            permits = reserve(shared, &req, payload_len) => permits,
        };
        let Some(in_flight) = in_flight else {
            return End::Cancelled;
        };
        let payload = if payload_len == 0 {
            None
        } else if req.command == CMD_WRITE {
            let mut buffer = shared.cx.buffers.get(payload_len as usize);
            let read = tokio::select! {
                _ = stop.cancelled() => return End::Cancelled,
                read = reader.read_exact(buffer.as_mut()) => read,
            };
            if let Err(e) = read {
                return End::Fatal(format!("reading write data failed: {e}"));
            }
            Some(buffer)
        } else {
            let drained = tokio::select! {
                _ = stop.cancelled() => return End::Cancelled,
                drained = drain(reader, payload_len) => drained,
            };
            if let Err(e) = drained {
                return End::Fatal(format!("reading request payload failed: {e}"));
            }
            None
        };
        match request::check(&req, &shared.limits) {
            Err(rejection) => {
                let mut reply = Reply::error(mode, &req, rejection.error, &rejection.message);
                reply.hold(in_flight);
                // A closed channel means the writer is gone; the stop
                // token then ends this loop.
                let _ = replies.send(reply);
            }
            Ok(command) => {
                let shared = Arc::clone(shared);
                let replies = replies.clone();
                tasks.spawn(async move {
                    let mut reply = dispatch::execute(&shared.cx, &req, command, payload).await;
                    reply.hold(in_flight);
                    let _ = replies.send(reply);
                });
            }
        }
    }
}

/// Takes the request's share of the in-flight limits, waiting for room
/// (`None` only if the limits were torn down).
async fn reserve(shared: &Shared, req: &Request, payload_len: u64) -> Option<InFlight> {
    let reply_len = match req.command {
        CMD_READ if req.length <= MAX_PAYLOAD => req.length,
        CMD_CACHE => req.length.min(CACHE_CHUNK),
        _ => 0,
    };
    let bytes = payload_len.max(reply_len) as u32;
    let request = shared.requests.clone().acquire_owned().await.ok()?;
    let bytes = if bytes > 0 {
        Some(shared.bytes.clone().acquire_many_owned(bytes).await.ok()?)
    } else {
        None
    };
    Some(InFlight::new(request, bytes))
}

/// Fills `header`; `Ok(false)` on end of file before its first byte.
async fn read_header<R: AsyncRead + Unpin>(reader: &mut R, header: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < header.len() {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}

/// Reads and drops `len` bytes.
async fn drain<R: AsyncRead + Unpin>(reader: &mut R, mut len: u64) -> io::Result<()> {
    let mut scratch = vec![0; DRAIN_CHUNK.min(len as usize)];
    while len > 0 {
        let n = (len as usize).min(scratch.len());
        reader.read_exact(&mut scratch[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

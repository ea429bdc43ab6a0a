//! The transmission phase of one connection, in one task: it reads
//! requests, runs them, and is the only writer of the socket.
//!
//! Small reads and writes run inline: their backend call usually completes
//! on its first poll (a page-cache hit), and then no other task or thread
//! is involved. Larger requests, and those whose first poll has to wait,
//! run in tasks of their own on the daemon's runtime and send their reply
//! back, so requests proceed concurrently and complete in any order. If an
//! inline request's I/O went to the blocking pool (a backend that waits
//! for a disk, such as `O_DIRECT` files or page-cache misses), requests
//! are spawned for a while, so that they wait in parallel.
//!
//! Requests in flight and the payload bytes they hold are bounded; at the
//! bound the loop stops reading, which pushes back on the client. When
//! nothing is in flight, the loop may poll the socket for a moment before
//! it sleeps (`poll`).

use std::future::{poll_fn, Future};
use std::ops::ControlFlow;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{ReplyMode, Request};
use super::connection::ConnectionConfig;
use super::dispatch::{self, CACHE_CHUNK};
use super::export::ClientGuard;
use super::handshake::Session;
use super::input::Input;
use super::placement::Placement;
use super::poll::{poll_now, AdaptivePoll, NonBlocking};
use super::proto::*;
use super::reply::Reply;
use super::request::{self, Command, Limits, MAX_PAYLOAD};
use super::splice::{SpliceSink, Transport};
use super::status;
use super::vectored::ReadVectored;
use super::writer::{ReplyQueue, Sent};
use crate::buffers::{Buffer, BufferPool};
use crate::trace::{NBD_CO_RECEIVE_REQUEST_DECODE_TYPE, NBD_RECEIVE_REQUEST};

/// Requests of one connection being processed or waiting for their reply
/// to be written.
pub const MAX_IN_FLIGHT_REQUESTS: u32 = 256;
/// Payload bytes (write data and read replies) one connection may hold.
pub const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Payload bytes all connections together may hold beyond each one's
/// first request (which is always let through, so that every connection
/// goes on).
pub const MAX_IN_FLIGHT_BYTES_TOTAL: u64 = 512 << 20;

/// Payload bytes in flight on all connections.
static IN_FLIGHT_BYTES_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Reads at most this long are tried inline.
const INLINE_READ_MAX_LEN: u64 = 64 << 10;
/// Writes at most this long are tried inline: the payload was just
/// received into this thread's cache, and copying it to the file here
/// costs a fifth less CPU than on a worker thread that reads it from
/// another CPU's (`nbdcopy`'s 256 KiB writes, measured against nbdkit in
/// docs/benchmarks.md). Longer ones are spawned so that one request does
/// not hold the loop's other connections for long.
const INLINE_WRITE_MAX_LEN: u64 = 4 << 20;
/// Writes at least this long are read without buffering what follows
/// their header (the next one is probably as long).
const STREAMED_WRITE_LEN: u64 = 64 << 10;
/// Requests spawned after an inline one waited for a disk before inline
/// is tried again.
const SPAWNED_AFTER_BLOCKING: u32 = 256;

const _: () = assert!(MAX_PAYLOAD <= MAX_IN_FLIGHT_BYTES);

/// What request handlers share; the client guard keeps the export's
/// client count up until the last handler is done.
struct Shared {
    cx: dispatch::Context,
    limits: Limits,
    _client: ClientGuard,
}

type Running = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Serves requests until the client disconnects, breaks the protocol, or
/// the export's clients are told to go.
pub async fn run<R, W>(
    mut reader: R,
    leftover: &[u8],
    mut writer: W,
    session: Session,
    config: &ConnectionConfig,
    placement: Placement,
) where
    R: ReadVectored + Send + 'static,
    W: Transport + 'static,
{
    let export = Arc::clone(session.client.export());
    let stop = export.disconnect_token().child_token();
    let input = Input::new(leftover);
    let contexts = session.contexts.len();
    let shared = Arc::new(Shared {
        cx: dispatch::Context {
            backend: export.backend().clone(),
            meta: export.meta().clone(),
            mode: session.mode,
            contexts: session.contexts,
            buffers: BufferPool::new(),
            splice: writer.raw().is_some(),
        },
        limits: Limits {
            mode: session.mode,
            size: export.size(),
            writable: export.writable(),
            alignment: session.alignment,
            contexts,
        },
        _client: session.client,
    });
    let (done, mut finished) = mpsc::unbounded_channel();
    let mut requests = Requests {
        shared,
        input,
        incoming: Incoming::Header,
        out: ReplyQueue::default(),
        budget: Budget::default(),
        done,
        tasks: config.tasks.clone(),
        runtime: config.runtime.clone(),
        large_write_last: false,
        over_budget: false,
        spawn_streak: 0,
        spawned: 0,
        gone: CancellationToken::new(),
    };
    let _cancel_when_gone = requests.gone.clone().drop_guard();
    let mut poll = AdaptivePoll::new(placement, export.poll_limit());
    // Waited on in every pass; made once (each new one would join and
    // leave the token's list of waiters).
    let mut stopped = pin!(stop.cancelled());
    loop {
        if let Err(reason) = requests.take().await {
            tracing::info!("NBD client disconnected: {reason}");
            return;
        }
        if requests.finished() {
            return;
        }
        let can_read = requests.wants_input();
        let streaming = requests
            .large_write_last
            .then(|| requests.shared.limits.mode.request_len());
        // Polling reads the socket itself: only without a layer above it.
        let raw = writer
            .raw()
            .filter(|_| can_read && requests.waits_for_client());
        if let Some(raw) = raw {
            let socket = raw.socket_fd();
            let mut drained = false;
            let polled = poll.poll(|| {
                let mut source = NonBlocking::new(socket);
                let read = poll_now(read_more(
                    &mut source,
                    &mut requests.input,
                    &mut requests.incoming,
                    streaming,
                ));
                drained = source.drained();
                read
            });
            if drained {
                raw.forget_readable();
            }
            if let Some(read) = polled {
                if requests.received(read).is_break() {
                    return;
                }
                continue;
            }
        }
        let Requests {
            input,
            incoming,
            out,
            budget,
            spawned,
            ..
        } = &mut requests;
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            Some(reply) = finished.recv(), if *spawned > 0 => {
                *spawned -= 1;
                out.push(reply);
            }
            sent = out.write_some(&mut writer), if !out.is_empty() => match sent {
                Ok(sent) => budget.release(sent),
                Err(e) => {
                    tracing::debug!("NBD reply write failed: {e}");
                    return;
                }
            },
            read = read_more(&mut reader, input, incoming, streaming), if can_read => {
                poll.slept();
                if requests.received(read).is_break() {
                    return;
                }
            }
        }
    }
}

/// Where the request stream is.
enum Incoming {
    /// Between requests.
    Header,
    /// Collecting the payload of `req`: into `buffer` for a write, dropped
    /// otherwise.
    Payload {
        req: Request,
        buffer: Option<Buffer>,
        filled: u64,
        len: u64,
        cost: u64,
    },
    /// End of file or `NBD_CMD_DISC`: no more requests.
    Finished,
}

impl Incoming {
    fn is_boundary(&self) -> bool {
        matches!(self, Incoming::Header)
    }
}

/// Requests in flight and the payload bytes they hold, on this connection
/// and (through `total`) on all of them.
struct Budget {
    requests: u32,
    bytes: u64,
    total: &'static AtomicU64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            requests: 0,
            bytes: 0,
            total: &IN_FLIGHT_BYTES_TOTAL,
        }
    }
}

impl Budget {
    /// Whether a request costing `cost` may start: always the first one
    /// (a connection waits for its own replies to go out, so it must have
    /// one), others within this connection's and the daemon's bounds.
    fn fits(&self, cost: u64) -> bool {
        if self.bytes == 0 {
            return self.requests < MAX_IN_FLIGHT_REQUESTS;
        }
        self.requests < MAX_IN_FLIGHT_REQUESTS
            && self.bytes + cost <= MAX_IN_FLIGHT_BYTES
            && self.total.load(Ordering::Relaxed) + cost <= MAX_IN_FLIGHT_BYTES_TOTAL
    }

    fn take(&mut self, cost: u64) {
        self.requests += 1;
        self.bytes += cost;
        self.total.fetch_add(cost, Ordering::Relaxed);
    }

    fn release(&mut self, sent: Sent) {
        self.requests -= sent.replies;
        self.bytes -= sent.cost;
        self.total.fetch_sub(sent.cost, Ordering::Relaxed);
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        // What a connection that ends still held (replies never sent).
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The request side of the loop.
struct Requests {
    shared: Arc<Shared>,
    input: Input,
    incoming: Incoming,
    out: ReplyQueue,
    budget: Budget,
    /// Replies of spawned requests come back through this.
    done: UnboundedSender<Reply>,
    tasks: TaskTracker,
    /// Where spawned requests run.
    runtime: Handle,
    /// The last request was a large write: another likely follows, whose
    /// payload should not pass through the input buffer.
    large_write_last: bool,
    /// The next request waits for in-flight payload bytes to be released.
    over_budget: bool,
    /// Requests still to spawn without trying inline first.
    spawn_streak: u32,
    /// Requests running in tasks of their own, whose replies are still to
    /// come back through `done`.
    spawned: u32,
    /// Cancelled when the client closes its end or the connection ends:
    /// reads, block status and cache requests still running stop (nobody
    /// will receive their replies); writes finish.
    gone: CancellationToken,
}

impl Requests {
    /// Whether reading more input can make progress.
    fn wants_input(&self) -> bool {
        match &self.incoming {
            Incoming::Header => {
                self.budget.requests < MAX_IN_FLIGHT_REQUESTS
                    && !self.over_budget
                    && !self.input.is_full()
            }
            Incoming::Payload { .. } => true,
            Incoming::Finished => false,
        }
    }

    /// Whether the connection waits for its client alone, between
    /// requests: nothing in flight, no reply to send. (Not while a payload
    /// arrives: its client sends the rest when it next runs, and a loop
    /// spinning meanwhile may hold the very CPU it needs.)
    fn waits_for_client(&self) -> bool {
        matches!(self.incoming, Incoming::Header)
            && self.out.is_empty()
            && self.budget.requests == 0
    }

    /// Takes the outcome of reading the socket; `Break` drops the client.
    fn received(&mut self, read: std::io::Result<usize>) -> ControlFlow<()> {
        match read {
            Ok(0) if self.incoming.is_boundary() && self.input.is_empty() => {
                // The client stopped talking without NBD_CMD_DISC: it will
                // not read what its reads return either. Writes finish.
                self.incoming = Incoming::Finished;
                self.gone.cancel();
            }
            Ok(0) => {
                tracing::info!("NBD client disconnected in the middle of a request");
                return ControlFlow::Break(());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!("NBD client connection failed: {e}");
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// After `NBD_CMD_DISC` or end of file, everything answered.
    fn finished(&self) -> bool {
        matches!(self.incoming, Incoming::Finished) && self.budget.requests == 0
    }

    /// Decodes and starts every request the buffered input holds, as far
    /// as the budget allows. An error is a reason to drop the client.
    async fn take(&mut self) -> Result<(), String> {
        self.over_budget = false;
        loop {
            match &mut self.incoming {
                Incoming::Finished => return Ok(()),
                Incoming::Header => {
                    let mode = self.shared.limits.mode;
                    let header_len = mode.request_len();
                    if self.input.buffered().len() < header_len {
                        return Ok(());
                    }
                    let req = Request::decode(mode, &self.input.buffered()[..header_len])
                        .map_err(|bad| format!("invalid magic (got {:#x})", bad.0))?;
                    trace_request(&req, mode);
                    if req.command == CMD_DISC {
                        self.input.consume(header_len);
                        self.incoming = Incoming::Finished;
                        return Ok(());
                    }
                    let payload_len = request::payload_len(&req, mode);
                    if payload_len > MAX_PAYLOAD {
                        return Err(format!(
                            "payload of {payload_len} bytes is larger than the maximum ({MAX_PAYLOAD})"
                        ));
                    }
                    let cost = cost(&req, payload_len, self.shared.limits.contexts);
                    self.over_budget = !self.budget.fits(cost);
                    if self.over_budget {
                        return Ok(());
                    }
                    self.input.consume(header_len);
                    self.budget.take(cost);
                    self.large_write_last =
                        req.command == CMD_WRITE && payload_len >= STREAMED_WRITE_LEN;
                    if payload_len == 0 {
                        self.start(req, None, cost).await;
                        continue;
                    }
                    let buffer = (req.command == CMD_WRITE)
                        .then(|| self.shared.cx.buffers.get(payload_len as usize));
                    self.incoming = Incoming::Payload {
                        req,
                        buffer,
                        filled: 0,
                        len: payload_len,
                        cost,
                    };
                }
                Incoming::Payload {
                    buffer,
                    filled,
                    len,
                    ..
                } => {
                    *filled += match buffer {
                        Some(buffer) => self
                            .input
                            .take_into(&mut buffer.as_mut()[*filled as usize..]),
                        None => self.input.skip(*len - *filled),
                    } as u64;
                    if filled < len {
                        return Ok(());
                    }
                    let Incoming::Payload {
                        req, buffer, cost, ..
                    } = std::mem::replace(&mut self.incoming, Incoming::Header)
                    else {
                        unreachable!("matched above")
                    };
                    self.start(req, buffer, cost).await;
                }
            }
        }
    }

    /// Checks and starts one request.
    async fn start(&mut self, req: Request, payload: Option<Buffer>, cost: u64) {
        let command = match request::check(&req, &self.shared.limits) {
            Ok(command) => command,
            Err(rejection) => {
                if let Some(kind) = request::io_kind(req.command) {
                    self.shared.cx.backend.stats().count_invalid(kind);
                }
                let mut reply = Reply::error(
                    self.shared.limits.mode,
                    &req,
                    rejection.error,
                    &rejection.message,
                );
                reply.set_cost(cost as u32);
                self.out.push(reply);
                return;
            }
        };
        let shared = Arc::clone(&self.shared);
        let mut running: Running = Box::pin(async move {
            let mut reply = dispatch::execute(&shared.cx, &req, command, payload).await;
            reply.set_cost(cost as u32);
            reply
        });
        if self.spawn_streak == 0 && runs_inline(&req, command) {
            let handed_over = block::blocking::handed_over();
            let polled = poll_fn(|cx| Poll::Ready(running.as_mut().poll(cx))).await;
            // A request whose I/O went to the blocking pool says the data
            // is not in memory: the next ones go straight to the runtime
            // for a while. One whose thread slept on a lock does not (two
            // loops writing one file meet on its inode's lock; on a worker
            // the write would wait for it all the same, and copy the
            // payload from another CPU's cache).
            if block::blocking::handed_over() > handed_over {
                self.spawn_streak = SPAWNED_AFTER_BLOCKING;
            }
            if let Poll::Ready(reply) = polled {
                self.out.push(reply);
                return;
            }
        } else {
            self.spawn_streak = self.spawn_streak.saturating_sub(1);
        }
        let done = self.done.clone();
        let gone = command.only_reads().then(|| self.gone.clone());
        let mode = self.shared.limits.mode;
        let handler = async move {
            let reply = match gone {
                Some(gone) => tokio::select! {
                    reply = running => reply,
                    // Still answered, so that the request leaves the budget.
                    () = gone.cancelled() => {
                        let mut reply = Reply::error(mode, &req, ESHUTDOWN, "client gone");
                        reply.set_cost(cost as u32);
                        reply
                    }
                },
                None => running.await,
            };
            // A closed channel means the connection is gone.
            let _ = done.send(reply);
        };
        self.tasks.spawn_on(handler, &self.runtime);
        self.spawned += 1;
    }
}

/// Reads and writes that usually complete without waiting (a write with
/// FUA waits for the disk); one that would wait goes on in a task.
fn runs_inline(req: &Request, command: Command) -> bool {
    match command {
        Command::Read { .. } => req.length <= INLINE_READ_MAX_LEN,
        Command::Write { fua: false } => req.length <= INLINE_WRITE_MAX_LEN,
        _ => false,
    }
}

/// Bytes a request holds while in flight: its payload, its reply's data,
/// or what block status may take with `contexts` contexts selected.
fn cost(req: &Request, payload_len: u64, contexts: usize) -> u64 {
    let reply_len = match req.command {
        CMD_READ if req.length <= MAX_PAYLOAD => req.length,
        CMD_CACHE => req.length.min(CACHE_CHUNK),
        CMD_BLOCK_STATUS => status::worst_case_bytes(contexts, req.flags & CMD_FLAG_REQ_ONE != 0),
        _ => 0,
    };
    payload_len.max(reply_len)
}

/// Reads more of the request stream: straight into a write's buffer when
/// nothing else is buffered (and what follows its payload into the input
/// buffer, in the same read), else into the input buffer. When
/// `streaming`, the input buffer takes only up to a header's worth, so
/// that the payload behind it goes straight to its buffer too.
/// Cancel-safe.
async fn read_more<R: ReadVectored>(
    reader: &mut R,
    input: &mut Input,
    incoming: &mut Incoming,
    streaming: Option<usize>,
) -> std::io::Result<usize> {
    let buffered = input.buffered().len();
    let max = match streaming {
        Some(header_len) if buffered < header_len => header_len - buffered,
        _ => usize::MAX,
    };
    if let Incoming::Payload {
        buffer: Some(buffer),
        filled,
        ..
    } = incoming
    {
        if buffered == 0 {
            let payload = &mut buffer.as_mut()[*filled as usize..];
            let (into_payload, behind) = input.fill_behind(reader, payload, max).await?;
            *filled += into_payload as u64;
            return Ok(into_payload + behind);
        }
    }
    input.fill(reader, max).await
}

/// QEMU's traces of a received request.
fn trace_request(req: &Request, mode: ReplyMode) {
    schema::trace!(
        NBD_RECEIVE_REQUEST,
        "Got request: {{ magic = {:#x}, .flags = {:#x}, .type = {:#x}, from = {}, len = {} }}",
        if mode == ReplyMode::Extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        },
        req.flags,
        req.command,
        req.offset,
        req.length
    );
    schema::trace!(
        NBD_CO_RECEIVE_REQUEST_DECODE_TYPE,
        "Decoding type: cookie = {}, type = {} ({})",
        req.cookie,
        req.command,
        command_name(req.command)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_wide_bound_holds_back_all_but_each_connections_first_request() {
        static TOTAL: AtomicU64 = AtomicU64::new(0);
        let budget = || Budget {
            requests: 0,
            bytes: 0,
            total: &TOTAL,
        };
        let mut connections: Vec<Budget> = (0..32).map(|_| budget()).collect();
        let payload = 32 << 20;
        for connection in &mut connections {
            while connection.fits(payload) {
                connection.take(payload);
            }
        }
        // Each connection got its first request; past that, the daemon's
        // bound, not 32 connections' 64 MiB each.
        let total = TOTAL.load(Ordering::Relaxed);
        assert!(total <= MAX_IN_FLIGHT_BYTES_TOTAL + 32 * payload, "{total}");
        assert!(
            total < 32 * MAX_IN_FLIGHT_BYTES,
            "{total}: only per-connection bounds"
        );
        assert!(connections.iter().all(|c| c.requests >= 1));
        drop(connections);
        assert_eq!(
            TOTAL.load(Ordering::Relaxed),
            0,
            "ended connections give theirs back"
        );
    }
}

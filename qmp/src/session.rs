//! One client connection of a monitor, from greeting to close.
//!
//! Three parts run together:
//! - the reader splits the input into messages. Out-of-band messages (with
//!   `exec-oob`) are answered at once. In-band messages go to the executor:
//!   without the `oob` capability the reader waits until each is answered
//!   before reading the next (QEMU suspends the monitor the same way); with
//!   it, up to [`MAX_QUEUED_REQUESTS`] may wait, as in QEMU.
//! - the executor checks and runs in-band requests in order, and queues
//!   each reply before the reader may go on.
//! - the writer writes replies and events in the order they were queued.
//!
//! End of input is not the end of the session: everything the client sent
//! before it is still answered (a script may send its commands and shut
//! down its sending side), then the connection closes. A write error, a
//! full output queue, or [`Shared::abort`] end it at once: queued requests
//! are dropped, and a command already running completes without a reply.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use schema::{ErrorClass, QmpError};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::builtin::{self, Commands, QMP_CAPABILITIES, QUERY_COMMANDS};
use crate::dispatcher::Dispatcher;
use crate::events::{EventBus, Subscription, MAX_QUEUED_MESSAGES};
use crate::json::{Message, Splitter};
use crate::reply::{self, VersionInfo};
use crate::request;
use crate::trace::{HANDLE_QMP_COMMAND, MONITOR_QMP_RESPOND};

/// In-band requests that may wait for the executor once the client enabled
/// `oob` (QEMU's `QMP_REQ_QUEUE_LEN_MAX`).
pub const MAX_QUEUED_REQUESTS: usize = 8;

/// Bytes read from a client at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What every session of every monitor shares.
pub(crate) struct Shared {
    pub(crate) dispatcher: Arc<dyn Dispatcher>,
    pub(crate) commands: Commands,
    pub(crate) version: VersionInfo,
    pub(crate) events: EventBus,
    /// Held while a dispatcher command runs: one at a time, as in QEMU.
    pub(crate) command_lock: tokio::sync::Mutex<()>,
    /// Stop reading and running requests; flush what is queued and close.
    pub(crate) shutdown: CancellationToken,
    /// Close every connection now, without flushing.
    pub(crate) abort: CancellationToken,
    /// Whether in-band requests may run: false while the daemon is still
    /// applying its command line (see [`crate::Monitors::hold_commands`]).
    pub(crate) commands_released: tokio::sync::watch::Sender<bool>,
}

/// Options of one monitor (`--monitor chardev=...,pretty=on|off`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonitorOptions {
    /// Indent replies and events over several lines, as QEMU's `pretty=on`.
    pub pretty: bool,
}

/// Serves one client on `input`/`output` until the connection ends.
pub(crate) async fn serve<R, W>(shared: Arc<Shared>, input: R, output: W, options: MonitorOptions)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let (queue, queued) = mpsc::channel(MAX_QUEUED_MESSAGES);
    let disconnect = shared.abort.child_token();
    let greeting = reply::greeting(&shared.version, options.pretty);
    // The queue is empty: the greeting fits.
    let _ = queue.try_send(greeting);
    let session = Arc::new(Session {
        shared,
        pretty: options.pretty,
        negotiated: AtomicBool::new(false),
        oob: AtomicBool::new(false),
        output: queue,
        disconnect: disconnect.clone(),
        subscription: Mutex::new(None),
    });
    let (requests, pending) = mpsc::channel(MAX_QUEUED_REQUESTS);
    let work = async move {
        tokio::join!(
            session.clone().read(input, requests),
            session.clone().execute(pending)
        );
        session.unsubscribe();
        // Dropping the last sender lets the writer finish.
    };
    tokio::join!(work, write(output, queued, disconnect));
}

struct Session {
    shared: Arc<Shared>,
    pretty: bool,
    /// `qmp_capabilities` succeeded.
    negotiated: AtomicBool,
    /// The client enabled the `oob` capability.
    oob: AtomicBool,
    output: mpsc::Sender<Bytes>,
    /// Ends this connection at once (write error, full queue, abort).
    disconnect: CancellationToken,
    subscription: Mutex<Option<Subscription>>,
}

/// An in-band message for the executor. Dropping it tells the reader it
/// was answered.
struct InBand {
    message: Message,
    _answered: Option<oneshot::Sender<()>>,
}

impl Session {
    /// Whether requests not yet started should be dropped.
    fn stopping(&self) -> bool {
        self.disconnect.is_cancelled() || self.shared.shutdown.is_cancelled()
    }

    async fn stopped(&self) {
        tokio::select! {
            _ = self.disconnect.cancelled() => {}
            _ = self.shared.shutdown.cancelled() => {}
        }
    }

    /// Queues a message for the writer; waits while the queue is full.
    async fn send(&self, message: Bytes) {
        tokio::select! {
            _ = self.disconnect.cancelled() => {}
            _ = self.output.send(message) => {}
        }
    }

    fn unsubscribe(&self) {
        let subscription = self
            .subscription
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(subscription);
    }

    async fn read<R: AsyncRead + Unpin>(
        self: Arc<Self>,
        mut input: R,
        requests: mpsc::Sender<InBand>,
    ) {
        let mut splitter = Splitter::new();
        let mut messages = VecDeque::new();
        let mut buffer = vec![0u8; READ_CHUNK_BYTES];
        let (mut start, mut end) = (0, 0);
        loop {
            let message = loop {
                if let Some(message) = messages.pop_front() {
                    break message;
                }
                if start < end {
                    start += splitter.feed_until_message(&buffer[start..end], &mut messages);
                    continue;
                }
                let read = tokio::select! {
                    _ = self.stopped() => return,
                    read = input.read(&mut buffer) => read,
                };
                match read {
                    Ok(0) => return,
                    Ok(n) => (start, end) = (0, n),
                    Err(error) => {
                        tracing::debug!("QMP client read failed: {error}");
                        return;
                    }
                }
            };
            if request::is_out_of_band(message.as_ref().unwrap_or(&Value::Null)) {
                let reply = self.answer(message).await;
                self.send(reply).await;
                continue;
            }
            if !self.queue(message, &requests).await {
                return;
            }
        }
    }

    /// Hands an in-band message to the executor; returns false if the
    /// session is stopping.
    async fn queue(&self, message: Message, requests: &mpsc::Sender<InBand>) -> bool {
        let (answered, wait) = if self.oob.load(Ordering::Acquire) {
            (None, None)
        } else {
            let (answered, wait) = oneshot::channel();
            (Some(answered), Some(wait))
        };
        let item = InBand {
            message,
            _answered: answered,
        };
        tokio::select! {
            _ = self.stopped() => return false,
            sent = requests.send(item) => if sent.is_err() { return false },
        }
        if let Some(wait) = wait {
            tokio::select! {
                _ = self.stopped() => return false,
                _ = wait => {}
            }
        }
        true
    }

    async fn execute(self: Arc<Self>, mut pending: mpsc::Receiver<InBand>) {
        let mut released = self.shared.commands_released.subscribe();
        tokio::select! {
            _ = self.stopped() => {}
            _ = released.wait_for(|released| *released) => {}
        }
        while let Some(item) = pending.recv().await {
            if self.stopping() {
                continue;
            }
            if let Ok(request) = &item.message {
                schema::trace!(HANDLE_QMP_COMMAND, "mon {:p} req: {request}", self);
            }
            let reply = self.answer(item.message).await;
            schema::trace!(
                MONITOR_QMP_RESPOND,
                "mon {:p} resp: {}",
                self,
                String::from_utf8_lossy(&reply).trim_end()
            );
            self.send(reply).await;
        }
    }

    /// The reply to one message.
    async fn answer(&self, message: Message) -> Bytes {
        let message = match message {
            Ok(message) => message,
            Err(desc) => return reply::reply(Err(QmpError::generic(desc)), None, self.pretty),
        };
        let negotiated = self.negotiated.load(Ordering::Acquire);
        let (result, id) = match request::check(message, self.oob.load(Ordering::Acquire)) {
            Err(rejected) => (Err(rejected.error), rejected.id),
            Ok(request) => {
                let result = self
                    .run(
                        &request.command,
                        request.arguments,
                        request.out_of_band,
                        negotiated,
                    )
                    .await;
                (result, request.id)
            }
        };
        let result = result.map_err(|error| {
            if !negotiated && error.class == ErrorClass::CommandNotFound {
                QmpError::new(
                    ErrorClass::CommandNotFound,
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                )
            } else {
                error
            }
        });
        reply::reply(result, id, self.pretty)
    }

    async fn run(
        &self,
        command: &str,
        arguments: Map<String, Value>,
        out_of_band: bool,
        negotiated: bool,
    ) -> Result<Value, QmpError> {
        let known = if negotiated {
            self.shared.commands.contains(command)
        } else {
            command == QMP_CAPABILITIES
        };
        if !known {
            return Err(QmpError::new(
                ErrorClass::CommandNotFound,
                format!("The command {command} has not been found"),
            ));
        }
        if out_of_band {
            // No command of QSD's (or storaged's) may run out of band.
            return Err(QmpError::generic(format!(
                "The command {command} does not support OOB"
            )));
        }
        match command {
            QMP_CAPABILITIES => self.negotiate(&arguments),
            QUERY_COMMANDS => self.shared.commands.query(&arguments),
            _ => {
                let _one_at_a_time = self.shared.command_lock.lock().await;
                // A task of its own, so that a command that panics fails
                // alone instead of taking the monitor down with it.
                let dispatcher = self.shared.dispatcher.clone();
                let name = command.to_string();
                let task = tokio::spawn(async move { dispatcher.execute(&name, arguments).await });
                match task.await {
                    Ok(result) => match result? {
                        Value::Null => Ok(json!({})),
                        value => Ok(value),
                    },
                    Err(failure) => {
                        tracing::error!("QMP command {command} failed: {failure}");
                        Err(QmpError::generic(format!(
                            "Command {command} failed unexpectedly"
                        )))
                    }
                }
            }
        }
    }

    fn negotiate(&self, arguments: &Map<String, Value>) -> Result<Value, QmpError> {
        let enabled = builtin::capabilities_to_enable(arguments)?;
        if self.negotiated.load(Ordering::Acquire) {
            return Err(builtin::already_negotiated());
        }
        self.oob.store(enabled.oob, Ordering::Release);
        self.negotiated.store(true, Ordering::Release);
        let subscription =
            self.shared
                .events
                .subscribe(self.output.clone(), self.pretty, self.disconnect.clone());
        *self
            .subscription
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(subscription);
        Ok(json!({}))
    }
}

/// Writes queued messages until every sender is gone or the connection is
/// cut; a write error cuts it.
async fn write<W: AsyncWrite + Unpin>(
    mut output: W,
    mut queued: mpsc::Receiver<Bytes>,
    disconnect: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            biased;
            _ = disconnect.cancelled() => break,
            message = queued.recv() => message,
        };
        let Some(message) = message else {
            let _ = output.shutdown().await;
            break;
        };
        let written = tokio::select! {
            _ = disconnect.cancelled() => break,
            written = write_and_flush(&mut output, &message) => written,
        };
        if let Err(error) = written {
            tracing::debug!("QMP client write failed: {error}");
            disconnect.cancel();
            break;
        }
    }
}

async fn write_and_flush<W: AsyncWrite + Unpin>(
    output: &mut W,
    message: &[u8],
) -> std::io::Result<()> {
    output.write_all(message).await?;
    output.flush().await
}

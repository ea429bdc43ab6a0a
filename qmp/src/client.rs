//! A small async QMP client for tests (feature `test-client`).
//!
//! It connects to a monitor, keeps the greeting, negotiates, runs commands
//! with generated ids and keeps the events that arrive meanwhile for
//! [`Client::next_event`]. It reads with the same splitter as the monitor,
//! so it also understands `pretty=on` output. For byte-exact checks use
//! [`Client::send_raw`] and [`Client::receive`].

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::json::{Message, Splitter};
use crate::BoundAddress;

/// An error reply: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The error class, e.g. `GenericError`.
    pub class: String,
    /// The message.
    pub desc: String,
}

impl ErrorReply {
    /// An error reply to compare with.
    pub fn new(class: &str, desc: &str) -> Self {
        Self {
            class: class.into(),
            desc: desc.into(),
        }
    }
}

/// A connected QMP client.
pub struct Client {
    input: Box<dyn AsyncRead + Unpin + Send>,
    output: Box<dyn AsyncWrite + Unpin + Send>,
    splitter: Splitter,
    unread: Vec<u8>,
    messages: VecDeque<Message>,
    events: VecDeque<Value>,
    greeting: Value,
    next_id: u64,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Client {
    /// Connects to whatever [`crate::Monitors::listen`] returned and reads
    /// the greeting.
    pub async fn connect(address: &BoundAddress) -> io::Result<Self> {
        match address {
            BoundAddress::Unix(path) => Self::connect_unix(path).await,
            BoundAddress::Tcp(address) => Self::connect_tcp(*address).await,
        }
    }

    /// Connects to a Unix socket monitor and reads the greeting.
    pub async fn connect_unix(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::on_unix_stream(UnixStream::connect(path).await?).await
    }

    /// Speaks QMP on a connection made otherwise (say, accepted from a
    /// client-mode monitor) and reads the greeting.
    pub async fn on_unix_stream(stream: UnixStream) -> io::Result<Self> {
        let (input, output) = stream.into_split();
        Self::start(Box::new(input), Box::new(output)).await
    }

    /// Connects to a TCP monitor and reads the greeting.
    pub async fn connect_tcp(address: SocketAddr) -> io::Result<Self> {
        let (input, output) = TcpStream::connect(address).await?.into_split();
        Self::start(Box::new(input), Box::new(output)).await
    }

    async fn start(
        input: Box<dyn AsyncRead + Unpin + Send>,
        output: Box<dyn AsyncWrite + Unpin + Send>,
    ) -> io::Result<Self> {
        let mut client = Self {
            input,
            output,
            splitter: Splitter::new(),
            unread: Vec::new(),
            messages: VecDeque::new(),
            events: VecDeque::new(),
            greeting: Value::Null,
            next_id: 1,
        };
        client.greeting = client.receive().await?;
        if client.greeting.get("QMP").is_none() {
            return Err(invalid(format!("not a QMP greeting: {}", client.greeting)));
        }
        Ok(client)
    }

    /// The greeting, `{"QMP": {...}}`.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Sends `qmp_capabilities` (enabling nothing); an error reply is an
    /// `io::Error`.
    pub async fn negotiate(&mut self) -> io::Result<()> {
        self.execute("qmp_capabilities", json!({}))
            .await?
            .map(drop)
            .map_err(|error| invalid(format!("negotiation failed: {error:?}")))
    }

    /// Runs `command` with `arguments` (a JSON object) and returns its
    /// reply. Events that arrive first are kept for [`Client::next_event`].
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Value,
    ) -> io::Result<Result<Value, ErrorReply>> {
        let id = format!("storaged-test-{}", self.next_id);
        self.next_id += 1;
        let request = json!({"execute": command, "arguments": arguments, "id": id});
        self.send_raw(request.to_string().as_bytes()).await?;
        loop {
            let mut message = self.receive().await?;
            if message.get("event").is_some() {
                self.events.push_back(message);
                continue;
            }
            if message.get("id") != Some(&Value::String(id.clone())) {
                return Err(invalid(format!("reply to another request: {message}")));
            }
            if let Some(value) = message.get_mut("return") {
                return Ok(Ok(value.take()));
            }
            let text = |key: &str| {
                message["error"][key]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("malformed reply: {message}")))
            };
            return Ok(Err(ErrorReply {
                class: text("class")?,
                desc: text("desc")?,
            }));
        }
    }

    /// The next event, waiting at most `timeout`; `None` if none came.
    /// Cancel safe: nothing read is lost if the future is dropped.
    pub async fn next_event(&mut self, timeout: Duration) -> io::Result<Option<Value>> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        match tokio::time::timeout(timeout, self.receive()).await {
            Err(_) => Ok(None),
            Ok(message) => {
                let message = message?;
                if message.get("event").is_none() {
                    return Err(invalid(format!("unexpected message: {message}")));
                }
                Ok(Some(message))
            }
        }
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.output.write_all(bytes).await?;
        self.output.flush().await
    }

    /// Shuts down the sending side; the monitor still answers what it got.
    pub async fn finish_sending(&mut self) -> io::Result<()> {
        self.output.shutdown().await
    }

    /// The next message from the monitor, whatever it is. End of input is
    /// an `UnexpectedEof` error.
    pub async fn receive(&mut self) -> io::Result<Value> {
        loop {
            if let Some(message) = self.messages.pop_front() {
                return message.map_err(|error| invalid(format!("bad JSON from monitor: {error}")));
            }
            if !self.unread.is_empty() {
                let used = self
                    .splitter
                    .feed_until_message(&self.unread, &mut self.messages);
                self.unread.drain(..used);
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = self.input.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "monitor closed the connection",
                ));
            }
            self.unread.extend_from_slice(&chunk[..n]);
        }
    }
}

//! What the monitor tests share: a fake dispatcher, monitors on a temporary
//! socket, and a raw client that sees the exact bytes a monitor sends.

#![allow(dead_code)] // each test file uses a part

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qmp::{
    BoundAddress, Dispatcher, EventBus, ListenAddress, MonitorOptions, Monitors, VersionInfo,
    VersionTriple,
};
use schema::event::{Event, EventSink};
use schema::QmpError;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// Long enough for anything that should happen, on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// How long to wait before concluding that nothing more will come.
pub const QUIET: Duration = Duration::from_millis(300);

/// Commands for tests:
/// - `echo`: returns its arguments;
/// - `fail`: fails with GenericError "failed as asked";
/// - `nothing`: returns no value;
/// - `emit`: emits event `name` with `data` (absent: no data);
/// - `sleep`: sleeps `ms` milliseconds, notes whether another command ran
///   meanwhile, returns `{"overlapped": bool}`;
/// - `quit`: returns, then signals [`Fake::quit_requested`];
/// - `panic`: panics.
pub struct Fake {
    sink: EventSink,
    pub quit_requested: Notify,
    pub running: AtomicUsize,
    pub completed: AtomicUsize,
}

impl Fake {
    pub fn new(events: EventBus) -> Arc<Self> {
        Arc::new(Self {
            sink: events.sink(),
            quit_requested: Notify::new(),
            running: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Dispatcher for Fake {
    fn commands(&self) -> Vec<String> {
        ["echo", "fail", "nothing", "emit", "sleep", "quit", "panic"]
            .map(String::from)
            .to_vec()
    }

    async fn execute(
        &self,
        command: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, QmpError> {
        let overlapped = self.running.fetch_add(1, Ordering::SeqCst) > 0;
        let result = match command {
            "echo" => Ok(Value::Object(arguments)),
            "fail" => Err(QmpError::generic("failed as asked")),
            "nothing" => Ok(Value::Null),
            "emit" => {
                let name = arguments
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("TEST");
                let data = arguments.get("data").cloned().unwrap_or(Value::Null);
                (self.sink)(Event::new(name, data));
                Ok(json!({}))
            }
            "sleep" => {
                let ms = arguments.get("ms").and_then(Value::as_u64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({ "overlapped": overlapped || self.running.load(Ordering::SeqCst) > 1 }))
            }
            "quit" => {
                self.quit_requested.notify_one();
                Ok(json!({}))
            }
            "panic" => panic!("the fake panics as asked"),
            _ => Err(QmpError::generic(format!("fake has no {command}"))),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.completed.fetch_add(1, Ordering::SeqCst);
        result
    }
}

pub fn version() -> VersionInfo {
    VersionInfo {
        qemu: VersionTriple {
            major: 10,
            minor: 0,
            micro: 0,
        },
        package: "storaged 0.1.0".into(),
    }
}

/// The greeting [`version`] gives, as sent.
pub const GREETING: &str =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 10}, \
                            \"package\": \"storaged 0.1.0\"}, \"capabilities\": [\"oob\"]}}\r\n";

/// Monitors with the fake dispatcher and one Unix socket monitor in a
/// temporary directory.
pub struct Setup {
    pub fake: Arc<Fake>,
    pub monitors: Monitors,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub async fn new() -> Self {
        Self::with_options(MonitorOptions::default()).await
    }

    pub async fn with_options(options: MonitorOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("qmp.sock");
        let events = EventBus::new();
        let fake = Fake::new(events.clone());
        let monitors = Monitors::new(fake.clone(), version(), events);
        monitors
            .listen(&ListenAddress::Unix(socket.clone()), false, options)
            .await
            .expect("listen");
        Self {
            fake,
            monitors,
            socket,
            dir,
        }
    }

    pub fn address(&self) -> BoundAddress {
        BoundAddress::Unix(self.socket.clone())
    }

    pub async fn raw(&self) -> Raw {
        Raw::connect(&self.socket).await
    }

    /// A raw client that has read the greeting and negotiated.
    pub async fn negotiated_raw(&self) -> Raw {
        let mut raw = self.raw().await;
        assert_eq!(raw.line().await, GREETING);
        raw.send(br#"{"execute":"qmp_capabilities"}"#).await;
        assert_eq!(raw.line().await, "{\"return\": {}}\r\n");
        raw
    }
}

/// A client that sees the bytes exactly as sent.
pub struct Raw {
    pub stream: UnixStream,
    unread: Vec<u8>,
}

impl Raw {
    pub async fn try_connect(path: &std::path::Path) -> std::io::Result<UnixStream> {
        UnixStream::connect(path).await
    }

    pub async fn connect(path: &std::path::Path) -> Self {
        let stream = UnixStream::connect(path).await.expect("connect");
        Self {
            stream,
            unread: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next CRLF-terminated line, CRLF included.
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.next_line())
            .await
            .expect("a line from the monitor in time")
            .expect("a line before the connection closed")
    }

    /// The next line, or `None` at end of input (no timeout).
    pub async fn next_line_or_end(&mut self) -> Option<String> {
        self.next_line().await
    }

    async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.unread.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.unread.drain(..end + 2).collect();
                return Some(String::from_utf8(line).expect("monitor output is ASCII"));
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.unread.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `input` and returns the `count` lines that answer it.
    pub async fn exchange(&mut self, input: &[u8], count: usize) -> Vec<String> {
        self.send(input).await;
        let mut lines = Vec::new();
        for _ in 0..count {
            lines.push(self.line().await);
        }
        lines
    }

    /// Asserts nothing arrives for a while.
    pub async fn assert_quiet(&mut self) {
        let next = tokio::time::timeout(QUIET, self.next_line()).await;
        assert!(next.is_err(), "unexpected output: {next:?}");
    }

    /// Whether the monitor closed the connection (within [`PATIENCE`]).
    pub async fn closed(&mut self) -> bool {
        matches!(
            tokio::time::timeout(PATIENCE, self.next_line()).await,
            Ok(None)
        )
    }
}

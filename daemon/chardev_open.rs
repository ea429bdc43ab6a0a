//! The backends `chardev-add` and `chardev-change` create, opened as QEMU
//! opens them: a ring buffer, `null`, a `file` (output only), a `pipe`
//! (FIFOs `DEVICE.in` and `DEVICE.out`, else `DEVICE`, read-write),
//! standard input and output, and a `socket`, opened by [`qmp::socket`]
//! as a `--chardev` socket is.
//!
//! storaged has no device frontends: a run-time socket accepts (or makes)
//! one connection at a time and keeps it until the peer leaves, reading
//! and dropping what it sends. Dropping a chardev closes its files and
//! connections, and removes the socket file it bound. Which ids exist is
//! [`crate::chardev_table`]'s business.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Mutex};

use qmp::socket::{self, Connection, Opened, SocketFile};
use qmp::SocketSpec;
use schema::char::{ChardevBackend, ChardevBackendKind};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::chardev_socket::{
    open_error, qmp_socket_spec, socket_address, socket_description, waiting_message,
};

/// QEMU's default and largest ring buffer.
const DEFAULT_RINGBUF_SIZE: i64 = 65536;
const MAX_RINGBUF_SIZE: i64 = 1 << 24;

/// A chardev created at run time.
pub enum Added {
    /// The newest `size` bytes written (`ringbuf`, or `memory`).
    Ringbuf {
        bytes: VecDeque<u8>,
        size: usize,
        memory: bool,
    },
    Null,
    /// The file it was opened on (created, or appended to); nothing in
    /// storaged writes to it.
    File {
        _open: File,
    },
    /// The FIFOs it holds open.
    Pipe {
        _input: File,
        _output: File,
    },
    /// The daemon's standard streams.
    Stdio,
    Socket(SocketChardev),
}

impl Added {
    /// Opens `backend`; the error is QEMU's reason, without the id.
    pub async fn open(backend: &ChardevBackend) -> Result<Added, String> {
        if backend.kind.logfile().is_some() {
            return Err("'logfile' is not supported by storaged".to_owned());
        }
        Ok(match &backend.kind {
            ChardevBackendKind::Ringbuf(ring) | ChardevBackendKind::Memory(ring) => {
                let size = ring.data.size.unwrap_or(DEFAULT_RINGBUF_SIZE);
                if size <= 0 || size & (size - 1) != 0 {
                    return Err("size of ringbuf chardev must be power of two".to_owned());
                }
                if size > MAX_RINGBUF_SIZE {
                    return Err(format!(
                        "size of ringbuf chardev must be at most {MAX_RINGBUF_SIZE}"
                    ));
                }
                Added::Ringbuf {
                    bytes: VecDeque::new(),
                    size: size as usize,
                    memory: matches!(backend.kind, ChardevBackendKind::Memory(_)),
                }
            }
            ChardevBackendKind::Null(_) => Added::Null,
            ChardevBackendKind::File(file) => {
                let file = &file.data;
                let append = file.append.unwrap_or(false);
                let out = File::options()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(&file.out)
                    .map_err(|e| could_not_open(&file.out, &e))?;
                Added::File { _open: out }
            }
            ChardevBackendKind::Pipe(pipe) => {
                let (input, output) = open_pipe(&pipe.data.device)?;
                Added::Pipe {
                    _input: input,
                    _output: output,
                }
            }
            ChardevBackendKind::Stdio(_) => Added::Stdio,
            ChardevBackendKind::Socket(options) => {
                let spec = qmp_socket_spec(&options.data)?;
                Added::Socket(SocketChardev::open(spec).await?)
            }
        })
    }

    /// A socket's `connected` and `addr` properties.
    pub fn socket(&self) -> Option<(bool, serde_json::Value)> {
        match self {
            Added::Socket(socket) => {
                Some((lock(&socket.connection).is_some(), socket.addr.clone()))
            }
            _ => None,
        }
    }

    /// QEMU's `filename` in `query-chardev`.
    pub fn filename(&self) -> String {
        match self {
            Added::Ringbuf { memory: true, .. } => "memory".to_owned(),
            Added::Ringbuf { .. } => "ringbuf".to_owned(),
            Added::Null => "null".to_owned(),
            Added::File { .. } => "file".to_owned(),
            Added::Pipe { .. } => "pipe".to_owned(),
            Added::Stdio => "stdio".to_owned(),
            Added::Socket(socket) => socket.filename(),
        }
    }

    pub fn qom_type(&self) -> &'static str {
        match self {
            Added::Ringbuf { memory: true, .. } => "chardev-memory",
            Added::Ringbuf { .. } => "chardev-ringbuf",
            Added::Null => "chardev-null",
            Added::File { .. } => "chardev-file",
            Added::Pipe { .. } => "chardev-pipe",
            Added::Stdio => "chardev-stdio",
            Added::Socket(_) => "chardev-socket",
        }
    }
}

fn could_not_open(path: &str, error: &std::io::Error) -> String {
    format!(
        "Could not open '{path}': {}",
        block::error::os_error_text(error)
    )
}

/// QEMU's `qemu_chr_open_pipe`: `DEVICE.in` and `DEVICE.out` if both
/// open, else `DEVICE` for both ways, read-write (a FIFO opened so does
/// not wait for a peer).
fn open_pipe(device: &str) -> Result<(File, File), String> {
    let read_write = |path: &str| File::options().read(true).write(true).open(path);
    if let (Ok(input), Ok(output)) = (
        read_write(&format!("{device}.in")),
        read_write(&format!("{device}.out")),
    ) {
        return Ok((input, output));
    }
    let both = read_write(device).map_err(|e| could_not_open(device, &e))?;
    let output = both.try_clone().map_err(|e| could_not_open(device, &e))?;
    Ok((both, output))
}

/// A socket chardev without a frontend: its connections are served by a
/// task that stops when this is dropped.
pub struct SocketChardev {
    /// QEMU's description with no connection (after `disconnected:`).
    address: String,
    /// QEMU's `addr` property: where it listens or connects.
    addr: serde_json::Value,
    /// The description of the open connection, if one is.
    connection: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    /// The socket file this chardev bound, removed when it goes.
    _socket_file: Option<SocketFile>,
}

impl SocketChardev {
    /// Opens the socket as `--chardev` does, and serves its connections.
    async fn open(spec: SocketSpec) -> Result<SocketChardev, String> {
        let waiting = |bound: &qmp::BoundAddress| {
            eprintln!("info: {}", waiting_message(&spec, bound));
        };
        let opened = socket::open(&spec, &CancellationToken::new(), waiting)
            .await
            .map_err(|error| open_error(&spec, &error))?;
        Ok(SocketChardev::serve(&spec, opened))
    }

    /// Serves the connections of `opened`, the socket `spec` describes,
    /// until dropped.
    pub fn serve(spec: &SocketSpec, opened: Opened) -> SocketChardev {
        let address = socket_description(spec, opened.bound.as_ref());
        let addr = socket_address(spec, opened.bound.as_ref());
        let listening = matches!(spec, SocketSpec::Listen { .. });
        let connection = Arc::new(Mutex::new(None));
        let state = connection.clone();
        let description = address.clone();
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        tokio::spawn(
            opened
                .endpoint
                .serve(opened.first, stop.clone(), move |connection| {
                    let shown = connection
                        .tcp_description(listening)
                        .unwrap_or_else(|| description.clone());
                    hold(connection, shown, state.clone(), cancel.clone())
                }),
        );
        SocketChardev {
            address,
            addr,
            connection,
            stop,
            _socket_file: opened.socket_file,
        }
    }

    fn filename(&self) -> String {
        lock(&self.connection)
            .clone()
            .unwrap_or_else(|| format!("disconnected:{}", self.address))
    }
}

fn lock(state: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    // A single assignment: never half done.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps `connection` open, shown as `shown`, until the peer leaves or
/// the chardev goes; what the peer sends is dropped.
async fn hold(
    connection: Connection,
    shown: String,
    state: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
) {
    *lock(&state) = Some(shown);
    let until_closed = async {
        match connection {
            Connection::Unix(stream) => drain(stream).await,
            Connection::Tcp(stream) => drain(stream).await,
        }
    };
    tokio::select! {
        () = until_closed => {}
        () = stop.cancelled() => {}
    }
    *lock(&state) = None;
}

/// Reads and drops everything until the end of input (or an error).
async fn drain(mut stream: impl tokio::io::AsyncRead + Unpin) {
    let mut buffer = [0u8; 4096];
    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
}

impl Drop for SocketChardev {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

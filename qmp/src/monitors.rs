//! The daemon's monitors: listening sockets (and streams such as stdio)
//! whose clients speak QMP, and their orderly end.
//!
//! A socket monitor is what QEMU's `--chardev socket,...,server=on` plus
//! `--monitor chardev=...` gives: it serves one client at a time; a second
//! client's connection waits in the listen backlog until the first
//! disconnects, then gets its own greeting and must negotiate again. Like
//! QEMU, binding a Unix socket first removes whatever is at its path, and
//! the socket file is removed when the monitors shut down.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::builtin::Commands;
use crate::dispatcher::Dispatcher;
use crate::events::EventBus;
use crate::reply::VersionInfo;
use crate::session::{self, MonitorOptions, Shared};

/// How long [`Monitors::shutdown`] waits for running commands to finish and
/// for replies and events already queued to be written, before it closes
/// the remaining connections without flushing.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection a client-mode monitor opened.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to `address` (a Unix path or a host and port).
async fn connect_to(address: &ListenAddress) -> io::Result<Box<dyn Stream>> {
    Ok(match address {
        ListenAddress::Unix(path) => Box::new(UnixStream::connect(path).await?),
        ListenAddress::Tcp { host, port } => {
            Box::new(TcpStream::connect((host.as_str(), *port)).await?)
        }
        ListenAddress::Fd(_) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a descriptor cannot be connected",
            ))
        }
    })
}

/// Pause after a failed `accept` (e.g. out of file descriptors) so a
/// persistent failure does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Where a monitor listens: the server forms of QEMU's socket chardev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// `path=...`
    Unix(PathBuf),
    /// `host=...,port=...`. An empty host listens on every address (IPv6
    /// and IPv4 where the system allows one socket for both); a name is
    /// resolved and the first address that can be bound is used, as QEMU
    /// does. Port 0 picks a free port (see [`BoundAddress`]).
    Tcp {
        /// Name or address; empty for every address.
        host: String,
        /// Port number; 0 for any free port.
        port: u16,
    },
    /// A listening socket the daemon inherited (`fd=`, e.g. from systemd
    /// socket activation), Unix or TCP; the monitor takes it over.
    Fd(RawFd),
}

/// Where a monitor actually listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddress {
    /// The socket file.
    Unix(PathBuf),
    /// The address and port bound.
    Tcp(SocketAddr),
}

/// Every monitor of the daemon, sharing one dispatcher and one event bus.
pub struct Monitors {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    socket_files: Mutex<Vec<PathBuf>>,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Monitors {
    /// Monitors that run `dispatcher`'s commands, greet with `version`, and
    /// deliver the events emitted on `events`. Reads
    /// [`Dispatcher::commands`] once, here.
    pub fn new(dispatcher: Arc<dyn Dispatcher>, version: VersionInfo, events: EventBus) -> Self {
        let commands = Commands::new(dispatcher.commands());
        Self {
            shared: Arc::new(Shared {
                dispatcher,
                commands,
                version,
                events,
                command_lock: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                abort: CancellationToken::new(),
            }),
            tasks: TaskTracker::new(),
            socket_files: Mutex::new(Vec::new()),
        }
    }

    /// The bus whose events reach this set's negotiated clients.
    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// Starts a monitor listening on `address`. With `wait_for_client`
    /// (QEMU's `wait=on`) this returns only once a first client has
    /// connected (or shutdown began); that client gets the greeting first.
    pub async fn listen(
        &self,
        address: &ListenAddress,
        wait_for_client: bool,
        options: MonitorOptions,
    ) -> io::Result<BoundAddress> {
        let (listener, bound) = match address {
            ListenAddress::Unix(path) => {
                let listener = bind_unix(path)?;
                self.lock_socket_files().push(path.clone());
                (Listener::Unix(listener), BoundAddress::Unix(path.clone()))
            }
            ListenAddress::Tcp { host, port } => {
                let listener = bind_tcp(host, *port).await?;
                let bound = BoundAddress::Tcp(listener.local_addr()?);
                (Listener::Tcp(listener), bound)
            }
            ListenAddress::Fd(fd) => adopt_listener(*fd)?,
        };
        let first = if wait_for_client {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => None,
                accepted = listener.accept() => Some(accepted?),
            }
        } else {
            None
        };
        let shared = self.shared.clone();
        self.tasks
            .spawn(accept_clients(shared, listener, first, options));
        Ok(bound)
    }

    /// Serves a monitor on a connection the daemon opens itself (QEMU's
    /// client-mode socket chardev, `server=off`): connects to `address`
    /// now, and fails if that fails and there is no `reconnect`. When the
    /// peer closes (or a connection fails) and `reconnect` is set, it
    /// connects again after that delay, until shutdown; each connection
    /// gets its own greeting.
    pub async fn connect(
        &self,
        address: &ListenAddress,
        reconnect: Option<Duration>,
        options: MonitorOptions,
    ) -> io::Result<()> {
        let first = match connect_to(address).await {
            Ok(stream) => Some(stream),
            Err(error) if reconnect.is_none() => return Err(error),
            Err(error) => {
                tracing::warn!("monitor: cannot connect to {address:?}: {error}");
                None
            }
        };
        let shared = self.shared.clone();
        let address = address.clone();
        self.tasks.spawn(async move {
            let mut next = first;
            loop {
                if let Some(stream) = next.take() {
                    let (input, output) = tokio::io::split(stream);
                    session::serve(shared.clone(), input, output, options).await;
                }
                let Some(delay) = reconnect else { return };
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                match connect_to(&address).await {
                    Ok(stream) => next = Some(stream),
                    Err(error) => {
                        tracing::debug!("monitor: reconnecting to {address:?}: {error}")
                    }
                }
            }
        });
        Ok(())
    }

    /// Serves one client on an already open stream, e.g. stdin and stdout
    /// for QEMU's `--chardev stdio`. The session ends at the end of input,
    /// once everything before it is answered.
    pub fn serve_stream<R, W>(&self, input: R, output: W, options: MonitorOptions)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        self.tasks
            .spawn(session::serve(shared, input, output, options));
    }

    /// Stops every monitor: no new clients or requests; commands already
    /// running finish and their replies (say, `quit`'s `{"return": {}}`),
    /// like events already queued, are written, for at most
    /// [`SHUTDOWN_FLUSH_TIMEOUT`]; then every connection is closed and the
    /// Unix socket files are removed. Call it from outside a command (a
    /// command that wants the daemon to stop signals the main task, which
    /// calls this), since it waits for running commands.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.remove_socket_files();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("QMP clients still busy after {SHUTDOWN_FLUSH_TIMEOUT:?}; closing them");
            self.shared.abort.cancel();
        }
    }

    fn lock_socket_files(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.socket_files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove_socket_files(&self) {
        for path in self.lock_socket_files().drain(..) {
            if let Err(error) = std::fs::remove_file(&path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {error}", path.display());
                }
            }
        }
    }
}

impl Drop for Monitors {
    /// Without [`Monitors::shutdown`]: close everything at once and remove
    /// the socket files.
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.abort.cancel();
        self.remove_socket_files();
    }
}

impl std::fmt::Debug for Monitors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitors")
            .field("socket_files", &*self.lock_socket_files())
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// Takes over an inherited listening socket. Its path, if any, belongs to
/// whoever made it (systemd removes it), so it is not removed at exit.
fn adopt_listener(fd: RawFd) -> io::Result<(Listener, BoundAddress)> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `storage`.
    if unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if storage.ss_family == libc::AF_UNIX as libc::sa_family_t {
        // SAFETY: getsockname proved `fd` is a socket; the caller hands
        // it over and nothing else closes it.
        let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let listener = UnixListener::from_std(listener)?;
        Ok((Listener::Unix(listener), BoundAddress::Unix(path)))
    } else {
        // SAFETY: as above.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let bound = BoundAddress::Tcp(listener.local_addr()?);
        Ok((Listener::Tcp(listener), bound))
    }
}

fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    UnixListener::bind(path)
}

async fn bind_tcp(host: &str, port: u16) -> io::Result<TcpListener> {
    let candidates: Vec<SocketAddr> = if host.is_empty() {
        vec![
            (Ipv6Addr::UNSPECIFIED, port).into(),
            (Ipv4Addr::UNSPECIFIED, port).into(),
        ]
    } else {
        tokio::net::lookup_host((host, port)).await?.collect()
    };
    let mut last_error = None;
    for candidate in candidates {
        match TcpListener::bind(candidate).await {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address for host '{host}'"),
        )
    }))
}

impl Listener {
    async fn accept(&self) -> io::Result<Connection> {
        match self {
            Listener::Unix(listener) => Ok(Connection::Unix(listener.accept().await?.0)),
            Listener::Tcp(listener) => Ok(Connection::Tcp(listener.accept().await?.0)),
        }
    }
}

/// A descriptor kept open for the monitors' use when the process has run
/// out: closed to accept a monitor client that could not be accepted
/// otherwise, opened again once that client leaves. An operator can then
/// still reach the daemon (and be told why commands fail).
static SPARE_DESCRIPTOR: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Opens the spare descriptor if it is not open.
fn keep_spare_descriptor() {
    let mut spare = SPARE_DESCRIPTOR.lock().unwrap_or_else(|e| e.into_inner());
    if spare.is_none() {
        *spare = std::fs::File::open("/dev/null").ok();
    }
}

/// Whether `error` says the process (or system) has no descriptor left.
fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Accepts a client, using the spare descriptor if none is left.
async fn accept_with_spare(listener: &Listener) -> io::Result<Connection> {
    match listener.accept().await {
        Err(error) if out_of_descriptors(&error) => {
            let spare = SPARE_DESCRIPTOR
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if spare.is_none() {
                return Err(error);
            }
            drop(spare);
            listener.accept().await
        }
        other => other,
    }
}

/// Serves clients one after the other until shutdown.
async fn accept_clients(
    shared: Arc<Shared>,
    listener: Listener,
    first: Option<Connection>,
    options: MonitorOptions,
) {
    if let Some(connection) = first {
        serve_connection(shared.clone(), connection, options).await;
    }
    loop {
        keep_spare_descriptor();
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = accept_with_spare(&listener) => accepted,
        };
        match accepted {
            Ok(connection) => serve_connection(shared.clone(), connection, options).await,
            Err(error) => {
                tracing::warn!("QMP monitor cannot accept a client: {error}");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                }
            }
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, connection: Connection, options: MonitorOptions) {
    match connection {
        Connection::Unix(stream) => {
            let (input, output) = stream.into_split();
            session::serve(shared, input, output, options).await;
        }
        Connection::Tcp(stream) => {
            // Replies are small and a client waits for each: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let (input, output) = stream.into_split();
            session::serve(shared, input, output, options).await;
        }
    }
}

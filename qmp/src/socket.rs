//! The socket side of QEMU's socket chardev, for every user of one: a
//! monitor ([`crate::Monitors`]) or a chardev with no frontend (the
//! daemon's `chardev-add`). [`open`] binds a listening socket (and with
//! `wait` takes its first client) or connects to a peer, with QEMU's
//! rules; [`Endpoint::serve`] then hands its connections, one at a time,
//! to the frontend until cancelled: a listener accepts the next client
//! once the previous one is gone, a client-mode socket connects again
//! after its `reconnect` delay.
//!
//! A Unix socket file it binds belongs to the [`Opened`] socket as a
//! [`SocketFile`], removed when its holder drops it.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (e.g. out of file descriptors) so a
/// persistent failure does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Where a socket chardev listens or connects.
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
    /// socket activation), Unix or TCP; the endpoint takes it over.
    Fd(RawFd),
}

/// Where a socket actually listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddress {
    /// The socket file.
    Unix(PathBuf),
    /// The address and port bound.
    Tcp(SocketAddr),
}

/// A socket chardev's configuration: QEMU's `server=on` (with `wait`) or
/// `server=off` (with `reconnect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// A listening socket; `wait` holds [`open`] until a first client
    /// connects.
    Listen {
        /// Where to listen.
        address: ListenAddress,
        /// QEMU's `wait=on`.
        wait: bool,
    },
    /// A socket the daemon connects to: the peer listens. With
    /// `reconnect`, a closed or failed connection is made again after
    /// that delay.
    Connect {
        /// Where to connect.
        address: ListenAddress,
        /// QEMU's `reconnect-ms`.
        reconnect: Option<Duration>,
    },
}

/// One connection of a socket chardev.
#[derive(Debug)]
pub enum Connection {
    /// A Unix socket connection.
    Unix(UnixStream),
    /// A TCP connection.
    Tcp(TcpStream),
}

impl Connection {
    /// QEMU's description of a TCP connection (`qemu_chr_compute_filename`:
    /// `tcp:LOCAL:PORT[,server=on] <-> PEER:PORT`); `None` for a Unix one.
    pub fn tcp_description(&self, listening: bool) -> Option<String> {
        let Connection::Tcp(stream) = self else {
            return None;
        };
        let local = stream.local_addr().ok()?;
        let peer = stream.peer_addr().ok()?;
        let server = if listening { ",server=on" } else { "" };
        Some(format!("tcp:{local}{server} <-> {peer}"))
    }
}

/// A listening socket.
#[derive(Debug)]
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    async fn accept(&self) -> io::Result<Connection> {
        match self {
            Listener::Unix(listener) => Ok(Connection::Unix(listener.accept().await?.0)),
            Listener::Tcp(listener) => Ok(Connection::Tcp(listener.accept().await?.0)),
        }
    }
}

/// Where an opened socket chardev's connections come from.
#[derive(Debug)]
pub struct Endpoint(Source);

#[derive(Debug)]
enum Source {
    /// Clients of a listening socket.
    Listen(Listener),
    /// Connections made to a peer, again after `reconnect`.
    Connect {
        address: ListenAddress,
        reconnect: Option<Duration>,
    },
}

/// A socket file [`open`] bound: removed when dropped.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.0) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {error}", self.0.display());
            }
        }
    }
}

/// An opened socket chardev.
#[derive(Debug)]
pub struct Opened {
    /// Its next connections.
    pub endpoint: Endpoint,
    /// The connection made while opening (`wait=on`'s first client, a
    /// client-mode socket's first connection), to serve first.
    pub first: Option<Connection>,
    /// Where a listener listens.
    pub bound: Option<BoundAddress>,
    /// The socket file bound (not one of an inherited listener).
    pub socket_file: Option<SocketFile>,
}

/// Opens a socket chardev as QEMU does: binds a listener (removing
/// whatever is at a Unix path first) and with `wait` tells `waiting`
/// where it listens, then accepts its first client, unless `cancel`
/// fires first; or connects, failing if that fails and there is no
/// `reconnect`.
pub async fn open(
    spec: &SocketSpec,
    cancel: &CancellationToken,
    waiting: impl FnOnce(&BoundAddress),
) -> io::Result<Opened> {
    match spec {
        SocketSpec::Listen { address, wait } => {
            let (listener, bound) = bind(address).await?;
            let socket_file = match address {
                ListenAddress::Unix(path) => Some(SocketFile(path.clone())),
                _ => None,
            };
            let first = if *wait {
                waiting(&bound);
                tokio::select! {
                    _ = cancel.cancelled() => None,
                    accepted = listener.accept() => Some(accepted?),
                }
            } else {
                None
            };
            Ok(Opened {
                endpoint: Endpoint(Source::Listen(listener)),
                first,
                bound: Some(bound),
                socket_file,
            })
        }
        SocketSpec::Connect { address, reconnect } => {
            let first = match connect_to(address).await {
                Ok(stream) => Some(stream),
                Err(error) if reconnect.is_none() => return Err(error),
                Err(error) => {
                    tracing::warn!("chardev: cannot connect to {address:?}: {error}");
                    None
                }
            };
            Ok(Opened {
                endpoint: Endpoint(Source::Connect {
                    address: address.clone(),
                    reconnect: *reconnect,
                }),
                first,
                bound: None,
                socket_file: None,
            })
        }
    }
}

impl Endpoint {
    /// Hands `first`, then every next connection, to `serve`, one at a
    /// time, until `cancel` fires (or a client-mode socket without
    /// `reconnect` has served its one connection).
    pub async fn serve<F, Fut>(self, first: Option<Connection>, cancel: CancellationToken, serve: F)
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = ()>,
    {
        match self.0 {
            Source::Listen(listener) => accept_clients(listener, first, cancel, serve).await,
            Source::Connect { address, reconnect } => {
                reconnect_loop(&address, reconnect, first, cancel, serve).await
            }
        }
    }
}

async fn accept_clients<F, Fut>(
    listener: Listener,
    first: Option<Connection>,
    cancel: CancellationToken,
    mut serve: F,
) where
    F: FnMut(Connection) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(connection) = first {
        serve(connection).await;
    }
    loop {
        keep_spare_descriptor();
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = accept_with_spare(&listener) => accepted,
        };
        match accepted {
            Ok(connection) => serve(connection).await,
            Err(error) => {
                tracing::warn!("chardev socket cannot accept a client: {error}");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                }
            }
        }
    }
}

async fn reconnect_loop<F, Fut>(
    address: &ListenAddress,
    reconnect: Option<Duration>,
    first: Option<Connection>,
    cancel: CancellationToken,
    mut serve: F,
) where
    F: FnMut(Connection) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut next = first;
    loop {
        if let Some(connection) = next.take() {
            serve(connection).await;
        }
        let Some(delay) = reconnect else { return };
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        match connect_to(address).await {
            Ok(connection) => next = Some(connection),
            Err(error) => tracing::debug!("chardev: reconnecting to {address:?}: {error}"),
        }
    }
}

/// Connects to `address` (a Unix path or a host and port).
async fn connect_to(address: &ListenAddress) -> io::Result<Connection> {
    Ok(match address {
        ListenAddress::Unix(path) => Connection::Unix(UnixStream::connect(path).await?),
        ListenAddress::Tcp { host, port } => {
            Connection::Tcp(TcpStream::connect((host.as_str(), *port)).await?)
        }
        ListenAddress::Fd(_) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a descriptor cannot be connected",
            ))
        }
    })
}

/// Binds a listener at `address`, or takes over an inherited one.
async fn bind(address: &ListenAddress) -> io::Result<(Listener, BoundAddress)> {
    match address {
        ListenAddress::Unix(path) => {
            let listener = bind_unix(path)?;
            Ok((Listener::Unix(listener), BoundAddress::Unix(path.clone())))
        }
        ListenAddress::Tcp { host, port } => {
            let listener = bind_tcp(host, *port).await?;
            let bound = BoundAddress::Tcp(listener.local_addr()?);
            Ok((Listener::Tcp(listener), bound))
        }
        ListenAddress::Fd(fd) => adopt_listener(*fd),
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

/// A descriptor kept open for the sockets' use when the process has run
/// out: closed to accept a client that could not be accepted otherwise,
/// opened again before the next accept. An operator can then still reach
/// a monitor (and be told why commands fail).
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

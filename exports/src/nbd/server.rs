//! The NBD server: listening sockets, the connection limit, and the
//! export table its clients choose from.
//!
//! At most `max_connections` clients are served at once (QEMU's default
//! 100 since CVE-2024-7409; 0 means no limit); past that, new connections wait in the listen backlog, as with
//! QEMU. Stopping cancels every connection and waits until all of them,
//! and every request they had in flight, are finished.

use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use block::BlockBackend;
use schema::export::NbdServerOptions;
use schema::sockets::{SocketAddress, SocketAddressKind};
use schema::QmpError;
use tokio::net::{tcp, unix, TcpListener, UnixListener};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{handshake, transmit, within_limits, ConnectionConfig, Negotiated};
use super::export::{ExportTable, NbdExport, NbdExportConfig};
use super::handshake::HandshakeConfig;
use super::placement::{spawn_connection, spawn_on, Placement};
use super::splice::Transport;
use super::tls::{self, ServerTls, Socket, Tls, TlsReader, TlsWriter};
use super::vectored::ReadVectored;

/// QEMU's default for `handshake-max-seconds`.
pub const DEFAULT_HANDSHAKE_MAX_SECONDS: u32 = 10;
/// Pause after a failed `accept` (such as running out of descriptors).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// A Unix socket at `path` (in the abstract namespace if
    /// `abstract_name`).
    Unix { path: PathBuf, abstract_name: bool },
    /// TCP on `host:port`.
    Inet(InetListen),
    /// An already listening socket (Unix or TCP) handed over by number:
    /// inherited from the parent, so only the command line may name one.
    Fd(RawFd),
}

/// A TCP listening address (QEMU's `InetSocketAddress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetListen {
    pub host: String,
    /// A number, or the service name `nbd`.
    pub port: String,
    /// Try the ports from `port` up to this one, the first that binds.
    pub to: Option<u16>,
    /// Restrict to IPv4 or IPv6 (`Some(false)` excludes the family).
    pub ipv4: Option<bool>,
    pub ipv6: Option<bool>,
    /// `SO_KEEPALIVE` on accepted connections.
    pub keep_alive: bool,
}

/// Clients served at once when the options do not say (QEMU's
/// `NBD_DEFAULT_MAX_CONNECTIONS`): a flood of idle connections waits in
/// the backlog instead of taking the daemon's descriptors.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 100;

/// `nbd-server-start` and `--nbd-server` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdServerConfig {
    pub address: ListenAddress,
    /// 0 for no limit.
    pub max_connections: u32,
    /// 0 for no limit.
    pub handshake_max_seconds: u32,
    /// The id of a TLS credentials object.
    pub tls_creds: Option<String>,
    /// The id of an authorization object checked after the TLS handshake.
    pub tls_authz: Option<String>,
    /// What `tls_creds` and `tls_authz` name, resolved by the caller: a
    /// server asked for TLS refuses to start without it.
    pub tls: Option<ServerTls>,
}

impl NbdServerConfig {
    /// The configuration `--nbd-server` or `nbd-server-start` asks for,
    /// with QEMU's defaults.
    pub fn from_options(options: &NbdServerOptions) -> Result<NbdServerConfig, QmpError> {
        Ok(NbdServerConfig {
            address: ListenAddress::from_socket_address(&options.addr)?,
            max_connections: options.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            handshake_max_seconds: options
                .handshake_max_seconds
                .unwrap_or(DEFAULT_HANDSHAKE_MAX_SECONDS),
            tls_creds: options.tls_creds.clone(),
            tls_authz: options.tls_authz.clone(),
            tls: None,
        })
    }
}

impl ListenAddress {
    /// Where a schema socket address listens. A descriptor is given by
    /// number (named descriptors exist only in QEMU's monitor).
    pub fn from_socket_address(addr: &SocketAddress) -> Result<ListenAddress, QmpError> {
        match &addr.addr {
            SocketAddressKind::Inet(inet) => Ok(ListenAddress::Inet(InetListen {
                host: inet.host.clone(),
                port: inet.port.clone(),
                to: inet.to,
                ipv4: inet.ipv4,
                ipv6: inet.ipv6,
                keep_alive: inet.keep_alive.unwrap_or(false),
            })),
            SocketAddressKind::Unix(unix) => Ok(ListenAddress::Unix {
                path: PathBuf::from(&unix.path),
                abstract_name: unix.r#abstract.unwrap_or(false),
            }),
            SocketAddressKind::Fd(fd) => fd.str.parse().map(ListenAddress::Fd).map_err(|_| {
                QmpError::generic(format!("Invalid file descriptor number '{}'", fd.str))
            }),
            SocketAddressKind::Vsock(_) => Err(QmpError::generic(
                "vsock addresses are not supported by this NBD server",
            )),
        }
    }
}

/// The server's connections, and the moment the last client that got
/// through its handshake leaves (qemu-nbd exits then, without `-t`).
#[derive(Default)]
struct Occupancy {
    connections: AtomicUsize,
    /// Set when a client that completed its handshake leaves and no
    /// connection remains.
    emptied: Notify,
}

/// A running NBD server.
pub struct NbdServer {
    config: NbdServerConfig,
    exports: Arc<ExportTable>,
    stop: CancellationToken,
    tasks: TaskTracker,
    occupancy: Arc<Occupancy>,
    /// The socket file to remove when stopping.
    socket_path: Option<PathBuf>,
    local_addr: Option<std::net::SocketAddr>,
}

impl NbdServer {
    /// Binds the listening socket and starts accepting clients. Must be
    /// called inside a tokio runtime.
    pub async fn start(config: NbdServerConfig) -> Result<NbdServer, QmpError> {
        if let (Some(creds), None) = (&config.tls_creds, &config.tls) {
            // Serving plain text when TLS was asked for would be a silent
            // downgrade.
            return Err(QmpError::generic(format!(
                "TLS credentials '{creds}' were not resolved"
            )));
        }
        let listener = Listener::bind(&config.address).await?;
        let local_addr = match &listener {
            Listener::Tcp(l, _) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        };
        let socket_path = match &config.address {
            ListenAddress::Unix {
                path,
                abstract_name: false,
            } => Some(path.clone()),
            _ => None,
        };
        let server = NbdServer {
            exports: Arc::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            occupancy: Arc::default(),
            socket_path,
            local_addr,
            config,
        };
        let handshake_limit = match server.config.handshake_max_seconds {
            0 => None,
            s => Some(Duration::from_secs(u64::from(s))),
        };
        let connection = Arc::new(ConnectionConfig {
            handshake: HandshakeConfig {
                exports: Arc::clone(&server.exports),
            },
            handshake_limit,
            stop: server.stop.clone(),
            tasks: server.tasks.clone(),
            runtime: tokio::runtime::Handle::current(),
            tls: server.config.tls.clone(),
        });
        let slots = match server.config.max_connections {
            0 => None,
            n => Some(Arc::new(Semaphore::new(n as usize))),
        };
        let acceptor = Acceptor {
            connection,
            slots,
            occupancy: Arc::clone(&server.occupancy),
            tasks: server.tasks.clone(),
        };
        server.tasks.spawn(acceptor.run(listener));
        Ok(server)
    }

    pub fn config(&self) -> &NbdServerConfig {
        &self.config
    }

    /// The bound TCP address (useful with port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local_addr
    }

    /// Clients connected, in the handshake or in transmission.
    pub fn connection_count(&self) -> usize {
        self.occupancy.connections.load(Ordering::Relaxed)
    }

    /// Completes once a client that completed its handshake has left and
    /// no connection remains (qemu-nbd's exit without `--persistent`).
    pub async fn emptied(&self) {
        self.occupancy.emptied.notified().await
    }

    pub fn exports(&self) -> &ExportTable {
        &self.exports
    }

    /// Publishes `backend` under `config.name`.
    pub fn add_export(
        &self,
        config: NbdExportConfig,
        backend: BlockBackend,
    ) -> Result<Arc<NbdExport>, QmpError> {
        let multi_conn = self.config.max_connections != 1;
        let table = Arc::downgrade(&self.exports);
        let export = NbdExport::new(config, backend, multi_conn, &self.stop, table)?;
        self.exports.insert(Arc::clone(&export))?;
        Ok(export)
    }

    /// Stops listening, disconnects every client and waits until all their
    /// requests are finished.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Listener {
    Unix(UnixListener),
    /// With whether accepted connections get `SO_KEEPALIVE`.
    Tcp(TcpListener, bool),
}

impl Listener {
    async fn bind(address: &ListenAddress) -> Result<Listener, QmpError> {
        match address {
            ListenAddress::Unix {
                path,
                abstract_name,
            } => bind_unix(path, *abstract_name),
            ListenAddress::Inet(inet) => bind_inet(inet).await,
            ListenAddress::Fd(fd) => adopt_fd(*fd),
        }
    }
}

fn bind_unix(path: &PathBuf, abstract_name: bool) -> Result<Listener, QmpError> {
    let fail = |e: std::io::Error| {
        QmpError::generic(format!(
            "Failed to bind socket to {}: {}",
            path.display(),
            block::error::os_error_text(&e)
        ))
    };
    let listener = if abstract_name {
        use std::os::linux::net::SocketAddrExt;
        let name = path.as_os_str().as_encoded_bytes();
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(fail)?;
        std::os::unix::net::UnixListener::bind_addr(&addr).map_err(fail)?
    } else {
        remove_stale_socket(path);
        std::os::unix::net::UnixListener::bind(path).map_err(fail)?
    };
    listener.set_nonblocking(true).map_err(fail)?;
    deepen_backlog(&listener).map_err(fail)?;
    Ok(Listener::Unix(
        UnixListener::from_std(listener).map_err(fail)?,
    ))
}

/// Connections the kernel queues before they are accepted: QSD's 4096
/// (the kernel caps it at `net.core.somaxconn`), so that a burst of
/// connects is not left to SYN retries.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Raises a listening socket's backlog (listening again only changes it).
fn deepen_backlog(listener: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    // SAFETY: listen on a descriptor the listener owns; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// QEMU replaces whatever is at a socket path; only a socket is removed
/// here, so a mistyped path cannot delete a file.
pub fn remove_stale_socket(path: &PathBuf) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

async fn bind_inet(inet: &InetListen) -> Result<Listener, QmpError> {
    let first = port_number(&inet.port)?;
    let last = inet.to.unwrap_or(first).max(first);
    let host = inet.host.as_str();
    let resolved = tokio::net::lookup_host((host, first)).await.map_err(|e| {
        QmpError::generic(format!(
            "address resolution failed for {host}:{}: {}",
            inet.port,
            block::error::os_error_text(&e)
        ))
    })?;
    // Only one family named "on" restricts to it; "off" excludes it.
    let wanted = |addr: &std::net::SocketAddr| match (inet.ipv4, inet.ipv6, addr.is_ipv4()) {
        (Some(true), Some(false) | None, v4) => v4,
        (Some(false) | None, Some(true), v4) => !v4,
        (Some(false), _, true) | (_, Some(false), false) => false,
        _ => true,
    };
    let addrs: Vec<std::net::SocketAddr> = resolved.filter(wanted).collect();
    let mut last_error = None;
    for port in first..=last {
        for addr in &addrs {
            let mut addr = *addr;
            addr.set_port(port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    if let Err(e) = deepen_backlog(&listener) {
                        last_error = Some(e);
                        continue;
                    }
                    return Ok(Listener::Tcp(listener, inet.keep_alive));
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    let reason = last_error.map_or_else(
        || "no address of the requested family".to_string(),
        |e| block::error::os_error_text(&e),
    );
    Err(QmpError::generic(format!(
        "Failed to bind socket: {reason}"
    )))
}

fn port_number(port: &str) -> Result<u16, QmpError> {
    port.parse().or_else(|_| match port {
        "nbd" => Ok(10809),
        _ => Err(QmpError::generic(format!("Failed to parse port '{port}'"))),
    })
}

fn adopt_fd(fd: RawFd) -> Result<Listener, QmpError> {
    let fail = |e: std::io::Error| {
        QmpError::generic(format!(
            "Failed to use file descriptor {fd} as a listening socket: {}",
            block::error::os_error_text(&e)
        ))
    };
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `storage`.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    if storage.ss_family == libc::AF_UNIX as libc::sa_family_t {
        // SAFETY: the caller hands over ownership of a valid socket.
        let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        listener.set_nonblocking(true).map_err(fail)?;
        Ok(Listener::Unix(
            UnixListener::from_std(listener).map_err(fail)?,
        ))
    } else {
        // SAFETY: as above; getsockname proved it is a socket.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true).map_err(fail)?;
        Ok(Listener::Tcp(
            TcpListener::from_std(listener).map_err(fail)?,
            false,
        ))
    }
}

/// The accept loop of one listener.
struct Acceptor {
    connection: Arc<ConnectionConfig>,
    slots: Option<Arc<Semaphore>>,
    occupancy: Arc<Occupancy>,
    tasks: TaskTracker,
}

impl Acceptor {
    async fn run(self, listener: Listener) {
        let stop = self.connection.stop.clone();
        loop {
            let slot = match &self.slots {
                Some(slots) => tokio::select! {
                    _ = stop.cancelled() => return,
                    slot = Arc::clone(slots).acquire_owned() => match slot {
                        Ok(slot) => Some(slot),
                        Err(_) => return,
                    },
                },
                None => None,
            };
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = accept(&listener) => accepted,
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("NBD server failed to accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            };
            let occupancy = Arc::clone(&self.occupancy);
            occupancy.connections.fetch_add(1, Ordering::Relaxed);
            let config = Arc::clone(&self.connection);
            let runtime = config.runtime.clone();
            spawn_connection(&runtime, &self.tasks, move |placement| async move {
                let negotiated = match stream.serve(config, placement).await {
                    Ok(negotiated) => negotiated,
                    Err(e) => {
                        tracing::warn!("NBD server cannot serve a connection: {e}");
                        true
                    }
                };
                let left = occupancy.connections.fetch_sub(1, Ordering::Relaxed) - 1;
                if negotiated && left == 0 {
                    occupancy.emptied.notify_one();
                }
                drop(slot);
            });
        }
    }
}

/// An accepted connection, free to move to the thread that will serve it.
enum Stream {
    Unix(std::os::unix::net::UnixStream, String),
    Tcp(std::net::TcpStream, String),
    /// A TLS session with its socket parked.
    Tls(Box<Tls>),
}

/// A negotiated client on its way to another loop.
type Moving = Negotiated<(), ()>;

impl Stream {
    /// Serves the client on the runtime this runs on: the handshake, then
    /// the transmission, here or on the export's iothread. Says whether the
    /// client got through its handshake.
    async fn serve(
        self,
        config: Arc<ConnectionConfig>,
        placement: Placement,
    ) -> std::io::Result<bool> {
        if let Some(tls) = config.tls.clone() {
            return self.serve_tls(tls, config, placement).await;
        }
        match self {
            Stream::Tls(_) => Err(std::io::Error::other("a TLS session without TLS")),
            Stream::Unix(s, peer) => {
                let (r, w) = tokio::net::UnixStream::from_std(s)?.into_split();
                let reunite = |r: unix::OwnedReadHalf, w| -> std::io::Result<Stream> {
                    let stream = r.reunite(w).map_err(std::io::Error::other)?;
                    Ok(Stream::Unix(stream.into_std()?, String::new()))
                };
                serve_halves(r, w, config, placement, peer, reunite).await
            }
            Stream::Tcp(s, peer) => {
                let (r, w) = tokio::net::TcpStream::from_std(s)?.into_split();
                let reunite = |r: tcp::OwnedReadHalf, w| -> std::io::Result<Stream> {
                    let stream = r.reunite(w).map_err(std::io::Error::other)?;
                    Ok(Stream::Tcp(stream.into_std()?, String::new()))
                };
                serve_halves(r, w, config, placement, peer, reunite).await
            }
        }
    }

    /// Serves a client negotiated elsewhere, on the runtime this runs on.
    async fn transmit(
        self,
        client: Moving,
        config: Arc<ConnectionConfig>,
        placement: Placement,
        peer: &str,
    ) -> std::io::Result<()> {
        match self {
            Stream::Unix(s, _) => {
                let (reader, writer) = tokio::net::UnixStream::from_std(s)?.into_split();
                transmit(client.with_halves(reader, writer), &config, placement, peer).await;
            }
            Stream::Tcp(s, _) => {
                let (reader, writer) = tokio::net::TcpStream::from_std(s)?.into_split();
                transmit(client.with_halves(reader, writer), &config, placement, peer).await;
            }
            Stream::Tls(mut session) => {
                session.get_mut().attach()?;
                let (reader, writer) = tokio::io::split(*session);
                let (reader, writer) = (TlsReader::new(reader), TlsWriter::new(writer));
                transmit(client.with_halves(reader, writer), &config, placement, peer).await;
            }
        }
        Ok(())
    }

    /// The TLS handshake path (`tls`), then the transmission here or on
    /// the export's iothread, as `serve_halves` does.
    async fn serve_tls(
        self,
        tls: ServerTls,
        config: Arc<ConnectionConfig>,
        placement: Placement,
    ) -> std::io::Result<bool> {
        let (socket, peer) = match self {
            Stream::Unix(s, peer) => (Socket::unix(tokio::net::UnixStream::from_std(s)?), peer),
            Stream::Tcp(s, peer) => (Socket::tcp(tokio::net::TcpStream::from_std(s)?), peer),
            Stream::Tls(_) => return Err(std::io::Error::other("TLS negotiated twice")),
        };
        let negotiation = tls::negotiate(socket, &tls, &config.handshake, &peer);
        let Some(client) = within_limits(&config, &peer, negotiation).await else {
            return Ok(false);
        };
        let reunite = |reader: TlsReader, writer: TlsWriter| -> std::io::Result<Stream> {
            let mut session = reader.into_inner().unsplit(writer.into_inner());
            session.get_mut().park()?;
            Ok(Stream::Tls(Box::new(session)))
        };
        place(client, config, placement, peer, reunite).await
    }
}

impl Moving {
    /// The client again, over the socket halves made on its new loop.
    fn with_halves<R, W>(self, reader: R, writer: W) -> Negotiated<R, W> {
        Negotiated {
            reader,
            leftover: self.leftover,
            writer,
            session: self.session,
        }
    }
}

/// The handshake on this loop, then the transmission (`place`). Says
/// whether the client got through its handshake.
async fn serve_halves<R, W>(
    read: R,
    write: W,
    config: Arc<ConnectionConfig>,
    placement: Placement,
    peer: String,
    reunite: impl FnOnce(R, W) -> std::io::Result<Stream>,
) -> std::io::Result<bool>
where
    R: ReadVectored + Send + 'static,
    W: Transport + 'static,
{
    let Some(client) = handshake(read, write, &config, &peer).await else {
        return Ok(false);
    };
    place(client, config, placement, peer, reunite).await
}

/// A negotiated client's transmission: here, or moved to the loop of the
/// export's iothread (the connection stays counted here until it ends
/// there).
async fn place<R, W>(
    client: Negotiated<R, W>,
    config: Arc<ConnectionConfig>,
    placement: Placement,
    peer: String,
    reunite: impl FnOnce(R, W) -> std::io::Result<Stream>,
) -> std::io::Result<bool>
where
    R: ReadVectored + Send + 'static,
    W: Transport + 'static,
{
    let target = client.session.client.export().event_loop().cloned();
    let Some(target) = target.filter(|t| !placement.is_on(t)) else {
        transmit(client, &config, placement, &peer).await;
        return Ok(true);
    };
    drop(placement);
    let Negotiated {
        reader,
        leftover,
        writer,
        session,
    } = client;
    let stream = reunite(reader, writer)?;
    let moving = Negotiated {
        reader: (),
        leftover,
        writer: (),
        session,
    };
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let tasks = config.tasks.clone();
    spawn_on(&target, &tasks, move |placement| async move {
        if let Err(e) = stream.transmit(moving, config, placement, &peer).await {
            tracing::warn!("NBD server cannot move a connection to its iothread: {e}");
        }
        drop(done);
    });
    let _ = finished.await;
    Ok(true)
}

async fn accept(listener: &Listener) -> std::io::Result<Stream> {
    match listener {
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok(Stream::Unix(s.into_std()?, "unix".to_string()))
        }
        Listener::Tcp(l, keep_alive) => {
            let (s, peer) = l.accept().await?;
            // Replies must not wait for Nagle's algorithm (spec: SHOULD).
            s.set_nodelay(true)?;
            if *keep_alive {
                set_keep_alive(&s)?;
            }
            Ok(Stream::Tcp(s.into_std()?, peer.to_string()))
        }
    }
}

fn set_keep_alive(socket: &tokio::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int of the size given from a live local.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

//! The operators' metrics endpoint (`--metrics`, storaged's own option):
//! an HTTP listener on the daemon's runtime that answers each scrape with
//! the Prometheus text exposition of the daemon's counters
//! ([`collect`]). Bounded: at most `max-connections` connections are
//! served at once (more wait in the listen backlog), a request head is at
//! most [`http::MAX_REQUEST_BYTES`], and a connection that has not been
//! answered within [`CONNECTION_TIMEOUT`] is dropped. The endpoint stops
//! listening (and its Unix socket goes) when its [`Endpoint`] is dropped.

mod collect;
mod exposition;
mod http;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use block::error::os_error_text;
use schema::metrics::MetricsOptions;
use schema::sockets::SocketAddressKind;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::state::Daemon;

/// Connections served at once when the options do not say.
const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// How long a connection may take from accept to the end of its answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (such as running out of descriptors).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening endpoint; dropping it stops the listening and removes its
/// Unix socket (answers under way finish).
pub struct Endpoint {
    stop: CancellationToken,
    socket_path: Option<PathBuf>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the endpoint's socket and serves it until the [`Endpoint`] is
/// dropped. Errors are worded as QEMU words a failed listen.
pub async fn start(daemon: Arc<Daemon>, options: &MetricsOptions) -> Result<Endpoint, String> {
    let slots = match options.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS) {
        0 => return Err("Parameter 'max-connections' expects a value of at least 1".into()),
        n => Arc::new(Semaphore::new(n as usize)),
    };
    let listener = bind(&options.addr.addr).await?;
    let socket_path = match &options.addr.addr {
        SocketAddressKind::Unix(unix) => Some(PathBuf::from(&unix.path)),
        _ => None,
    };
    let stop = CancellationToken::new();
    let accepting = accept_loop(daemon, listener, slots);
    let stopped = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = accepting => {}
            () = stopped.cancelled() => {}
        }
    });
    Ok(Endpoint { stop, socket_path })
}

async fn bind(addr: &SocketAddressKind) -> Result<Listener, String> {
    match addr {
        SocketAddressKind::Inet(inet) => {
            let port: u16 = inet
                .port
                .parse()
                .map_err(|_| format!("Failed to parse port '{}'", inet.port))?;
            let host = inet.host.as_str();
            TcpListener::bind((host, port))
                .await
                .map(Listener::Tcp)
                .map_err(|e| {
                    format!(
                        "Failed to bind socket to {host}:{port}: {}",
                        os_error_text(&e)
                    )
                })
        }
        SocketAddressKind::Unix(unix) => {
            let path = PathBuf::from(&unix.path);
            exports::nbd::remove_stale_socket(&path);
            UnixListener::bind(&path).map(Listener::Unix).map_err(|e| {
                format!(
                    "Failed to bind socket to {}: {}",
                    path.display(),
                    os_error_text(&e)
                )
            })
        }
        _ => Err("Parameter 'addr.type' expects 'inet' or 'unix' for --metrics".into()),
    }
}

async fn accept_loop(daemon: Arc<Daemon>, listener: Listener, slots: Arc<Semaphore>) {
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let daemon = Arc::clone(&daemon);
        let render = move || collect::render(&daemon);
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                tokio::spawn(answer(s, render, slot));
            }),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| {
                tokio::spawn(answer(s, render, slot));
            }),
        };
        if let Err(e) = accepted {
            tracing::warn!("metrics endpoint failed to accept a connection: {e}");
            tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
        }
    }
}

/// Answers one connection within [`CONNECTION_TIMEOUT`], holding its slot.
async fn answer<S>(
    stream: S,
    render: impl FnOnce() -> String,
    _slot: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(CONNECTION_TIMEOUT, http::serve(stream, render)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
        Err(_) => tracing::debug!("metrics connection timed out"),
    }
}

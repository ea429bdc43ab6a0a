//! One client connection: the handshake under its time limit, then the
//! transmission phase (`transmission`), which may run on another event
//! loop than the handshake (the export's iothread).

use std::future::Future;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handshake::{negotiate, HandshakeConfig, HandshakeError, Outcome, Session};
use super::placement::Placement;
use super::splice::Transport;
use super::tls::ServerTls;
use super::transmission;
use super::vectored::ReadVectored;

/// Read buffering during the handshake (options are small); whatever it
/// holds when transmission starts moves to the transmission's buffer.
pub const HANDSHAKE_BUFFER_LEN: usize = 16 << 10;

/// What a connection needs from its server.
pub struct ConnectionConfig {
    pub handshake: HandshakeConfig,
    /// `None` for no limit.
    pub handshake_limit: Option<Duration>,
    /// Fires when the server stops.
    pub stop: CancellationToken,
    /// Request handlers are tracked so that a stop can wait for them.
    pub tasks: TaskTracker,
    /// The daemon's runtime, where request handlers that may wait run.
    pub runtime: Handle,
    /// Set when clients must use TLS.
    pub tls: Option<ServerTls>,
}

/// A client through the handshake, ready for transmission.
pub struct Negotiated<R, W> {
    pub reader: R,
    /// Bytes the client sent after the handshake, already read.
    pub leftover: Vec<u8>,
    pub writer: W,
    pub session: Session,
}

/// Runs the handshake (without TLS) under its time limit; `None` if
/// the client left, broke the protocol, aborted, or the server stopped.
pub async fn handshake<R, W>(
    read: R,
    mut write: W,
    config: &ConnectionConfig,
    peer: &str,
) -> Option<Negotiated<R, W>>
where
    R: ReadVectored + Send + 'static,
    W: Transport + 'static,
{
    let negotiation = async {
        let mut reader = BufReader::with_capacity(HANDSHAKE_BUFFER_LEN, read);
        Ok(
            match negotiate(&mut reader, &mut write, &config.handshake).await? {
                Outcome::Aborted => None,
                Outcome::Transmission(session) => Some(Negotiated {
                    leftover: reader.buffer().to_vec(),
                    reader: reader.into_inner(),
                    writer: write,
                    session,
                }),
            },
        )
    };
    within_limits(config, peer, negotiation).await
}

/// Runs a handshake under its time limit until the server stops; logs
/// how it failed.
pub async fn within_limits<T>(
    config: &ConnectionConfig,
    peer: &str,
    negotiation: impl Future<Output = Result<Option<T>, HandshakeError>>,
) -> Option<T> {
    let limited = async {
        match config.handshake_limit {
            Some(limit) => tokio::time::timeout(limit, negotiation).await.ok(),
            None => Some(negotiation.await),
        }
    };
    let outcome = tokio::select! {
        _ = config.stop.cancelled() => return None,
        outcome = limited => outcome,
    };
    match outcome {
        None => tracing::info!(peer, "NBD client dropped: handshake took too long"),
        Some(Err(e)) => tracing::info!(peer, "NBD client dropped: {e}"),
        Some(Ok(None)) => tracing::debug!(peer, "NBD client aborted the handshake"),
        Some(Ok(Some(negotiated))) => return Some(negotiated),
    }
    None
}

/// Serves a negotiated client's requests until it leaves, breaks the
/// protocol, or is told to go.
pub async fn transmit<R, W>(
    client: Negotiated<R, W>,
    config: &ConnectionConfig,
    placement: Placement,
    peer: &str,
) where
    R: ReadVectored + Send + 'static,
    W: Transport + 'static,
{
    let export = client.session.client.export().name().to_string();
    tracing::debug!(peer, export, "NBD client entered transmission");
    transmission::run(
        client.reader,
        &client.leftover,
        client.writer,
        client.session,
        config,
        placement,
    )
    .await;
    tracing::debug!(peer, export, "NBD client gone");
}

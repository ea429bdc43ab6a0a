//! One client connection: the handshake under its time limit, then the
//! transmission phase (`transmission`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, BufReader};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handshake::{negotiate, HandshakeConfig, Outcome};
use super::placement::Placement;
use super::splice::SpliceSink;
use super::transmission;

/// Read buffering during the handshake (options are small); whatever it
/// holds when transmission starts moves to the transmission's buffer.
const HANDSHAKE_BUFFER_LEN: usize = 16 << 10;

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
}

/// Serves one client until it leaves, breaks the protocol, or is told to go.
pub async fn serve<R, W>(
    read: R,
    mut write: W,
    config: Arc<ConnectionConfig>,
    peer: &str,
    placement: Placement,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: SpliceSink + 'static,
{
    let mut reader = BufReader::with_capacity(HANDSHAKE_BUFFER_LEN, read);
    let handshake = negotiate(&mut reader, &mut write, &config.handshake);
    let limited = async {
        match config.handshake_limit {
            Some(limit) => tokio::time::timeout(limit, handshake).await.ok(),
            None => Some(handshake.await),
        }
    };
    let outcome = tokio::select! {
        _ = config.stop.cancelled() => return,
        outcome = limited => outcome,
    };
    match outcome {
        None => tracing::info!(peer, "NBD client dropped: handshake took too long"),
        Some(Err(e)) => tracing::info!(peer, "NBD client dropped: {e}"),
        Some(Ok(Outcome::Aborted)) => tracing::debug!(peer, "NBD client aborted the handshake"),
        Some(Ok(Outcome::Transmission(session))) => {
            let export = session.client.export().name().to_string();
            tracing::debug!(peer, export, "NBD client entered transmission");
            transmission::run(reader, write, session, &config, placement).await;
            tracing::debug!(peer, export, "NBD client gone");
        }
    }
}

//! `--metrics`: storaged's own option (QSD has no counterpart) for the
//! operators' metrics endpoint, an HTTP server that answers `GET
//! /metrics` in the Prometheus text format (see docs/metrics.md).

use serde::Deserialize;

use crate::sockets::SocketAddress;

/// Where the metrics endpoint listens (`addr.type=inet` or `unix`), and
/// how many scrapes it serves at once.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetricsOptions {
    pub addr: SocketAddress,
    /// Connections served at once (default 16; at least 1); more wait in
    /// the listen backlog.
    pub max_connections: Option<u32>,
}

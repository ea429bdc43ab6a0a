//! The QMP monitor of storaged, speaking QEMU's wire protocol exactly.
//!
//! It owns everything between a monitor socket and the daemon's commands:
//! listening (Unix or TCP, one client at a time per monitor, like QEMU's
//! socket chardev), the greeting, capability negotiation, splitting the
//! input into JSON messages and checking requests with QEMU's error texts,
//! `qmp_capabilities` and `query-commands`, replies with the request's `id`,
//! and events to every negotiated client. Output is byte-for-byte what
//! qemu-storage-daemon sends: QEMU's member order, escapes and CRLF line
//! ends. It knows nothing about block devices: the daemon implements
//! [`Dispatcher`] and emits events on an [`EventBus`]. Its [`socket`]
//! module opens socket chardevs for monitors and for the daemon's
//! chardevs without one alike.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn example(dispatcher: Arc<dyn qmp::Dispatcher>) -> std::io::Result<()> {
//! let events = qmp::EventBus::new();
//! let version = qmp::VersionInfo {
//!     qemu: qmp::VersionTriple { major: 10, minor: 0, micro: 0 },
//!     package: "storaged 0.1.0".into(),
//! };
//! let monitors = qmp::Monitors::new(dispatcher, version, events.clone());
//! let address = qmp::ListenAddress::Unix("qmp.sock".into());
//! monitors.listen(&address, false, qmp::MonitorOptions::default()).await?;
//! // ... until a `quit` command or a signal:
//! monitors.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod builtin;
#[cfg(feature = "test-client")]
pub mod client;
mod dispatcher;
mod events;
pub mod json;
mod monitors;
mod reply;
mod request;
mod session;
pub mod socket;
pub mod trace;

pub use dispatcher::Dispatcher;
pub use events::{EventBus, MAX_QUEUED_MESSAGES};
pub use monitors::{Monitors, SHUTDOWN_FLUSH_TIMEOUT};
pub use reply::{VersionInfo, VersionTriple};
pub use session::{MonitorOptions, MAX_QUEUED_REQUESTS};
pub use socket::{BoundAddress, ListenAddress, SocketSpec};

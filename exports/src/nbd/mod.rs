//! The NBD server export (protocol: `doc/proto.md` of the
//! NetworkBlockDevice/nbd project, plus its `EXTENDED_HEADERS` extension
//! and QEMU's `qemu:` metadata namespace).
//!
//! Layers, from the wire up: `proto` (numbers) and `codec` (byte layouts);
//! `handshake` (option haggling) and `meta` (metadata contexts);
//! `connection` (one client), `placement` (the thread it runs on),
//! `transmission` (its request loop), `poll` (socket polling between
//! requests), `input` (receive buffering), `request` (checks), `dispatch` (running a
//! request), `status` (block status), `reply` and `writer` (batched
//! vectored writes), `vectored` (reads that fill a payload and the input
//! buffer behind it at once), `splice` (file data sent without copies); `tls` (STARTTLS and the
//! session beneath the rest);
//! `export` (exports and their clients), `server` (listeners and
//! limits) and `service` (the server and the export type as the registry
//! sees them).

pub mod codec;
mod connection;
mod dispatch;
pub mod export;
mod handshake;
mod input;
pub mod meta;
mod placement;
mod poll;
pub use nbdwire::proto;
mod reply;
pub mod request;
pub mod server;
pub mod service;
mod splice;
mod status;
pub mod tls;
mod transmission;
mod vectored;
mod writer;

pub use export::{NbdExport, NbdExportConfig, PollLimit};
pub use meta::{ExportMeta, ExportedBitmap};
pub use poll::DEFAULT_POLL_LIMIT;
pub use server::{
    remove_stale_socket, InetListen, ListenAddress, NbdServer, NbdServerConfig,
    DEFAULT_HANDSHAKE_MAX_SECONDS,
};

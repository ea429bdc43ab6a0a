//! Exports: the ways clients reach block nodes. `export` is what every
//! export type provides and the table of types, `life` the clients and
//! shutdown of one export, `registry` the daemon's exports, `buffers` payload buffer reuse,
//! `event_loop` and `iothread` the threads exports run on, `test_support`
//! what unit tests share; one module
//! per type (the NBD server, FUSE, vhost-user-blk).

mod buffers;
pub mod event_loop;
pub mod export;
pub mod fuse;
pub mod iothread;
pub mod life;
pub mod nbd;
pub mod registry;
#[cfg(test)]
mod test_support;
pub mod trace;
pub mod vhost_user_blk;

pub use buffers::tune_allocator;
pub use export::{BlockExport, ExportContext, ExportDriver, EXPORT_DRIVERS};
pub use registry::BlockExports;

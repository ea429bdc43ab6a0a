//! Exports: the ways clients reach block nodes. One module per export
//! type; today that is the NBD server.

pub mod nbd;
pub mod registry;

pub use registry::BlockExports;

//! The block layer: the node graph and the drivers.
//!
//! A request from an export enters through a [`BlockBackend`], goes to the
//! backend's root node and down through filters and formats to a protocol
//! driver. Drivers never know which export called them.

pub mod driver;
pub mod error;

pub use driver::{BlockDriver, ChildRole, Extent, WriteFlags, ZeroFlags};
pub use error::{BlockError, BlockResult, ErrorKind};

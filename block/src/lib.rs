//! The block layer: the node graph and the drivers.
//!
//! A request from an export enters through a [`BlockBackend`], goes to the
//! backend's root node and down through filters and formats to a protocol
//! driver. Drivers never know which export called them.
//!
//! [`BlockGraph`] is what the QMP commands drive (`blockdev-add`,
//! `blockdev-del`, `block_resize`, the queries); exports attach a
//! [`BlockBackend`] to a node and send their requests through it.

mod aligned;
pub mod backend;
mod backing_file;
pub mod bitmaps;
pub mod blkdebug;
pub mod blocking;
pub mod blockjob;
pub mod compress;
pub mod copy_on_read;
pub mod create;
mod direct_io;
pub mod dirty_bitmap;
mod drain;
pub mod driver;
pub mod error;
mod factory;
pub mod file;
pub mod filename;
pub mod graph;
pub mod info;
mod internal_snapshot;
pub mod iobuf;
pub mod job;
pub mod limits;
mod locking;
mod nbd;
pub mod node;
pub mod null;
pub mod open;
mod perm_update;
pub mod permissions;
mod posix_io;
pub mod preallocate;
pub mod probe;
pub mod qcow2;
mod range_lock;
pub mod raw;
mod snapshot;
pub mod stats;
pub mod throttle;
pub mod trace;
pub mod write_hooks;
mod write_threshold;

pub use aligned::{AlignedBuf, HUGE_PAGE, PAGE};
pub use backend::{BackendMode, BlockBackend, HeldReadSource};
pub use driver::{
    BackingFileName, BlockDriver, ChildRole, DriverInfo, Extent, WriteFlags, ZeroFlags,
};
pub use error::{BlockError, BlockResult, ErrorKind};
pub use graph::{BackendPerms, BlockGraph, Drained, ExportAttach};
pub use iobuf::{IoBuf, IoMemory};
pub use limits::Limits;
pub use node::{Node, NodeBusy, NodeChild, NodeSettings, ReadSource};
pub use permissions::{ChildRoleFlags, Perm};
pub use write_hooks::{WriteKind, WriteObserver, WriteRequest};

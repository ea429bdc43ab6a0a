//! The export family: what every export type provides, and the table of
//! types that `block-export-add` chooses from (QEMU's `blk_exp_drivers`).
//!
//! An export type is one module with a `create` function: given the
//! export's options and a context that attaches its backend, it starts
//! serving and returns the export. The registry does the rest for every
//! type alike: ids, `query-block-exports`, safe and hard deletion, the
//! `BLOCK_EXPORT_DELETED` event and shutdown with the daemon.

use std::sync::Arc;

use block::{BackendMode, BackendPerms, BlockBackend, BlockGraph, ExportAttach};
use schema::export::{BlockExportOptions, BlockExportType};
use schema::QmpError;

use crate::iothread::IoThread;
use crate::life::ExportLife;
use crate::registry::BlockExports;

/// One export, whatever its type.
pub trait BlockExport: Send + Sync + 'static {
    /// Its clients and holds (see [`ExportLife`]).
    fn life(&self) -> &ExportLife;

    /// Called once the export is closed: take no new clients (an NBD
    /// export leaves its server's table, a FUSE export unmounts) and
    /// release the holds when done. The clients present were told to go
    /// through the life's disconnect token.
    fn shutdown(&self);
}

/// Creates a started export of one type from its options.
pub type CreateExport = fn(&ExportContext<'_>) -> Result<Arc<dyn BlockExport>, QmpError>;

/// One export type.
#[derive(Clone, Copy)]
pub struct ExportDriver {
    pub kind: BlockExportType,
    pub create: CreateExport,
}

/// The export types of the daemon.
pub const EXPORT_DRIVERS: &[ExportDriver] = &[
    ExportDriver {
        kind: BlockExportType::Nbd,
        create: crate::nbd::service::create_export,
    },
    ExportDriver {
        kind: BlockExportType::Fuse,
        create: crate::fuse::create_export,
    },
    ExportDriver {
        kind: BlockExportType::VhostUserBlk,
        create: crate::vhost_user_blk::create_export,
    },
];

/// What an export type's `create` works with.
pub struct ExportContext<'a> {
    pub options: &'a BlockExportOptions,
    pub graph: &'a BlockGraph,
    /// The registry (for services such as the NBD server).
    pub exports: &'a BlockExports,
    /// The iothread the export runs its requests in, if it names one.
    pub iothread: Option<Arc<IoThread>>,
    /// The backend's root once attached, for `query-block-exports`.
    pub(crate) attached: std::sync::Mutex<Option<block::backend::BackendRoot>>,
}

impl ExportContext<'_> {
    /// Whether the export was asked to be writable.
    pub fn writable(&self) -> bool {
        self.options.writable.unwrap_or(false)
    }

    /// Attaches the export's backend with `perms`: the node named by the
    /// options (which the daemon activated first unless `allow-inactive`:
    /// [`block::BlockGraph::activate_for_export`]), with writethrough
    /// from the options and `growable` as the type decides.
    pub fn attach(&self, perms: BackendPerms, growable: bool) -> Result<BlockBackend, QmpError> {
        let options = self.options;
        let backend = self.graph.attach_export_backend(&ExportAttach {
            node_name: options.node_name.as_str(),
            perms,
            allow_inactive: options.allow_inactive.unwrap_or(false),
            mode: BackendMode {
                writethrough: options.writethrough.unwrap_or(false),
                growable,
            },
        })?;
        *self.attached.lock().unwrap_or_else(|e| e.into_inner()) = Some(backend.root());
        Ok(backend)
    }
}

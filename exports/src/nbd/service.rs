//! The NBD server as a service of the export registry, and the NBD
//! export type: `nbd-server-start`/`--nbd-server`, `nbd-server-stop`,
//! the deprecated `nbd-server-add`/`nbd-server-remove`, and the `create`
//! of `block-export-add type=nbd`.
//!
//! Semantics and messages follow QSD 10.0: one server at a time; an NBD
//! export needs a running server; `nbd-server-stop` deletes every NBD
//! export and returns when all are gone.

use std::sync::{Arc, Mutex, MutexGuard};

use block::bitmaps::NamedBitmap;
use block::{BackendPerms, BlockGraph, Node};
use schema::export::{
    BlockDirtyBitmapOrStr, BlockExportKind, BlockExportOptions, BlockExportOptionsNbd,
    BlockExportType, NbdServerAddArgs, NbdServerOptions, NbdServerRemoveArgs,
};
use schema::QmpError;

use super::tls::ServerTls;
use super::{
    ExportMeta, ExportedBitmap, NbdExportConfig, NbdServer, NbdServerConfig, PollLimit,
    DEFAULT_POLL_LIMIT,
};
use crate::export::{BlockExport, ExportContext};
use crate::registry::BlockExports;

/// The slot of the one NBD server.
#[derive(Default)]
pub struct NbdService {
    server: Mutex<Option<Arc<NbdServer>>>,
    /// Serialises starting and stopping the server, which wait.
    control: tokio::sync::Mutex<()>,
}

impl NbdService {
    fn server(&self) -> MutexGuard<'_, Option<Arc<NbdServer>>> {
        // The slot holds a value or none, whatever a holder did.
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> Result<Arc<NbdServer>, QmpError> {
        self.server().clone().ok_or_else(not_running)
    }
}

impl BlockExports {
    /// The first check of `nbd-server-start`, for callers that check
    /// more (the TLS objects) before starting.
    pub fn check_nbd_server_stopped(&self) -> Result<(), QmpError> {
        match *self.nbd().server() {
            Some(_) => Err(QmpError::generic("NBD server already running")),
            None => Ok(()),
        }
    }

    /// `nbd-server-start` / `--nbd-server`. Must run inside the tokio
    /// runtime that will serve the clients.
    /// `tls` is what `options.tls_creds` and `tls_authz` name.
    pub async fn nbd_server_start(
        &self,
        options: &NbdServerOptions,
        tls: Option<ServerTls>,
    ) -> Result<(), QmpError> {
        let _control = self.nbd().control.lock().await;
        self.check_nbd_server_stopped()?;
        let mut config = NbdServerConfig::from_options(options)?;
        config.tls = tls;
        let server = NbdServer::start(config).await?;
        *self.nbd().server() = Some(Arc::new(server));
        Ok(())
    }

    /// `nbd-server-stop`: deletes every NBD export, disconnects every
    /// client and returns once all of them are gone.
    pub async fn nbd_server_stop(&self) -> Result<(), QmpError> {
        let _control = self.nbd().control.lock().await;
        let server = self.nbd().running()?;
        for id in self.open_ids(Some(BlockExportType::Nbd)) {
            self.close_id(&id);
        }
        server.stop().await;
        self.wait_gone(Some(BlockExportType::Nbd)).await;
        *self.nbd().server() = None;
        Ok(())
    }

    /// The running NBD server, if any (for its connection count).
    pub fn nbd_server(&self) -> Option<Arc<NbdServer>> {
        self.nbd().server().clone()
    }

    /// `nbd-server-add` (deprecated): the export's id is its name, which
    /// defaults to `device`; a read-only node is exported read-only
    /// rather than refused.
    pub fn nbd_server_add(
        &self,
        graph: &BlockGraph,
        args: &NbdServerAddArgs,
    ) -> Result<(), QmpError> {
        let node = graph.lookup(Some(&args.device), Some(&args.device))?;
        self.nbd().running()?;
        let name = args.name.clone().unwrap_or_else(|| args.device.clone());
        let options = BlockExportOptions {
            id: name.clone(),
            fixed_iothread: None,
            iothread: None,
            node_name: node.name().to_string(),
            writable: Some(args.writable.unwrap_or(false) && !node.is_read_only()),
            writethrough: None,
            allow_inactive: None,
            kind: BlockExportKind::Nbd(BlockExportOptionsNbd {
                name: Some(name),
                description: args.description.clone(),
                bitmaps: args
                    .bitmap
                    .clone()
                    .map(|b| vec![BlockDirtyBitmapOrStr::Local(b)]),
                allocation_depth: None,
            }),
        };
        self.add(graph, &options, None)
    }

    /// `nbd-server-remove` (deprecated): `block-export-del` by id.
    pub fn nbd_server_remove(&self, args: &NbdServerRemoveArgs) -> Result<(), QmpError> {
        self.del(&args.name, args.mode.unwrap_or_default())
    }
}

/// `block-export-add type=nbd`: publishes the node on the running server
/// (QEMU's order of checks: the node, the server, the bitmaps, then the
/// name and description).
pub fn create_export(cx: &ExportContext<'_>) -> Result<Arc<dyn BlockExport>, QmpError> {
    let BlockExportKind::Nbd(nbd) = &cx.options.kind else {
        unreachable!("the registry calls each type's create with its own options")
    };
    let writable = cx.writable();
    // QEMU's NBD exports refuse resize to others while they run.
    let backend = cx.attach(BackendPerms::export(writable), false)?;
    let server = cx.exports.nbd().running()?;
    let bitmaps = resolve_bitmaps(
        cx.graph,
        &backend.node(),
        writable,
        nbd.bitmaps.as_deref().unwrap_or_default(),
    )?;
    let config = NbdExportConfig {
        name: nbd
            .name
            .clone()
            .unwrap_or_else(|| cx.options.node_name.clone()),
        description: nbd.description.clone(),
        writable,
        meta: ExportMeta {
            allocation_depth: nbd.allocation_depth.unwrap_or(false),
            bitmaps,
        },
        poll_limit: cx
            .iothread
            .as_ref()
            .map_or(PollLimit::Fixed(DEFAULT_POLL_LIMIT), |t| {
                PollLimit::Iothread(Arc::clone(t))
            }),
        event_loop: cx.iothread.as_ref().map(|t| Arc::clone(t.event_loop())),
    };
    let export = server.add_export(config, backend)?;
    Ok(export)
}

/// Finds the dirty bitmaps an export publishes (QEMU's checks and
/// messages): a bare name is looked for on the exported node and the
/// nodes below it, `{node, name}` on that node. A published bitmap is busy
/// until the export is gone.
fn resolve_bitmaps(
    graph: &BlockGraph,
    node: &Arc<Node>,
    writable: bool,
    bitmaps: &[BlockDirtyBitmapOrStr],
) -> Result<Vec<Arc<dyn ExportedBitmap>>, QmpError> {
    let mut found = Vec::with_capacity(bitmaps.len());
    for bitmap in bitmaps {
        let (name, bitmap) = match bitmap {
            BlockDirtyBitmapOrStr::Local(name) => {
                let (owner, bitmap) = graph
                    .bitmap_in_chain(node, name)
                    .ok_or_else(|| QmpError::generic(format!("Bitmap '{name}' is not found")))?;
                if !writable && owner.is_writable() && bitmap.is_recording() {
                    return Err(QmpError::generic(format!(
                        "Enabled bitmap '{name}' incompatible with readonly export"
                    )));
                }
                (name, bitmap)
            }
            BlockDirtyBitmapOrStr::External(external) => {
                let (_, bitmap) = graph.bitmap_lookup(&external.node, &external.name)?;
                (&external.name, bitmap)
            }
        };
        bitmap.check_usable()?;
        found.push((name.clone(), bitmap));
    }
    Ok(found
        .into_iter()
        .map(|(name, bitmap)| -> Arc<dyn ExportedBitmap> {
            bitmap.set_busy(true);
            Arc::new(PublishedBitmap { name, bitmap })
        })
        .collect())
}

/// A bitmap an export publishes as `qemu:dirty-bitmap:NAME`; busy while
/// the export (or a connection of it) holds it.
struct PublishedBitmap {
    name: String,
    bitmap: Arc<NamedBitmap>,
}

impl ExportedBitmap for PublishedBitmap {
    fn name(&self) -> &str {
        &self.name
    }

    fn extent(&self, offset: u64, len: u64) -> (bool, u64) {
        self.bitmap.bitmap().extent(offset, len)
    }
}

impl Drop for PublishedBitmap {
    fn drop(&mut self) {
        self.bitmap.set_busy(false);
    }
}

fn not_running() -> QmpError {
    QmpError::generic("NBD server not running")
}

//! The block exports of the daemon, whatever their type: unique ids,
//! `query-block-exports`, deletion modes and the `BLOCK_EXPORT_DELETED`
//! event, plus the one NBD server they may be published on.
//!
//! This is the API the QMP handlers call: each command is one method
//! taking its schema arguments. Semantics and messages follow QSD 10.0:
//! exports are listed newest first; a safe delete refuses while clients
//! use the export; a hard delete drops them and the event follows once the
//! last is gone; `nbd-server-stop` deletes every NBD export and returns
//! when all are gone.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use block::{BlockBackend, BlockGraph};
use schema::event::{Event, EventSink};
use schema::export::{
    BlockDirtyBitmapOrStr, BlockExportInfo, BlockExportKind, BlockExportOptions,
    BlockExportOptionsNbd, BlockExportRemoveMode, BlockExportType, NbdServerAddArgs,
    NbdServerOptions, NbdServerRemoveArgs,
};
use schema::QmpError;

use crate::nbd::export::Closing;
use crate::nbd::{
    ExportMeta, ExportedBitmap, NbdExport, NbdExportConfig, NbdServer, NbdServerConfig,
    DEFAULT_POLL_LIMIT,
};

/// Every block export, and the NBD server.
#[derive(Clone)]
pub struct BlockExports {
    inner: Arc<Inner>,
}

struct Inner {
    events: EventSink,
    state: Mutex<State>,
    /// Serialises starting and stopping the NBD server, which wait.
    server_control: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    exports: Vec<Entry>,
    nbd: Option<Arc<NbdServer>>,
}

struct Entry {
    id: String,
    node_name: String,
    export: Arc<NbdExport>,
    shutting_down: bool,
}

/// What `block-export-add` and `nbd-server-add` have in common.
struct NewExport<'a> {
    id: &'a str,
    node_name: &'a str,
    writable: bool,
    writethrough: bool,
    /// Leave an inactive node inactive (read-only until activated).
    allow_inactive: bool,
    nbd: &'a BlockExportOptionsNbd,
    poll_limit: Duration,
}

impl BlockExports {
    /// No exports and no server; `events` receives `BLOCK_EXPORT_DELETED`.
    pub fn new(events: EventSink) -> BlockExports {
        BlockExports {
            inner: Arc::new(Inner {
                events,
                state: Mutex::default(),
                server_control: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The first check of `nbd-server-start`, for callers that check
    /// more (the TLS objects) before starting.
    pub fn check_nbd_server_stopped(&self) -> Result<(), QmpError> {
        match self.inner.state().nbd {
            Some(_) => Err(QmpError::generic("NBD server already running")),
            None => Ok(()),
        }
    }

    /// `nbd-server-start` / `--nbd-server`. Must run inside the tokio
    /// runtime that will serve the clients.
    pub async fn nbd_server_start(&self, options: &NbdServerOptions) -> Result<(), QmpError> {
        let _control = self.inner.server_control.lock().await;
        self.check_nbd_server_stopped()?;
        let config = NbdServerConfig::from_options(options)?;
        let server = NbdServer::start(config).await?;
        self.inner.state().nbd = Some(Arc::new(server));
        Ok(())
    }

    /// `nbd-server-stop`: deletes every NBD export, disconnects every
    /// client and returns once all of them are gone.
    pub async fn nbd_server_stop(&self) -> Result<(), QmpError> {
        let _control = self.inner.server_control.lock().await;
        let server = self.inner.state().nbd.clone().ok_or_else(not_running)?;
        let ids: Vec<String> = {
            let state = self.inner.state();
            let open = state.exports.iter().rev().filter(|e| !e.shutting_down);
            open.map(|e| e.id.clone()).collect()
        };
        for id in ids {
            self.close(&id);
        }
        server.stop().await;
        self.inner.state().nbd = None;
        Ok(())
    }

    /// Closes every export and stops the NBD server (at daemon exit).
    pub async fn close_all(&self) {
        if self.nbd_server().is_some() {
            if let Err(e) = self.nbd_server_stop().await {
                tracing::warn!("closing the NBD exports: {e}");
            }
        }
    }

    /// The running NBD server, if any (for its connection count).
    pub fn nbd_server(&self) -> Option<Arc<NbdServer>> {
        self.inner.state().nbd.clone()
    }

    /// `block-export-add` / `--export`. The caller has checked that a
    /// named `iothread` object exists, and passes its `poll-max-ns` as
    /// `poll_limit` (NBD connections run on the NBD event loops whatever
    /// it names; without one they poll up to [`DEFAULT_POLL_LIMIT`]).
    /// Like QEMU's `blk_exp_add`, it activates an inactive node unless
    /// `allow-inactive` is on.
    pub fn add(
        &self,
        graph: &BlockGraph,
        options: &BlockExportOptions,
        poll_limit: Option<Duration>,
    ) -> Result<(), QmpError> {
        let BlockExportKind::Nbd(nbd) = &options.kind else {
            return Err(QmpError::generic(
                "No driver found for the requested export type",
            ));
        };
        self.add_export(
            graph,
            NewExport {
                id: &options.id,
                node_name: &options.node_name,
                writable: options.writable.unwrap_or(false),
                writethrough: options.writethrough.unwrap_or(false),
                allow_inactive: options.allow_inactive.unwrap_or(false),
                nbd,
                poll_limit: poll_limit.unwrap_or(DEFAULT_POLL_LIMIT),
            },
        )
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
        if self.inner.state().nbd.is_none() {
            return Err(not_running());
        }
        let name = args.name.clone().unwrap_or_else(|| args.device.clone());
        let nbd = BlockExportOptionsNbd {
            name: Some(name.clone()),
            description: args.description.clone(),
            bitmaps: args
                .bitmap
                .clone()
                .map(|b| vec![BlockDirtyBitmapOrStr::Local(b)]),
            allocation_depth: None,
        };
        self.add_export(
            graph,
            NewExport {
                id: &name,
                node_name: node.name(),
                writable: args.writable.unwrap_or(false) && !node.is_read_only(),
                writethrough: false,
                allow_inactive: false,
                nbd: &nbd,
                poll_limit: DEFAULT_POLL_LIMIT,
            },
        )
    }

    fn add_export(&self, graph: &BlockGraph, new: NewExport<'_>) -> Result<(), QmpError> {
        if !id_wellformed(new.id) {
            return Err(QmpError::generic("Invalid block export id"));
        }
        if self.find(new.id) {
            return Err(id_in_use(new.id));
        }
        let backend = if new.allow_inactive {
            let inactive = graph.node(new.node_name).is_some_and(|n| !n.is_active());
            if inactive && new.writable {
                // QEMU defers the export's write permission until the node
                // is activated; the graph here has no deferred permissions.
                return Err(QmpError::generic(format!(
                    "Parameter 'allow-inactive' is not supported for a writable export of \
                     inactive node '{}'",
                    new.node_name
                )));
            }
            graph.attach_backend_allow_inactive(new.node_name, new.writable)?
        } else {
            graph.attach_backend(new.node_name, new.writable)?
        };
        let server = self.inner.state().nbd.clone().ok_or_else(not_running)?;
        let bitmaps = resolve_bitmaps(graph, new.nbd.bitmaps.as_deref().unwrap_or_default())?;
        let config = NbdExportConfig {
            name: new
                .nbd
                .name
                .clone()
                .unwrap_or_else(|| new.node_name.to_string()),
            description: new.nbd.description.clone(),
            writable: new.writable,
            writethrough: new.writethrough,
            meta: ExportMeta {
                allocation_depth: new.nbd.allocation_depth.unwrap_or(false),
                bitmaps,
            },
            poll_limit: new.poll_limit,
        };
        self.publish(&server, new.id, backend, config)
    }

    /// Adds the export to the server and the list, under one lock so that
    /// two adds cannot take the same id.
    fn publish(
        &self,
        server: &NbdServer,
        id: &str,
        backend: BlockBackend,
        config: NbdExportConfig,
    ) -> Result<(), QmpError> {
        let node_name = backend.node_name().to_string();
        let mut state = self.inner.state();
        if state.exports.iter().any(|e| e.id == id) {
            return Err(id_in_use(id));
        }
        let export = server.add_export(config, backend)?;
        state.exports.push(Entry {
            id: id.to_string(),
            node_name,
            export,
            shutting_down: false,
        });
        Ok(())
    }

    fn find(&self, id: &str) -> bool {
        self.inner.state().exports.iter().any(|e| e.id == id)
    }

    /// `block-export-del`.
    pub fn del(&self, id: &str, mode: BlockExportRemoveMode) -> Result<(), QmpError> {
        let mut state = self.inner.state();
        let entry = state
            .exports
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| QmpError::generic(format!("Export '{id}' is not found")))?;
        if entry.shutting_down {
            return Err(QmpError::generic(format!(
                "Export '{id}' is already shutting down"
            )));
        }
        if mode == BlockExportRemoveMode::Safe {
            if entry.export.close_if_idle().is_err() {
                return Err(QmpError::generic(format!("export '{id}' still in use")));
            }
            let export = Arc::clone(&entry.export);
            state.unpublish(&export);
            self.inner.finish(&mut state, &export, id);
            return Ok(());
        }
        drop(state);
        self.close(id);
        Ok(())
    }

    /// `nbd-server-remove` (deprecated): `block-export-del` by id.
    pub fn nbd_server_remove(&self, args: &NbdServerRemoveArgs) -> Result<(), QmpError> {
        self.del(&args.name, args.mode.unwrap_or_default())
    }

    /// `query-block-exports`: newest first.
    pub fn query(&self) -> Vec<BlockExportInfo> {
        let state = self.inner.state();
        let rows = state.exports.iter().rev().map(|e| BlockExportInfo {
            id: e.id.clone(),
            r#type: BlockExportType::Nbd,
            node_name: e.node_name.clone(),
            shutting_down: e.shutting_down,
        });
        rows.collect()
    }

    /// Starts closing export `id` (dropping its clients); the entry goes
    /// and the event is sent when its last client is gone.
    fn close(&self, id: &str) {
        let mut state = self.inner.state();
        let Some(entry) = state
            .exports
            .iter_mut()
            .find(|e| e.id == id && !e.shutting_down)
        else {
            return;
        };
        entry.shutting_down = true;
        let export = Arc::clone(&entry.export);
        // New clients must not find it, and its name is free again.
        state.unpublish(&export);
        let inner = Arc::downgrade(&self.inner);
        let gone_id = id.to_string();
        let gone_export = Arc::clone(&export);
        let on_gone = move || Inner::gone(&inner, &gone_export, &gone_id);
        if export.close(on_gone) == Closing::Idle {
            self.inner.finish(&mut state, &export, id);
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the list consistent, even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last client of a closing export left.
    fn gone(inner: &Weak<Inner>, export: &Arc<NbdExport>, id: &str) {
        if let Some(inner) = inner.upgrade() {
            let mut state = inner.state();
            inner.finish(&mut state, export, id);
        }
    }

    /// Forgets a closed export and reports it.
    fn finish(&self, state: &mut State, export: &Arc<NbdExport>, id: &str) {
        state.exports.retain(|e| !Arc::ptr_eq(&e.export, export));
        (self.events)(Event::block_export_deleted(id));
    }
}

impl State {
    /// Takes `export` out of the NBD server's table.
    fn unpublish(&self, export: &Arc<NbdExport>) {
        if let Some(server) = &self.nbd {
            server.exports().remove(export);
        }
    }
}

/// Finds the dirty bitmaps an export publishes. The block layer keeps no
/// dirty bitmaps yet, so any named bitmap is missing (with QEMU's words).
fn resolve_bitmaps(
    graph: &BlockGraph,
    bitmaps: &[BlockDirtyBitmapOrStr],
) -> Result<Vec<Arc<dyn ExportedBitmap>>, QmpError> {
    match bitmaps.first() {
        None => Ok(Vec::new()),
        Some(BlockDirtyBitmapOrStr::Local(name)) => {
            Err(QmpError::generic(format!("Bitmap '{name}' is not found")))
        }
        Some(BlockDirtyBitmapOrStr::External(bitmap)) => {
            graph.lookup(None, Some(&bitmap.node))?;
            Err(QmpError::generic(format!(
                "Dirty bitmap '{}' not found",
                bitmap.name
            )))
        }
    }
}

fn not_running() -> QmpError {
    QmpError::generic("NBD server not running")
}

fn id_in_use(id: &str) -> QmpError {
    QmpError::generic(format!("Block export id '{id}' is already in use"))
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn id_wellformed(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

//! The block exports of the daemon, whatever their type: unique ids,
//! `query-block-exports`, deletion modes, the `BLOCK_EXPORT_DELETED`
//! event and closing everything at exit.
//!
//! This is the API the QMP handlers call: each command is one method
//! taking its schema arguments. Semantics and messages follow QSD 10.0:
//! exports are listed newest first; a safe delete refuses while clients
//! use the export; a hard delete drops them and the event follows once the
//! last is gone. The registry knows no export type: it finds each in its
//! table of [`ExportDriver`]s.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use block::backend::BackendRoot;
use block::BlockGraph;
use schema::event::{EventSink, QmpEvent};
use schema::export::{BlockExportInfo, BlockExportOptions, BlockExportRemoveMode, BlockExportType};
use schema::QmpError;
use tokio::sync::Notify;

use crate::export::{BlockExport, ExportContext, ExportDriver, EXPORT_DRIVERS};
use crate::iothread::IoThread;
use crate::life::{CloseMode, Closing};
use crate::nbd::service::NbdService;

/// One export as the metrics endpoint shows it.
pub struct ExportMetrics {
    pub id: String,
    pub kind: BlockExportType,
    /// The node it uses now.
    pub node_name: String,
    /// Clients using it now (NBD connections in transmission, FUSE
    /// requests being served, a vhost-user front-end).
    pub clients: usize,
    /// Its backend's counters (`None` for an export type that keeps none).
    pub backend: Option<BackendRoot>,
}

/// Every block export, and the services export types share (the NBD
/// server).
#[derive(Clone)]
pub struct BlockExports {
    inner: Arc<Inner>,
}

struct Inner {
    events: EventSink,
    drivers: Vec<ExportDriver>,
    state: Mutex<State>,
    /// Woken whenever an export is gone.
    gone: Notify,
    nbd: NbdService,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    exports: Vec<Entry>,
    /// The serial number of the next export.
    next_serial: u64,
}

struct Entry {
    serial: u64,
    id: String,
    node_name: String,
    /// Which node the export uses now (a mirror's pivot changes it).
    root: Option<BackendRoot>,
    kind: BlockExportType,
    export: Arc<dyn BlockExport>,
    shutting_down: bool,
}

impl BlockExports {
    /// The daemon's export types, no exports and no NBD server; `events`
    /// receives `BLOCK_EXPORT_DELETED`.
    pub fn new(events: EventSink) -> BlockExports {
        BlockExports::with_drivers(events, EXPORT_DRIVERS)
    }

    /// As [`BlockExports::new`] with the export types in `drivers`.
    pub fn with_drivers(events: EventSink, drivers: &[ExportDriver]) -> BlockExports {
        BlockExports {
            inner: Arc::new(Inner {
                events,
                drivers: drivers.to_vec(),
                state: Mutex::default(),
                gone: Notify::new(),
                nbd: NbdService::default(),
            }),
        }
    }

    /// QEMU's first checks of a new export: the type exists, the id is
    /// well formed and free. Returns the type.
    pub fn check_new(&self, options: &BlockExportOptions) -> Result<&ExportDriver, QmpError> {
        let kind = options.kind.export_type();
        let driver = self
            .inner
            .drivers
            .iter()
            .find(|d| d.kind == kind)
            .ok_or_else(|| QmpError::generic("No driver found for the requested export type"))?;
        if !id_wellformed(&options.id) {
            return Err(QmpError::generic("Invalid block export id"));
        }
        if self.find(&options.id) {
            return Err(id_in_use(&options.id));
        }
        Ok(driver)
    }

    /// The NBD server's slot.
    pub(crate) fn nbd(&self) -> &NbdService {
        &self.inner.nbd
    }

    /// `block-export-add` / `--export`. The caller has found the
    /// `iothread` object the options name, if any, and (unless
    /// `allow-inactive`) activated the node after [`BlockExports::check_new`]
    /// passed, as QEMU's `blk_exp_add` does. The type's `create` then
    /// attaches the node and starts the export.
    pub fn add(
        &self,
        graph: &BlockGraph,
        options: &BlockExportOptions,
        iothread: Option<Arc<IoThread>>,
    ) -> Result<(), QmpError> {
        let driver = self.check_new(options)?;
        let kind = driver.kind;
        let context = ExportContext {
            options,
            graph,
            exports: self,
            iothread,
            attached: Default::default(),
        };
        let export = (driver.create)(&context)?;
        let root = context
            .attached
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let mut state = self.inner.state();
        if state.exports.iter().any(|e| e.id == options.id) {
            // Another add took the id while this one was created.
            drop(state);
            self.discard(&export);
            return Err(id_in_use(&options.id));
        }
        let serial = state.next_serial;
        state.next_serial += 1;
        state.exports.push(Entry {
            serial,
            id: options.id.clone(),
            node_name: options.node_name.clone(),
            root,
            kind,
            export,
            shutting_down: false,
        });
        Ok(())
    }

    /// Shuts down an export that was never listed.
    fn discard(&self, export: &Arc<dyn BlockExport>) {
        if export.life().close(CloseMode::Hard, || {}).is_ok() {
            export.shutdown();
        }
    }

    fn find(&self, id: &str) -> bool {
        self.inner.state().exports.iter().any(|e| e.id == id)
    }

    /// `block-export-del`.
    pub fn del(&self, id: &str, mode: BlockExportRemoveMode) -> Result<(), QmpError> {
        let state = self.inner.state();
        let entry = state
            .exports
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| QmpError::generic(format!("Export '{id}' is not found")))?;
        if entry.shutting_down {
            return Err(QmpError::generic(format!(
                "Export '{id}' is already shutting down"
            )));
        }
        let serial = entry.serial;
        drop(state);
        let mode = match mode {
            BlockExportRemoveMode::Safe => CloseMode::Safe,
            BlockExportRemoveMode::Hard => CloseMode::Hard,
        };
        self.close(serial, mode)
            .map_err(|_| QmpError::generic(format!("export '{id}' still in use")))
    }

    /// `query-block-exports`: newest first.
    pub fn query(&self) -> Vec<BlockExportInfo> {
        let state = self.inner.state();
        let rows = state.exports.iter().rev().map(|e| BlockExportInfo {
            id: e.id.clone(),
            r#type: e.kind,
            node_name: e
                .root
                .as_ref()
                .map_or_else(|| e.node_name.clone(), BackendRoot::node_name),
            shutting_down: e.shutting_down,
        });
        rows.collect()
    }

    /// Every export, oldest first, with its clients and counters.
    pub fn metrics(&self) -> Vec<ExportMetrics> {
        let state = self.inner.state();
        let rows = state.exports.iter().map(|e| ExportMetrics {
            id: e.id.clone(),
            kind: e.kind,
            node_name: e
                .root
                .as_ref()
                .map_or_else(|| e.node_name.clone(), BackendRoot::node_name),
            clients: e.export.life().client_count(),
            backend: e.root.clone(),
        });
        rows.collect()
    }

    /// The ids of the open exports of type `kind`, newest first.
    pub(crate) fn open_ids(&self, kind: Option<BlockExportType>) -> Vec<String> {
        let state = self.inner.state();
        let open = state.exports.iter().rev().filter(|e| !e.shutting_down);
        let of_kind = open.filter(|e| kind.is_none_or(|k| e.kind == k));
        of_kind.map(|e| e.id.clone()).collect()
    }

    /// Closes export `id` hard if it is open (its clients are told to
    /// go); the entry goes and the event is sent once it is gone.
    pub(crate) fn close_id(&self, id: &str) {
        let serial = {
            let state = self.inner.state();
            let entry = state
                .exports
                .iter()
                .find(|e| e.id == id && !e.shutting_down);
            entry.map(|e| e.serial)
        };
        if let Some(serial) = serial {
            // A hard close cannot be refused.
            let _ = self.close(serial, CloseMode::Hard);
        }
    }

    /// Waits until no export of type `kind` (any if `None`) is listed.
    pub(crate) async fn wait_gone(&self, kind: Option<BlockExportType>) {
        loop {
            let notified = self.inner.gone.notified();
            let listed = {
                let state = self.inner.state();
                state
                    .exports
                    .iter()
                    .any(|e| kind.is_none_or(|k| e.kind == k))
            };
            if !listed {
                return;
            }
            notified.await;
        }
    }

    /// Closes every export, waits until all are gone, and stops the NBD
    /// server (at daemon exit).
    pub async fn close_all(&self) {
        for id in self.open_ids(None) {
            self.close_id(&id);
        }
        self.wait_gone(None).await;
        if self.nbd_server().is_some() {
            if let Err(e) = self.nbd_server_stop().await {
                tracing::warn!("stopping the NBD server: {e}");
            }
        }
    }

    /// Closes the export with `serial`: marks it shutting down, closes its
    /// life and shuts it down; the entry goes when it is gone.
    fn close(&self, serial: u64, mode: CloseMode) -> Result<(), crate::life::InUse> {
        let mut state = self.inner.state();
        let Some(entry) = state.exports.iter_mut().find(|e| e.serial == serial) else {
            return Ok(());
        };
        let export = Arc::clone(&entry.export);
        let inner = Arc::downgrade(&self.inner);
        let on_gone = move || Inner::gone(&inner, serial);
        let closing = export.life().close(mode, on_gone)?;
        entry.shutting_down = true;
        if closing == Closing::Idle {
            self.inner.finish(&mut state, serial);
        }
        drop(state);
        export.shutdown();
        Ok(())
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the list consistent, even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last client or hold of a closing export went.
    fn gone(inner: &Weak<Inner>, serial: u64) {
        if let Some(inner) = inner.upgrade() {
            let mut state = inner.state();
            inner.finish(&mut state, serial);
        }
    }

    /// Forgets a closed export and reports it.
    fn finish(&self, state: &mut State, serial: u64) {
        let Some(index) = state.exports.iter().position(|e| e.serial == serial) else {
            return;
        };
        let entry = state.exports.remove(index);
        (self.events)(QmpEvent::block_export_deleted(&entry.id).into());
        self.gone.notify_waiters();
    }
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

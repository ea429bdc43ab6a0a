//! The block exports of the daemon, whatever their type: unique ids,
//! `query-block-exports`, deletion modes and the `BLOCK_EXPORT_DELETED`
//! event, plus the one NBD server they may be published on.
//!
//! Semantics and messages follow QSD 10.0: exports are listed newest
//! first; a safe delete refuses while clients use the export; a hard
//! delete drops them and the event follows once the last is gone;
//! `nbd-server-stop` deletes every NBD export.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use schema::QmpError;

use crate::nbd::export::Closing;
use crate::nbd::{Backend, NbdExport, NbdExportConfig, NbdServer, NbdServerConfig};

/// Receives the id of each export that is completely gone (the daemon
/// turns it into a `BLOCK_EXPORT_DELETED` event).
pub type DeletedHook = Arc<dyn Fn(&str) + Send + Sync>;

/// How `block-export-del` treats connected clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RemoveMode {
    /// Refuse while clients are connected.
    #[default]
    Safe,
    /// Disconnect them.
    Hard,
}

/// One row of `query-block-exports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub id: String,
    pub export_type: &'static str,
    pub node_name: String,
    pub shutting_down: bool,
}

/// Every block export, and the NBD server.
#[derive(Clone)]
pub struct BlockExports {
    inner: Arc<Inner>,
}

struct Inner {
    deleted: DeletedHook,
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

impl BlockExports {
    pub fn new(deleted: DeletedHook) -> BlockExports {
        BlockExports {
            inner: Arc::new(Inner {
                deleted,
                state: Mutex::default(),
                server_control: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// `nbd-server-start` / `--nbd-server`.
    pub async fn nbd_server_start(&self, config: NbdServerConfig) -> Result<(), QmpError> {
        let _control = self.inner.server_control.lock().await;
        if self.inner.state().nbd.is_some() {
            return Err(QmpError::generic("NBD server already running"));
        }
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
            state
                .exports
                .iter()
                .rev()
                .filter(|e| !e.shutting_down)
                .map(|e| e.id.clone())
                .collect()
        };
        for id in ids {
            self.close(&id);
        }
        server.stop().await;
        self.inner.state().nbd = None;
        Ok(())
    }

    /// The running NBD server, if any.
    pub fn nbd_server(&self) -> Option<Arc<NbdServer>> {
        self.inner.state().nbd.clone()
    }

    /// Adds an NBD export `id` of `backend` (the node `node_name`).
    pub fn add_nbd(
        &self,
        id: &str,
        node_name: &str,
        backend: Backend,
        config: NbdExportConfig,
    ) -> Result<(), QmpError> {
        self.check_new_id(id)?;
        let mut state = self.inner.state();
        let server = state.nbd.clone().ok_or_else(not_running)?;
        if state.exports.iter().any(|e| e.id == id) {
            return Err(id_in_use(id));
        }
        let export = server.add_export(config, backend)?;
        state.exports.push(Entry {
            id: id.to_string(),
            node_name: node_name.to_string(),
            export,
            shutting_down: false,
        });
        Ok(())
    }

    /// The checks on an id that come before anything else is looked at.
    pub fn check_new_id(&self, id: &str) -> Result<(), QmpError> {
        if !id_wellformed(id) {
            return Err(QmpError::generic("Invalid block export id"));
        }
        if self.inner.state().exports.iter().any(|e| e.id == id) {
            return Err(id_in_use(id));
        }
        Ok(())
    }

    /// `block-export-del` (and `nbd-server-remove`).
    pub fn del(&self, id: &str, mode: RemoveMode) -> Result<(), QmpError> {
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
        if mode == RemoveMode::Safe {
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

    /// `query-block-exports`: newest first.
    pub fn query(&self) -> Vec<ExportInfo> {
        let state = self.inner.state();
        let rows = state.exports.iter().rev().map(|e| ExportInfo {
            id: e.id.clone(),
            export_type: "nbd",
            node_name: e.node_name.clone(),
            shutting_down: e.shutting_down,
        });
        rows.collect()
    }

    /// Starts closing export `id` (dropping its clients); the entry goes
    /// and the hook runs when its last client is gone.
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
        (self.deleted)(id);
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

//! NBD exports: one block node published under a name, the table that
//! handshakes look names up in, and the count of clients using each.
//!
//! An export lives until it is closed and its last client is gone; then
//! its `on_gone` callback runs (which is when QMP reports
//! `BLOCK_EXPORT_DELETED`).

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use block::BlockBackend;
use schema::QmpError;
use tokio_util::sync::CancellationToken;

use super::meta::ExportMeta;
use super::proto::*;

/// What an export publishes, besides its node.
#[derive(Clone, Default)]
pub struct NbdExportConfig {
    /// The name clients ask for.
    pub name: String,
    pub description: Option<String>,
    pub writable: bool,
    /// Every write is made durable before it is acknowledged.
    pub writethrough: bool,
    pub meta: ExportMeta,
    /// The longest a connection polls its socket between requests
    /// (`poll`); zero for never.
    pub poll_limit: Duration,
}

/// One export of the NBD server.
pub struct NbdExport {
    config: NbdExportConfig,
    backend: BlockBackend,
    size: u64,
    /// Transmission flags, before the per-connection `SEND_DF`.
    flags: u16,
    /// Cancelled when the export's clients must go.
    disconnect: CancellationToken,
    life: Mutex<Life>,
}

#[derive(Default)]
struct Life {
    clients: usize,
    closing: bool,
    on_gone: Option<Box<dyn FnOnce() + Send>>,
}

/// Why an export could not be closed.
#[derive(Debug, PartialEq, Eq)]
pub struct InUse;

/// Where closing an export left it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closing {
    /// No client used it: it is gone.
    Idle,
    /// Clients are being disconnected; the callback runs after the last.
    Pending,
}

impl NbdExport {
    /// Creates an export of `backend`. `multi_conn` says whether clients may
    /// use several connections (false when the server allows only one).
    pub fn new(
        config: NbdExportConfig,
        backend: BlockBackend,
        multi_conn: bool,
        server_stop: &CancellationToken,
    ) -> Result<Arc<NbdExport>, QmpError> {
        if config.name.len() > MAX_STRING_LEN {
            return Err(QmpError::generic(format!(
                "export name '{}' too long",
                config.name
            )));
        }
        if let Some(desc) = config
            .description
            .as_deref()
            .filter(|d| d.len() > MAX_STRING_LEN)
        {
            return Err(QmpError::generic(format!("description '{desc}' too long")));
        }
        if config.writable && backend.is_read_only() {
            return Err(QmpError::generic(
                "Cannot export read-only node as writable",
            ));
        }
        let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE;
        if multi_conn {
            flags |= FLAG_CAN_MULTI_CONN;
        }
        if config.writable {
            flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        } else {
            flags |= FLAG_READ_ONLY;
        }
        Ok(Arc::new(NbdExport {
            size: backend.size(),
            config,
            backend,
            flags,
            disconnect: server_stop.child_token(),
            life: Mutex::default(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn description(&self) -> Option<&str> {
        self.config.description.as_deref()
    }

    pub fn writable(&self) -> bool {
        self.config.writable
    }

    pub fn writethrough(&self) -> bool {
        self.config.writethrough
    }

    pub fn poll_limit(&self) -> Duration {
        self.config.poll_limit
    }

    pub fn meta(&self) -> &ExportMeta {
        &self.config.meta
    }

    pub fn backend(&self) -> &BlockBackend {
        &self.backend
    }

    /// The size clients see (fixed for the life of the export).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Transmission flags for a client, which depend on whether it
    /// negotiated structured replies (`SEND_DF`).
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        if structured {
            self.flags | FLAG_SEND_DF
        } else {
            self.flags
        }
    }

    /// Fires when this export's clients must disconnect.
    pub fn disconnect_token(&self) -> &CancellationToken {
        &self.disconnect
    }

    /// Clients in the transmission phase on this export.
    pub fn client_count(&self) -> usize {
        self.life().clients
    }

    /// Registers a client entering transmission; `None` once the export is
    /// closing.
    pub fn attach_client(self: &Arc<Self>) -> Option<ClientGuard> {
        let mut life = self.life();
        if life.closing {
            return None;
        }
        life.clients += 1;
        Some(ClientGuard {
            export: Arc::clone(self),
        })
    }

    /// Closes the export if no client uses it.
    pub fn close_if_idle(&self) -> Result<(), InUse> {
        let mut life = self.life();
        if life.clients > 0 {
            return Err(InUse);
        }
        life.closing = true;
        Ok(())
    }

    /// Closes the export and disconnects its clients. With clients,
    /// `on_gone` runs when the last of them is gone; without, it is
    /// dropped and the export is already gone.
    pub fn close(&self, on_gone: impl FnOnce() + Send + 'static) -> Closing {
        let mut life = self.life();
        if life.closing {
            return Closing::Pending;
        }
        life.closing = true;
        if life.clients == 0 {
            return Closing::Idle;
        }
        life.on_gone = Some(Box::new(on_gone));
        drop(life);
        self.disconnect.cancel();
        Closing::Pending
    }

    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        // The counters stay consistent even if a holder panicked.
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A client's hold on an export; dropping it may finish a pending close.
pub struct ClientGuard {
    export: Arc<NbdExport>,
}

impl ClientGuard {
    pub fn export(&self) -> &Arc<NbdExport> {
        &self.export
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut life = self.export.life();
        life.clients -= 1;
        let gone = if life.clients == 0 {
            life.on_gone.take()
        } else {
            None
        };
        drop(life);
        if let Some(on_gone) = gone {
            on_gone();
        }
    }
}

/// The exports of one server, in the order they were added.
#[derive(Default)]
pub struct ExportTable {
    exports: RwLock<Vec<Arc<NbdExport>>>,
}

impl ExportTable {
    pub fn find(&self, name: &str) -> Option<Arc<NbdExport>> {
        self.read().iter().find(|e| e.name() == name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<NbdExport>> {
        self.read().clone()
    }

    pub fn insert(&self, export: Arc<NbdExport>) -> Result<(), QmpError> {
        let mut exports = self.exports.write().unwrap_or_else(|e| e.into_inner());
        if exports.iter().any(|e| e.name() == export.name()) {
            return Err(QmpError::generic(format!(
                "NBD server already has export named '{}'",
                export.name()
            )));
        }
        exports.push(export);
        Ok(())
    }

    /// Takes `export` out of the table so no new client finds it.
    pub fn remove(&self, export: &Arc<NbdExport>) {
        let mut exports = self.exports.write().unwrap_or_else(|e| e.into_inner());
        exports.retain(|e| !Arc::ptr_eq(e, export));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<NbdExport>>> {
        self.exports.read().unwrap_or_else(|e| e.into_inner())
    }
}

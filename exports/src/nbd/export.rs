//! NBD exports: one block node published under a name, and the table
//! that handshakes look names up in. A client in transmission is a
//! client of the export's life ([`ExportLife`]); shutting the export
//! down takes it out of the table.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use block::BlockBackend;
use schema::QmpError;
use tokio_util::sync::CancellationToken;

use super::meta::ExportMeta;
use super::proto::*;
use crate::event_loop::EventLoop;
use crate::export::BlockExport;
use crate::iothread::IoThread;
use crate::life::{ExportLife, LifeGuard};

/// What an export publishes, besides its node.
#[derive(Clone, Default)]
pub struct NbdExportConfig {
    /// The name clients ask for.
    pub name: String,
    pub description: Option<String>,
    pub writable: bool,
    pub meta: ExportMeta,
    /// The longest a connection polls its socket between requests
    /// (`poll`): fixed, or its iothread's `poll-max-ns` when it starts.
    pub poll_limit: PollLimit,
    /// The loop of the export's iothread, where its connections move
    /// after the handshake; `None` to stay on the NBD server's loops.
    pub event_loop: Option<Arc<EventLoop>>,
}

/// How long an export's connections poll between requests.
#[derive(Clone)]
pub enum PollLimit {
    Fixed(Duration),
    /// What the iothread's `poll-max-ns` says when a connection starts.
    Iothread(Arc<IoThread>),
}

impl Default for PollLimit {
    fn default() -> Self {
        PollLimit::Fixed(Duration::ZERO)
    }
}

/// One export of the NBD server.
pub struct NbdExport {
    config: NbdExportConfig,
    backend: BlockBackend,
    size: u64,
    /// Transmission flags, before the per-connection `SEND_DF`.
    flags: u16,
    life: ExportLife,
    /// The table it is published in.
    table: Weak<ExportTable>,
}

impl NbdExport {
    /// Creates an export of `backend`, to be published in `table`.
    /// `multi_conn` says whether clients may use several connections
    /// (false when the server allows only one); its clients go when
    /// `server_stop` fires.
    pub fn new(
        config: NbdExportConfig,
        backend: BlockBackend,
        multi_conn: bool,
        server_stop: &CancellationToken,
        table: Weak<ExportTable>,
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
            life: ExportLife::new(Some(server_stop)),
            table,
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

    pub fn poll_limit(&self) -> Duration {
        match &self.config.poll_limit {
            PollLimit::Fixed(limit) => *limit,
            PollLimit::Iothread(iothread) => iothread.poll_limit(),
        }
    }

    pub fn event_loop(&self) -> Option<&Arc<EventLoop>> {
        self.config.event_loop.as_ref()
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
        self.life.disconnect_token()
    }

    /// Clients in the transmission phase on this export.
    pub fn client_count(&self) -> usize {
        self.life.client_count()
    }

    /// Registers a client entering transmission; `None` once the export is
    /// closing.
    pub fn attach_client(self: &Arc<Self>) -> Option<ClientGuard> {
        let seat = self.life.attach_client()?;
        Some(ClientGuard {
            export: Arc::clone(self),
            _seat: seat,
        })
    }
}

impl BlockExport for NbdExport {
    fn life(&self) -> &ExportLife {
        &self.life
    }

    fn shutdown(&self) {
        if let Some(table) = self.table.upgrade() {
            table.remove(self);
        }
    }
}

/// A client's hold on an export; dropping it may finish a pending close.
pub struct ClientGuard {
    export: Arc<NbdExport>,
    _seat: LifeGuard,
}

impl ClientGuard {
    pub fn export(&self) -> &Arc<NbdExport> {
        &self.export
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
    pub fn remove(&self, export: &NbdExport) {
        let mut exports = self.exports.write().unwrap_or_else(|e| e.into_inner());
        exports.retain(|e| !std::ptr::eq(Arc::as_ptr(e), export));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<NbdExport>>> {
        self.exports.read().unwrap_or_else(|e| e.into_inner())
    }
}

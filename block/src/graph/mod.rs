//! The block graph: every node by name, who uses it (parent nodes, backends,
//! the monitor), and the operations QMP performs on it (`blockdev-add`,
//! `blockdev-del`, `block_resize`, queries, flush at shutdown).
//!
//! A mutex guards the bookkeeping and is only held for short, synchronous
//! sections. Operations that do I/O while changing the graph (opening an
//! image, closing one) are serialized by an async control lock instead, so
//! the bookkeeping is never locked across I/O. Requests go from a
//! [`BlockBackend`] straight to its node and never touch either lock.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use schema::block::BlockdevOptions;
use schema::event::EventSink;

use crate::backend::{BackendMode, BlockBackend};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::node::Node;
use crate::open::{self, ObjectLookup};
use crate::perm_update::{BackendLink, Holder, Use};
use crate::permissions::Perm;

mod activation;
mod blockers;
mod change;
mod reopen;
mod state;

pub(crate) use activation::check_child_active;
pub use blockers::NodeBlocker;
pub use change::Drained;
pub(crate) use state::{GraphState, NewNode};

/// The largest image size QEMU accepts (`BDRV_MAX_LENGTH`).
pub const MAX_IMAGE_LENGTH: u64 = 9_223_372_035_781_033_984;

/// The most nodes a graph holds (each may hold a file descriptor).
pub const MAX_NODES: usize = 16_384;

/// The deepest nesting of children (a chain of formats over formats);
/// bounds recursion when a chain is closed.
pub const MAX_DEPTH: usize = 1_000;

/// The block graph. Cheap to clone: clones share one graph.
#[derive(Clone, Default)]
pub struct BlockGraph {
    shared: Arc<GraphShared>,
}

/// What clones of a graph and its backends share.
#[derive(Default)]
pub(crate) struct GraphShared {
    state: Mutex<GraphState>,
    /// Serializes graph changes that do I/O (opening, closing nodes).
    control: tokio::sync::Mutex<()>,
    /// Where drivers' events go (`BLOCK_IMAGE_CORRUPTED`), if anywhere.
    events: Option<EventSink>,
    /// The daemon's objects, which drivers look up while opening.
    objects: Option<Arc<dyn ObjectLookup>>,
}

/// The permissions a backend takes and shares on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendPerms {
    /// The permissions the backend takes.
    pub perm: Perm,
    /// The permissions it lets other users take.
    pub shared: Perm,
}

/// What an export asks of the graph for its backend.
#[derive(Debug, Clone, Copy)]
pub struct ExportAttach<'a> {
    pub node_name: &'a str,
    pub perms: BackendPerms,
    /// The backend may stay on an inactive node (`allow-inactive`); its
    /// permissions then wait for the node's activation.
    pub allow_inactive: bool,
    pub mode: BackendMode,
}

impl BackendPerms {
    /// What a QSD block export takes: consistent read, plus write if
    /// writable; it shares everything but resize.
    pub fn export(writable: bool) -> Self {
        let write = if writable { Perm::WRITE } else { Perm::NONE };
        BackendPerms {
            perm: Perm::CONSISTENT_READ | write,
            shared: !Perm::RESIZE,
        }
    }
}

impl BlockGraph {
    /// An empty graph whose drivers report nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty graph whose drivers report events (e.g.
    /// `BLOCK_IMAGE_CORRUPTED`) to `events`.
    pub fn with_events(events: EventSink) -> Self {
        BlockGraph {
            shared: Arc::new(GraphShared {
                events: Some(events),
                ..GraphShared::default()
            }),
        }
    }

    /// An empty graph whose drivers report events to `events` and find the
    /// daemon's objects (throttle groups, secrets) in `objects`.
    pub fn with_events_and_objects(events: EventSink, objects: Arc<dyn ObjectLookup>) -> Self {
        BlockGraph {
            shared: Arc::new(GraphShared {
                events: Some(events),
                objects: Some(objects),
                ..GraphShared::default()
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, GraphState> {
        self.shared.state()
    }

    /// `blockdev-add`: opens a node (and its inline children, and a
    /// format's backing chain) from its options. The top node must have a
    /// `node-name`. Cancel-safe: if the future is dropped, every node it
    /// opened is closed again.
    pub async fn blockdev_add(&self, options: &BlockdevOptions) -> BlockResult<Arc<Node>> {
        if options.node_name.is_none() {
            return Err(generic("'node-name' must be specified for the root node"));
        }
        let _control = self.shared.control.lock().await;
        let node = open::open_tree(&self.shared, options).await?;
        self.state().give_to_monitor(&node);
        Ok(node)
    }

    /// As [`BlockGraph::blockdev_add`] for a node the daemon opens for its
    /// own work: without a `node-name` it gets an automatic one.
    pub async fn blockdev_add_unnamed(&self, options: &BlockdevOptions) -> BlockResult<Arc<Node>> {
        let _control = self.shared.control.lock().await;
        let node = open::open_tree(&self.shared, options).await?;
        self.state().give_to_monitor(&node);
        Ok(node)
    }

    /// Lets go of a node a job opened for itself (`drive-mirror`'s and
    /// `drive-backup`'s targets): it stays as long as a parent or a user
    /// holds it (a mirror's pivot gave it the source's), not owned by the
    /// monitor (as QEMU's), and closes now if nobody does.
    pub async fn release_job_node(&self, node: &Node) {
        let _control = self.shared.control.lock().await;
        let closed = self.state().release_from_monitor(node);
        self.shared.close_nodes(closed).await;
    }

    /// Whether a backend (an export, a job) uses `node`.
    pub fn has_users(&self, node: &Node) -> bool {
        self.state().uses().iter().any(|u| u.node_id == node.id())
    }

    /// `blockdev-del`: closes a node the monitor created, if nothing uses
    /// it. Inline children (and backing chains) nobody else uses close with
    /// it; drivers write out what they cache before the files close.
    pub async fn blockdev_del(&self, node_name: &str) -> BlockResult<()> {
        let _control = self.shared.control.lock().await;
        let closed = { self.state().take_from_monitor(node_name)? };
        self.shared.close_nodes(closed).await;
        Ok(())
    }

    /// The node with this name.
    pub fn node(&self, node_name: &str) -> Option<Arc<Node>> {
        self.state().find(node_name)
    }

    /// QEMU's `bdrv_lookup_bs`: a node by device (backend) name or node
    /// name. Backends have no names here, so only `node_name` can match.
    pub fn lookup(&self, device: Option<&str>, node_name: Option<&str>) -> BlockResult<Arc<Node>> {
        node_name.and_then(|n| self.node(n)).ok_or_else(|| {
            generic(format!(
                "Cannot find device='{}' nor node-name='{}'",
                device.unwrap_or(""),
                node_name.unwrap_or("")
            ))
        })
    }

    /// The names of all nodes, newest first.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes().iter().map(|n| n.name().to_string()).collect()
    }

    /// All nodes, newest first (the order of `query-named-block-nodes`).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.state().nodes().iter().rev().cloned().collect()
    }

    /// `block_resize`: resizes a node, taking the resize permission for the
    /// time of the operation like QEMU's temporary backend.
    pub async fn resize(
        &self,
        device: Option<&str>,
        node_name: Option<&str>,
        size: i64,
    ) -> BlockResult<()> {
        let node = self.lookup(device, node_name)?;
        let size =
            u64::try_from(size).map_err(|_| generic("Parameter 'size' expects a >0 size"))?;
        let _resizer = self.attach_mode(
            &node,
            BackendPerms {
                perm: Perm::RESIZE,
                shared: Perm::ALL,
            },
            BackendMode::default(),
            false,
        )?;
        if size > MAX_IMAGE_LENGTH {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                format!("offset({size}) exceeds maximum({MAX_IMAGE_LENGTH})"),
            ));
        }
        if node.is_read_only() {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "Image is read-only",
            ));
        }
        node.resize(size).await
    }

    /// Flushes every node (e.g. at shutdown); reports the first failure
    /// after trying them all.
    pub async fn flush_all(&self) -> BlockResult<()> {
        let roots: Vec<Arc<Node>> = { self.state().roots() };
        let mut first_error = None;
        for node in roots {
            if let Err(e) = node.flush().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Closes every node nobody but the monitor uses, as QEMU does at exit
    /// (`bdrv_close_all`): drivers write out their caches and mark images
    /// clean. Nodes still used by a backend stay open.
    pub async fn close_all(&self) {
        let _control = self.shared.control.lock().await;
        let closed = { self.state().clear_monitor() };
        self.shared.close_nodes(closed).await;
    }

    /// Attaches an export's backend to a node: consistent read, plus write
    /// if `writable`, sharing everything but resize (as QSD's exports). An
    /// inactive node refuses it unless it only reads (the caller activates
    /// the node first, see [`BlockGraph::activate_for_export`]).
    pub fn attach_backend(&self, node_name: &str, writable: bool) -> BlockResult<BlockBackend> {
        self.attach_export_backend(&ExportAttach {
            node_name,
            perms: BackendPerms::export(writable),
            allow_inactive: false,
            mode: BackendMode::default(),
        })
    }

    /// Attaches the backend of an export of any type; a writable backend
    /// needs a writable node.
    pub fn attach_export_backend(&self, attach: &ExportAttach<'_>) -> BlockResult<BlockBackend> {
        let node = self.lookup(None, Some(attach.node_name))?;
        if attach.perms.perm.contains(Perm::WRITE) && node.is_read_only() {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "Cannot export read-only node as writable",
            ));
        }
        self.attach_mode(&node, attach.perms, attach.mode, attach.allow_inactive)
    }

    /// Attaches a backend with explicit permissions (a job's, a growable
    /// export's).
    pub fn attach_backend_with(
        &self,
        node_name: &str,
        perms: BackendPerms,
    ) -> BlockResult<BlockBackend> {
        let node = self.lookup(None, Some(node_name))?;
        self.attach_mode(&node, perms, BackendMode::default(), false)
    }

    fn attach_mode(
        &self,
        node: &Arc<Node>,
        perms: BackendPerms,
        mode: BackendMode,
        allow_inactive: bool,
    ) -> BlockResult<BlockBackend> {
        let link = BackendLink {
            gate: Arc::default(),
            root: Arc::new(ArcSwap::new(node.clone())),
            allow_inactive,
        };
        let seq = self
            .state()
            .add_use(node, perms, Holder::Backend(link.clone()))?;
        Ok(BlockBackend::new(
            link,
            perms.perm,
            mode,
            seq,
            self.shared.clone(),
        ))
    }

    /// Runs `f` with the nodes and uses (creation order); for the queries.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&[Arc<Node>], &[Use]) -> R) -> R {
        let state = self.state();
        f(state.nodes(), state.uses())
    }
}

/// A use of a node by a node still being opened (its child edge does not
/// exist yet). Dropping it releases the permissions, unless the node was
/// registered with it (see [`GraphState::register`]).
pub(crate) struct Claim<'a> {
    shared: &'a GraphShared,
    seq: u64,
    active: bool,
}

impl Claim<'_> {
    /// The claim's record key.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The node was registered and its edge replaced the claim.
    pub(crate) fn retire(mut self) {
        self.active = false;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.active {
            self.shared.release_use(self.seq);
        }
    }
}

impl GraphShared {
    /// Where drivers' events go.
    pub(crate) fn events(&self) -> Option<&EventSink> {
        self.events.as_ref()
    }

    /// The daemon's objects, if the graph was given them.
    pub(crate) fn objects(&self) -> Option<&dyn ObjectLookup> {
        self.objects.as_deref()
    }

    /// The bookkeeping, for a short synchronous section.
    pub(crate) fn state(&self) -> MutexGuard<'_, GraphState> {
        // A panic while holding the lock leaves consistent bookkeeping
        // (every update is applied or undone before a call returns).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes permissions on `node` for a parent still being opened, so
    /// that it may work on the node (e.g. read and repair an image) under
    /// the protection of its locks before its edge exists.
    pub(crate) fn claim(
        &self,
        node: &Arc<Node>,
        perms: BackendPerms,
        parent: &str,
        edge: &'static str,
    ) -> BlockResult<Claim<'_>> {
        let holder = Holder::OpeningParent {
            name: parent.to_string(),
            edge,
        };
        let seq = self.state().add_use(node, perms, holder)?;
        Ok(Claim {
            shared: self,
            seq,
            active: true,
        })
    }

    /// Flushes the nodes removed from the graph and lets their drivers
    /// write out what they cache (QEMU's `bdrv_close`), parents first and
    /// under the permissions they still hold; then releases those and
    /// drops the nodes (which closes their files).
    async fn close_nodes(&self, nodes: Vec<Arc<Node>>) {
        for node in &nodes {
            // Nothing reaches a node out of the graph any more; what was in
            // flight (a parent's last request) finishes first.
            node.wait_idle().await;
            // QEMU's blockdev-del does not fail when writing out fails.
            let _ = node.flush().await;
            if let Err(e) = node.store_persistent_bitmaps(true).await {
                tracing::warn!(
                    "Lost persistent bitmaps during inactivation of node '{}': {e}",
                    node.name()
                );
            }
            let _ = node.driver().close().await;
        }
        self.state().release_closed(&nodes);
    }

    /// Applies the permissions of the graph as it is, between graph
    /// changes: for a driver whose needs on its child changed by
    /// themselves (QEMU's `bdrv_child_refresh_perms`; `preallocate` once
    /// it dropped its preallocation).
    pub(crate) async fn refresh_perms(&self) -> BlockResult<()> {
        let _control = self.control.lock().await;
        self.state().refresh_perms()
    }

    /// Removes the use with this sequence number (a backend handle or a
    /// claim was dropped) and loosens permissions.
    pub(crate) fn release_use(&self, seq: u64) {
        self.state().remove_use(seq);
    }
}

/// A `GenericError` for QMP.
pub fn generic(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

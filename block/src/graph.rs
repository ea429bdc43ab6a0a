//! The block graph: every node by name, who uses it (parent nodes, backends,
//! the monitor), and the operations QMP performs on it (`blockdev-add`,
//! `blockdev-del`, `block_resize`, queries, flush at shutdown).
//!
//! One mutex guards the bookkeeping; it is taken by control operations
//! only. Requests go from a [`BlockBackend`] straight to its node and never
//! touch it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use schema::block::BlockdevOptions;

use crate::backend::BlockBackend;
use crate::driver::BlockDriver;
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::factory;
use crate::node::{Node, NodeChild, NodeSettings};
use crate::perm_update::{self, BackendUse};
use crate::permissions::Perm;

/// The largest image size QEMU accepts (`BDRV_MAX_LENGTH`).
pub const MAX_IMAGE_LENGTH: u64 = 9_223_372_035_781_033_984;

/// The most nodes a graph holds (each may hold a file descriptor).
pub const MAX_NODES: usize = 16_384;

/// The deepest nesting of children (a chain of formats over formats);
/// bounds recursion when a chain is closed.
pub const MAX_DEPTH: usize = 1_000;

/// The longest node name QEMU accepts (its `node_name` array is 32 bytes).
const MAX_NODE_NAME_LEN: usize = 31;

/// The block graph. Cheap to clone: clones share one graph.
#[derive(Clone, Default)]
pub struct BlockGraph {
    shared: Arc<GraphShared>,
}

/// What clones of a graph and its backends share.
#[derive(Default)]
pub(crate) struct GraphShared {
    state: Mutex<GraphState>,
}

/// The graph's bookkeeping.
#[derive(Default)]
pub(crate) struct GraphState {
    /// Every node, in creation order (children before their parents).
    nodes: Vec<Arc<Node>>,
    /// Nodes created by `blockdev-add` (the monitor holds a reference).
    monitor_owned: HashSet<u64>,
    /// Backends in creation order.
    backends: Vec<BackendUse>,
    /// Next node id.
    next_id: u64,
    /// Next attach sequence number (edges and backends).
    next_seq: u64,
    /// Counter of automatic node names (QEMU's `id_generate`).
    auto_names: u64,
}

/// The permissions a backend takes and shares on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendPerms {
    /// The permissions the backend takes.
    pub perm: Perm,
    /// The permissions it lets other users take.
    pub shared: Perm,
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
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, GraphState> {
        self.shared.state()
    }

    /// `blockdev-add`: opens a node (and its inline children) from its
    /// options. The top node must have a `node-name`.
    pub fn add_node(&self, options: &BlockdevOptions) -> BlockResult<Arc<Node>> {
        if options.node_name.is_none() {
            return Err(generic("'node-name' must be specified for the root node"));
        }
        let mut state = self.state();
        let node = factory::open_tree(&mut state, options)?;
        state.monitor_owned.insert(node.id());
        Ok(node)
    }

    /// `blockdev-del`: closes a node the monitor created, if nothing uses it.
    /// Inline children nobody else uses close with it.
    pub fn delete_node(&self, node_name: &str) -> BlockResult<()> {
        let mut state = self.state();
        let node = state
            .find(node_name)
            .ok_or_else(|| generic(format!("Failed to find node with node-name='{node_name}'")))?;
        if state.backends.iter().any(|b| b.node_id == node.id()) {
            return Err(generic(format!("Node {node_name} is in use")));
        }
        if !state.monitor_owned.contains(&node.id()) {
            return Err(generic(format!(
                "Node {node_name} is not owned by the monitor"
            )));
        }
        if state.parent_count(node.id()) > 0 {
            return Err(generic(format!("Block device {node_name} is in use")));
        }
        state.monitor_owned.remove(&node.id());
        state.close_unreferenced();
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
        self.state().nodes.iter().rev().cloned().collect()
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
        let _resizer = self.attach(
            &node,
            BackendPerms {
                perm: Perm::RESIZE,
                shared: Perm::ALL,
            },
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

    /// Flushes every node (at shutdown); reports the first failure after
    /// trying them all.
    pub async fn flush_all(&self) -> BlockResult<()> {
        let roots: Vec<Arc<Node>> = {
            let state = self.state();
            state
                .nodes
                .iter()
                .filter(|n| state.parent_count(n.id()) == 0)
                .cloned()
                .collect()
        };
        let mut first_error = None;
        for node in roots {
            if let Err(e) = node.flush().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Attaches an export's backend to a node: consistent read, plus write
    /// if `writable`, sharing everything but resize (as QSD's exports).
    pub fn attach_backend(&self, node_name: &str, writable: bool) -> BlockResult<BlockBackend> {
        let node = self.lookup(None, Some(node_name))?;
        if writable && node.is_read_only() {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "Cannot export read-only node as writable",
            ));
        }
        self.attach(&node, BackendPerms::export(writable))
    }

    /// Attaches a backend with explicit permissions (e.g. a growable
    /// export that needs resize).
    pub fn attach_backend_with(
        &self,
        node_name: &str,
        perms: BackendPerms,
    ) -> BlockResult<BlockBackend> {
        let node = self.lookup(None, Some(node_name))?;
        self.attach(&node, perms)
    }

    fn attach(&self, node: &Arc<Node>, perms: BackendPerms) -> BlockResult<BlockBackend> {
        let mut state = self.state();
        let seq = state.take_seq();
        state.backends.push(BackendUse {
            node_id: node.id(),
            perm: perms.perm,
            shared: perms.shared,
            seq,
        });
        if let Err(e) = state.refresh_perms() {
            state.backends.pop();
            return Err(e);
        }
        Ok(BlockBackend::new(
            node.clone(),
            perms.perm,
            seq,
            self.shared.clone(),
        ))
    }

    /// Runs `f` with the nodes (creation order) and backends (creation
    /// order); used by the queries.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&[Arc<Node>], &[BackendUse]) -> R) -> R {
        let state = self.state();
        f(&state.nodes, &state.backends)
    }
}

impl GraphShared {
    fn state(&self) -> MutexGuard<'_, GraphState> {
        // A panic while holding the lock leaves consistent bookkeeping
        // (every update is applied or undone before a call returns).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Detaches the backend with this sequence number (its handle was
    /// dropped) and loosens permissions.
    pub(crate) fn detach_backend(&self, seq: u64) {
        let mut state = self.state();
        state.backends.retain(|b| b.seq != seq);
        // Loosening never conflicts; a driver error here (e.g. an unlock
        // that fails) leaves stricter locks, which is safe.
        let _ = state.refresh_perms();
    }
}

impl GraphState {
    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// How many nodes exist (a mark for [`GraphState::unwind_to`]).
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn find(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.iter().find(|n| n.name() == name).cloned()
    }

    fn parent_count(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .flat_map(|n| n.children())
            .filter(|c| c.node().id() == id)
            .count()
    }

    fn refresh_perms(&self) -> BlockResult<()> {
        perm_update::refresh(&self.nodes, &self.backends)
    }

    /// Checks a node name given by the user (QEMU's `bdrv_assign_node_name`).
    pub(crate) fn check_new_name(&self, name: &str) -> BlockResult<()> {
        if !is_well_formed_id(name) {
            return Err(generic(format!("Invalid node-name: '{name}'")));
        }
        if self.find(name).is_some() {
            return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
        }
        if name.len() > MAX_NODE_NAME_LEN {
            return Err(generic("Node name too long"));
        }
        Ok(())
    }

    /// A fresh automatic name, `#block` + counter + two random digits.
    fn auto_name(&mut self) -> String {
        loop {
            let name = format!("#block{}{:02}", self.auto_names, random_below_100());
            self.auto_names += 1;
            if self.find(&name).is_none() {
                return name;
            }
        }
    }

    /// Adds a node built by the factory and applies permissions; the node
    /// is not added if they conflict.
    pub(crate) fn register(
        &mut self,
        name: Option<String>,
        driver: Box<dyn BlockDriver>,
        settings: NodeSettings,
        mut children: Vec<NodeChild>,
    ) -> BlockResult<Arc<Node>> {
        if self.nodes.len() >= MAX_NODES {
            return Err(generic(format!(
                "Too many block nodes (at most {MAX_NODES})"
            )));
        }
        let depth = 1 + children.iter().map(|c| c.node().depth()).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(generic(format!(
                "Block graph too deep (at most {MAX_DEPTH} levels)"
            )));
        }
        let name = match name {
            Some(name) => {
                // Re-checked: an inline child may have taken the name.
                self.check_new_name(&name)?;
                name
            }
            None => self.auto_name(),
        };
        for child in &mut children {
            child.seq = self.take_seq();
        }
        let id = self.take_id();
        let node = Arc::new(Node::new(id, name, driver, settings, children, depth));
        self.nodes.push(node.clone());
        if let Err(e) = self.refresh_perms() {
            self.nodes.pop();
            return Err(e);
        }
        Ok(node)
    }

    /// Removes the nodes created after the first `count` (a tree whose
    /// opening failed half way).
    pub(crate) fn unwind_to(&mut self, count: usize) {
        let removed: Vec<Arc<Node>> = self.nodes.drain(count..).collect();
        for node in removed.iter().rev() {
            perm_update::release(node);
        }
        drop(removed);
        let _ = self.refresh_perms();
    }

    /// Closes every node nobody references any more (no monitor reference,
    /// no parent, no backend), repeatedly, since closing a node drops its
    /// references to its children.
    fn close_unreferenced(&mut self) {
        loop {
            let unused: Vec<u64> = self
                .nodes
                .iter()
                .map(|n| n.id())
                .filter(|id| {
                    !self.monitor_owned.contains(id)
                        && !self.backends.iter().any(|b| b.node_id == *id)
                        && self.parent_count(*id) == 0
                })
                .collect();
            if unused.is_empty() {
                break;
            }
            let mut closed = Vec::new();
            self.nodes.retain(|n| {
                let close = unused.contains(&n.id());
                if close {
                    closed.push(n.clone());
                }
                !close
            });
            for node in &closed {
                perm_update::release(node);
            }
        }
        let _ = self.refresh_perms();
    }
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn is_well_formed_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A number in 0..100, for the two random digits of automatic names.
fn random_below_100() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish() % 100
}

/// A `GenericError` for QMP.
pub(crate) fn generic(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

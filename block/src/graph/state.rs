//! The graph's bookkeeping: the nodes in creation order, who uses them,
//! names, and the steps that change them (registering a node, recording a
//! use, activating, removing what nobody references). Every step applies
//! permissions through [`crate::perm_update`] and is undone if they
//! conflict. Callers hold the graph's state lock for each step.

use std::collections::HashSet;
use std::sync::Arc;

use super::activation::check_child_active;
use super::{generic, BackendPerms, MAX_DEPTH, MAX_NODES};
use crate::error::BlockResult;
pub(crate) use crate::node::NewNode;
use crate::node::Node;
use crate::perm_update::{self, Holder, Use};

/// The longest node name QEMU accepts (its `node_name` array is 32 bytes).
const MAX_NODE_NAME_LEN: usize = 31;

/// The graph's bookkeeping.
#[derive(Default)]
pub(crate) struct GraphState {
    /// Every node, in creation order (children before their parents).
    nodes: Vec<Arc<Node>>,
    /// Nodes created by `blockdev-add` (the monitor holds a reference).
    monitor_owned: HashSet<u64>,
    /// Backends and opening parents, in creation order.
    uses: Vec<Use>,
    /// Next node id.
    next_id: u64,
    /// Next attach sequence number (edges and uses).
    next_seq: u64,
    /// Counter of automatic node names (QEMU's `id_generate`).
    auto_names: u64,
    /// Nodes held by jobs.
    pub(super) blocked: Vec<super::blockers::Blocked>,
    /// Links jobs rely on (their keys are the blockers').
    pub(super) frozen: Vec<super::blockers::FrozenLink>,
    pub(super) next_blocker: u64,
}

impl GraphState {
    /// Every node, in creation order.
    pub(crate) fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    /// Backends and claims, in creation order.
    pub(crate) fn uses(&self) -> &[Use] {
        &self.uses
    }

    /// Backends and claims, for a change that moves a backend.
    pub(super) fn uses_mut(&mut self) -> &mut [Use] {
        &mut self.uses
    }

    /// The nodes no other node uses.
    pub(super) fn roots(&self) -> Vec<Arc<Node>> {
        self.nodes
            .iter()
            .filter(|n| self.parent_count(n.id()) == 0)
            .cloned()
            .collect()
    }

    /// The monitor holds a reference to `node` (`blockdev-add`).
    pub(super) fn give_to_monitor(&mut self, node: &Node) {
        self.monitor_owned.insert(node.id());
    }

    /// `blockdev-del`'s checks and removal: the monitor drops its
    /// reference, and every node nobody references any more leaves the
    /// graph (returned, parents first, for closing).
    pub(super) fn take_from_monitor(&mut self, node_name: &str) -> BlockResult<Vec<Arc<Node>>> {
        let node = self
            .find(node_name)
            .ok_or_else(|| generic(format!("Failed to find node with node-name='{node_name}'")))?;
        if self.uses.iter().any(|u| u.node_id == node.id()) {
            return Err(generic(format!("Node {node_name} is in use")));
        }
        self.check_not_blocked(&node)?;
        if !self.monitor_owned.contains(&node.id()) {
            return Err(generic(format!(
                "Node {node_name} is not owned by the monitor"
            )));
        }
        if self.parent_count(node.id()) > 0 {
            return Err(generic(format!("Block device {node_name} is in use")));
        }
        self.monitor_owned.remove(&node.id());
        Ok(self.remove_unreferenced())
    }

    /// The monitor's reference to `node` goes, whoever else holds it;
    /// returns the nodes that leave the graph (`node`, if nobody does).
    pub(super) fn release_from_monitor(&mut self, node: &Node) -> Vec<Arc<Node>> {
        self.monitor_owned.remove(&node.id());
        self.remove_unreferenced()
    }

    /// The monitor drops all its references (shutdown); returns the nodes
    /// that leave the graph, parents first.
    pub(super) fn clear_monitor(&mut self) -> Vec<Arc<Node>> {
        self.monitor_owned.clear();
        self.remove_unreferenced()
    }

    /// Releases the permissions of closed nodes and loosens the rest.
    pub(super) fn release_closed(&self, nodes: &[Arc<Node>]) {
        for node in nodes {
            perm_update::release(node);
        }
        let _ = self.refresh_perms();
    }

    /// Removes the use with this key and loosens permissions.
    pub(super) fn remove_use(&mut self, seq: u64) {
        self.uses.retain(|u| u.seq != seq);
        // Loosening never conflicts; a driver error here (e.g. an unlock
        // that fails) leaves stricter locks, which is safe.
        let _ = self.refresh_perms();
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) fn take_seq(&mut self) -> u64 {
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
            .map(|n| n.children().iter().filter(|c| c.node().id() == id).count())
            .sum()
    }

    pub(super) fn refresh_perms(&self) -> BlockResult<()> {
        perm_update::refresh(&self.nodes, &self.uses)
    }

    /// Records a use of `node` and applies permissions; nothing is
    /// recorded if they conflict. Returns the use's key.
    pub(super) fn add_use(
        &mut self,
        node: &Arc<Node>,
        perms: BackendPerms,
        holder: Holder,
    ) -> BlockResult<u64> {
        let seq = self.take_seq();
        self.uses.push(Use {
            node_id: node.id(),
            perm: perms.perm,
            shared: perms.shared,
            seq,
            holder,
        });
        if let Err(e) = self.refresh_perms() {
            self.uses.pop();
            return Err(e);
        }
        Ok(seq)
    }

    /// The name for a new node: the user's, checked like QEMU's
    /// `bdrv_assign_node_name`, or a fresh automatic one.
    pub(crate) fn new_name(&mut self, wanted: Option<&str>) -> BlockResult<String> {
        match wanted {
            Some(name) => {
                self.check_new_name(name)?;
                Ok(name.to_string())
            }
            None => Ok(self.auto_name()),
        }
    }

    fn check_new_name(&self, name: &str) -> BlockResult<()> {
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

    /// A fresh automatic name, `#block` + counter + two random digits
    /// (QEMU's `id_generate`).
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
    /// is not added if they conflict. `position` is its place in creation
    /// order (a format whose backing chain opened after it in QEMU is
    /// placed before that chain). The uses in `retire` (claims of the
    /// opening node) are replaced by the node's edges in the same step.
    pub(crate) fn register(
        &mut self,
        position: usize,
        new: NewNode,
        retire: &[u64],
    ) -> BlockResult<Arc<Node>> {
        let NewNode {
            name,
            settings,
            children,
            ..
        } = &new;
        if self.nodes.len() >= MAX_NODES {
            return Err(generic(format!(
                "Too many block nodes (at most {MAX_NODES})"
            )));
        }
        let depth = 1 + children.iter().map(|c| depth(&c.node())).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(generic(format!(
                "Block graph too deep (at most {MAX_DEPTH} levels)"
            )));
        }
        if self.find(name).is_some() {
            // An inline child took the name meanwhile.
            return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
        }
        for child in children {
            check_child_active(name, settings.inactive, &child.node(), child.role().name())?;
        }
        for child in children {
            child.set_seq(self.take_seq());
        }
        let id = self.take_id();
        let node = Arc::new(Node::new(id, new));
        let position = position.min(self.nodes.len());
        self.uses.retain(|u| !retire.contains(&u.seq));
        self.nodes.insert(position, node.clone());
        if let Err(e) = self.refresh_perms() {
            self.nodes.remove(position);
            return Err(e);
        }
        Ok(node)
    }

    /// Removes the nodes created after the first `count` (a tree whose
    /// opening failed or was cancelled half way).
    pub(crate) fn unwind_to(&mut self, count: usize) {
        let removed: Vec<Arc<Node>> = self.nodes.drain(count.min(self.nodes.len())..).collect();
        for node in removed.iter().rev() {
            perm_update::release(node);
        }
        drop(removed);
        let _ = self.refresh_perms();
    }

    /// Removes every node nobody references any more (no monitor reference,
    /// no parent, no use), repeatedly, since a removed node no longer
    /// references its children. Returns them, parents first; they keep
    /// their permissions until [`GraphShared::close_nodes`].
    pub(super) fn remove_unreferenced(&mut self) -> Vec<Arc<Node>> {
        let mut removed = Vec::new();
        loop {
            let unused: Vec<u64> = self
                .nodes
                .iter()
                .map(|n| n.id())
                .filter(|id| {
                    !self.monitor_owned.contains(id)
                        && !self.uses.iter().any(|u| u.node_id == *id)
                        && self.parent_count(*id) == 0
                })
                .collect();
            if unused.is_empty() {
                break;
            }
            self.nodes.retain(|n| {
                let unused = unused.contains(&n.id());
                if unused {
                    removed.push(n.clone());
                }
                !unused
            });
        }
        removed
    }
}

/// 1 for a node without children, else 1 + the deepest child's depth.
/// The graph keeps every node within [`MAX_DEPTH`], which bounds the
/// recursion.
pub(super) fn depth(node: &Node) -> usize {
    1 + node
        .children()
        .iter()
        .map(|c| depth(&c.node()))
        .max()
        .unwrap_or(0)
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

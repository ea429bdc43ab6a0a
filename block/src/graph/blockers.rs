//! Operation blockers, as QEMU's `bdrv_op_block_all`: a job holds the
//! nodes it works on, and while it does `blockdev-del` and other jobs
//! refuse them with QEMU's "Node 'X' is busy: block device is in use by
//! block job: mirror". A blocker is a guard: the nodes are free again when
//! it is dropped.
//!
//! A blocker also freezes the links its job relies on (QEMU's frozen
//! `BdrvChild`): the edges of the chain it works along and the edges into
//! the filter it inserted. `blockdev-reopen` does not move a frozen link.

use std::sync::Arc;

use super::{generic, BlockGraph, GraphState};
use crate::driver::ChildRole;
use crate::error::BlockResult;
use crate::node::Node;

/// One node held, and why.
pub(crate) struct Blocked {
    key: u64,
    node_id: u64,
    reason: String,
}

/// One link a job relies on: `parent`'s edge of `role`.
pub(crate) struct FrozenLink {
    key: u64,
    parent_id: u64,
    role: ChildRole,
}

/// Nodes held by a job until this is dropped.
pub struct NodeBlocker {
    graph: BlockGraph,
    key: u64,
}

impl BlockGraph {
    /// Holds `nodes` for `reason` (e.g. "block device is in use by block
    /// job: mirror"); refused if one is held already.
    pub fn block_nodes(&self, nodes: &[Arc<Node>], reason: &str) -> BlockResult<NodeBlocker> {
        let mut state = self.state();
        for node in nodes {
            state.check_not_blocked(node)?;
        }
        state.next_blocker += 1;
        let key = state.next_blocker;
        for node in nodes {
            state.blocked.push(Blocked {
                key,
                node_id: node.id(),
                reason: reason.to_owned(),
            });
        }
        Ok(NodeBlocker {
            graph: self.clone(),
            key,
        })
    }

    /// Refuses a node some job holds.
    pub fn check_not_blocked(&self, node: &Node) -> BlockResult<()> {
        self.state().check_not_blocked(node)
    }
}

impl NodeBlocker {
    /// Freezes the links from `top` down to `bottom`, through filtered
    /// and backing children (QEMU's `bdrv_freeze_backing_chain`). Nothing
    /// is frozen past the end of the chain if `bottom` is not in it.
    pub fn freeze_chain(&self, top: &Arc<Node>, bottom: &Arc<Node>) {
        let mut links = Vec::new();
        let mut current = top.clone();
        while !Arc::ptr_eq(&current, bottom) {
            let next = match current.driver().filtered() {
                Some(edge) => Some((edge.role(), edge.node())),
                None => current
                    .child(ChildRole::Backing)
                    .map(|node| (ChildRole::Backing, node)),
            };
            let Some((role, node)) = next else { break };
            links.push((current.id(), role));
            current = node;
        }
        self.freeze(links);
    }

    /// Freezes the edges that point at `node` now (a filter the job
    /// inserted: moving them would take it out of its users' path).
    pub fn freeze_links_into(&self, node: &Node) {
        let mut links = Vec::new();
        for parent in self.graph.state().nodes() {
            for edge in parent.children().iter().filter(|c| c.points_to(node)) {
                links.push((parent.id(), edge.role()));
            }
        }
        self.freeze(links);
    }

    fn freeze(&self, links: Vec<(u64, ChildRole)>) {
        let mut state = self.graph.state();
        for (parent_id, role) in links {
            state.frozen.push(FrozenLink {
                key: self.key,
                parent_id,
                role,
            });
        }
    }
}

impl Drop for NodeBlocker {
    fn drop(&mut self) {
        let key = self.key;
        let mut state = self.graph.state();
        state.blocked.retain(|b| b.key != key);
        state.frozen.retain(|f| f.key != key);
    }
}

impl GraphState {
    /// Whether a job relies on `parent`'s edge of `role`.
    pub(crate) fn is_frozen(&self, parent: &Node, role: ChildRole) -> bool {
        self.frozen
            .iter()
            .any(|f| f.parent_id == parent.id() && f.role == role)
    }

    pub(crate) fn check_not_blocked(&self, node: &Node) -> BlockResult<()> {
        match self.blocked.iter().find(|b| b.node_id == node.id()) {
            Some(blocked) => Err(generic(format!(
                "Node '{}' is busy: {}",
                node.name(),
                blocked.reason
            ))),
            None => Ok(()),
        }
    }
}

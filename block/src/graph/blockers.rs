//! Operation blockers, as QEMU's `bdrv_op_block_all`: a job holds the
//! nodes it works on, and while it does `blockdev-del` and other jobs
//! refuse them with QEMU's "Node 'X' is busy: block device is in use by
//! block job: mirror". A blocker is a guard: the nodes are free again when
//! it is dropped.

use std::sync::Arc;

use super::{generic, BlockGraph, GraphState};
use crate::error::BlockResult;
use crate::node::Node;

/// One node held, and why.
pub(crate) struct Blocked {
    key: u64,
    node_id: u64,
    reason: String,
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

impl Drop for NodeBlocker {
    fn drop(&mut self) {
        let key = self.key;
        self.graph.state().blocked.retain(|b| b.key != key);
    }
}

impl GraphState {
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

//! Active and inactive nodes: the hand-off of images between two
//! processes during a migration (QEMU's `bdrv_activate`,
//! `bdrv_inactivate` and `blockdev-set-active`).
//!
//! An inactive node belongs to another process: it takes no image locks,
//! its driver writes nothing, and it refuses every permission but a
//! consistent read (an export with `allow-inactive` keeps its permissions
//! for when the node is activated). Inactivating a node first lets its
//! driver write out what it caches; activating one lets the driver read
//! again what the other process may have changed. Both happen in a
//! drained section, so no request sees the image half handed over.

use std::sync::Arc;

use super::{generic, BlockGraph, GraphState};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::node::Node;
use crate::perm_update::Holder;
use crate::permissions::Perm;

impl BlockGraph {
    /// `blockdev-set-active`: activates or inactivates `node_name` and what
    /// it needs (its children, unless another active parent still uses
    /// them), or every node if `None`. An inactivation that a user of a
    /// node forbids (a writer without `allow-inactive`) changes nothing.
    pub async fn set_active(&self, node_name: Option<&str>, active: bool) -> BlockResult<()> {
        let _control = self.shared.control.lock().await;
        let tops = match node_name {
            Some(name) => vec![self
                .node(name)
                .ok_or_else(|| generic(format!("Failed to find node with node-name='{name}'")))?],
            None => self.state().activation_roots(),
        };
        let subtrees_active = tops
            .iter()
            .all(|t| children_first(t).iter().all(|n| n.is_active()));
        if active && subtrees_active {
            // Nothing to take back: no reason to hold the exports' I/O.
            return Ok(());
        }
        let _drained = self.drained(&tops).await;
        if active {
            self.activate_nodes(&tops).await
        } else {
            self.inactivate_nodes(node_name.is_some(), &tops).await
        }
    }

    /// What an export without `allow-inactive` does first (QEMU's
    /// `blk_exp_add`): activates the node, and fails as activating it
    /// does (another process holds the image). An unknown name is left
    /// for attaching the export to report.
    pub async fn activate_for_export(&self, node_name: &str) -> BlockResult<()> {
        if self.node(node_name).is_none() {
            return Ok(());
        }
        self.set_active(Some(node_name), true).await
    }

    async fn activate_nodes(&self, tops: &[Arc<Node>]) -> BlockResult<()> {
        for top in tops {
            let subtree = children_first(top);
            if subtree.iter().all(|n| n.is_active()) {
                continue;
            }
            for node in subtree {
                if node.is_active() {
                    // It stayed active under an inactive parent while
                    // another process may have written the image.
                    node.driver().refresh_length().await?;
                    continue;
                }
                self.state().activate_one(&node)?;
                let taken_back = async {
                    node.driver().refresh_length().await?;
                    node.driver().activate().await?;
                    node.load_stored_bitmaps().await
                };
                if let Err(e) = taken_back.await {
                    self.state().deactivate_one(&node);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn inactivate_nodes(&self, one: bool, tops: &[Arc<Node>]) -> BlockResult<()> {
        let what = if one { "node" } else { "all nodes" };
        let plan = {
            let state = self.state();
            if one && state.has_active_parent(&tops[0]) {
                return Err(generic("Node has active parent node"));
            }
            state.inactivation_plan(tops).map_err(|e| {
                BlockError::new(
                    e.kind,
                    format!("Failed to inactivate {what}: {}", e.message),
                )
            })?
        };
        for node in &plan {
            let handed_over = async {
                node.store_persistent_bitmaps(true).await?;
                node.driver().inactivate().await
            };
            handed_over.await.map_err(|e| {
                BlockError::new(
                    e.kind,
                    format!("Failed to inactivate {what}: {}", e.message),
                )
            })?;
            self.state().deactivate_one(node);
        }
        Ok(())
    }
}

impl GraphState {
    /// The nodes `blockdev-set-active` without a node name starts from:
    /// those no node uses, the ones under a backend first (the order of
    /// QEMU's `bdrv_first`/`bdrv_next`).
    fn activation_roots(&self) -> Vec<Arc<Node>> {
        let roots = self.roots();
        let (mut used, unused): (Vec<Arc<Node>>, Vec<Arc<Node>>) = roots
            .into_iter()
            .partition(|n| self.uses().iter().any(|u| u.node_id == n.id()));
        used.sort_by_key(|n| {
            self.uses()
                .iter()
                .find(|u| u.node_id == n.id())
                .map(|u| u.seq)
        });
        used.extend(unused);
        used
    }

    /// Whether a node that uses `node` as a child is active.
    fn has_active_parent(&self, node: &Node) -> bool {
        self.parents(node).iter().any(|p| p.is_active())
    }

    fn parents(&self, node: &Node) -> Vec<Arc<Node>> {
        self.nodes()
            .iter()
            .filter(|p| p.children().iter().any(|c| c.node().id() == node.id()))
            .cloned()
            .collect()
    }

    /// The active nodes below `tops` (and `tops`) that inactivating them
    /// reaches, parents first: a child still used by an active parent
    /// outside the plan stays active (QEMU's `bdrv_inactivate_recurse`).
    /// Fails if a user of one of them needs more than a consistent read.
    fn inactivation_plan(&self, tops: &[Arc<Node>]) -> BlockResult<Vec<Arc<Node>>> {
        let mut plan: Vec<Arc<Node>> = Vec::new();
        let mut stack: Vec<Arc<Node>> = tops.iter().rev().cloned().collect();
        while let Some(node) = stack.pop() {
            let planned = |n: &Arc<Node>| plan.iter().any(|p| Arc::ptr_eq(p, n));
            if !node.is_active() || planned(&node) {
                continue;
            }
            let held_above = self
                .parents(&node)
                .iter()
                .any(|p| p.is_active() && !planned(p));
            if held_above {
                continue;
            }
            self.check_inactivation(&node)?;
            stack.extend(node.children().iter().rev().map(|c| c.node()));
            plan.push(node);
        }
        Ok(plan)
    }

    /// QEMU's `blk_can_inactivate`: no user of `node` may need more than a
    /// consistent read, except a backend that allows an inactive node.
    fn check_inactivation(&self, node: &Node) -> BlockResult<()> {
        let forbids = self.uses().iter().any(|u| {
            let allowed = matches!(&u.holder, Holder::Backend(link) if link.allow_inactive);
            u.node_id == node.id() && !allowed && !(u.perm & !Perm::CONSISTENT_READ).is_empty()
        });
        if forbids {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "Operation not permitted",
            ));
        }
        Ok(())
    }

    /// Activates one node: its recorded permissions take effect (image
    /// locks), then the graph's permissions are applied again with it
    /// active (a parent that now writes). On failure it is inactive again.
    fn activate_one(&mut self, node: &Arc<Node>) -> BlockResult<()> {
        node.set_active(true);
        node.driver().set_active(true);
        let (perm, shared) = node.applied.get();
        let applied = node.driver().check_perm(perm, shared).and_then(|()| {
            node.driver().set_perm(perm, shared);
            self.refresh_perms()
        });
        if let Err(e) = applied {
            self.deactivate_one(node);
            return Err(e);
        }
        Ok(())
    }

    /// Makes one node inactive: its locks go, it keeps its recorded
    /// permissions for when it is activated again, and the graph's
    /// permissions are loosened accordingly.
    fn deactivate_one(&mut self, node: &Arc<Node>) {
        // Loosening cannot conflict; a driver that still fails keeps
        // stricter locks, which is safe.
        if node.driver().check_perm(Perm::NONE, Perm::ALL).is_ok() {
            node.driver().set_perm(Perm::NONE, Perm::ALL);
        }
        node.driver().set_active(false);
        node.set_active(false);
        let _ = self.refresh_perms();
    }
}

/// QEMU's check when a node gets a child: an active node cannot use an
/// inactive one (it would write an image another process owns).
pub(crate) fn check_child_active(
    parent: &str,
    parent_inactive: bool,
    child: &Node,
    edge: &str,
) -> BlockResult<()> {
    if parent_inactive || child.is_active() {
        return Ok(());
    }
    Err(generic(format!(
        "Inactive '{}' can't be a {edge} child of active '{parent}'",
        child.name()
    )))
}

/// `top` and everything below it, children before their parents, each
/// once.
fn children_first(top: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut order: Vec<Arc<Node>> = Vec::new();
    let mut stack = vec![(top.clone(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if order.iter().any(|n| Arc::ptr_eq(n, &node)) {
            continue;
        }
        if expanded {
            order.push(node);
        } else {
            stack.push((node.clone(), true));
            stack.extend(node.children().iter().rev().map(|c| (c.node(), false)));
        }
    }
    order
}

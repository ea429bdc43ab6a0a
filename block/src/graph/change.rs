//! Changes of the graph's shape while it serves: drained sections, a
//! filter opened over a node, a node replaced by another for all its users
//! (QEMU's `bdrv_replace_node`), a parent's child edge pointed at another
//! node.
//!
//! A change runs under the control lock, inside a drained section over
//! the nodes whose users change, so no request is half way through an
//! edge that moves; it applies the permissions of the new shape and puts
//! every edge back if they conflict, all or nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{depth, GraphState};
use super::{generic, BlockGraph, NewNode, MAX_DEPTH};
use crate::drain::Gate;
use crate::driver::{BlockDriver, ChildRole};
use crate::error::BlockResult;
use crate::node::{Node, NodeChild, NodeSettings};
use crate::perm_update::Holder;
use crate::permissions::ChildRoleFlags;

/// A drained section: while it lives, no new request enters the graph
/// above its nodes, and none was in flight in them when it began.
pub struct Drained {
    gates: Vec<Arc<Gate>>,
    /// The nodes drained (those given and every node above them), told
    /// when the section begins and ends.
    nodes: Vec<Arc<Node>>,
    began: Instant,
}

impl Drained {
    /// How long the section has held requests back.
    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.driver().drain_end();
        }
        for gate in &self.gates {
            gate.open();
        }
    }
}

/// An edge or a backend root that a change moved, to move back.
enum Moved {
    Edge(Arc<NodeChild>, Arc<Node>),
    Backend { index: usize, old: Arc<Node> },
}

impl BlockGraph {
    /// Begins a drained section over `nodes`: the backends above them hold
    /// new requests back, and the call returns once nothing is in flight
    /// in them or in any node above them. The section ends when the
    /// result is dropped (also if this future is dropped half way).
    pub async fn drained(&self, nodes: &[Arc<Node>]) -> Drained {
        let began = Instant::now();
        let (gates, above) = {
            let state = self.state();
            let above = state.ancestors(nodes);
            let gates: Vec<Arc<Gate>> = state
                .uses()
                .iter()
                .filter(|u| above.iter().any(|n| n.id() == u.node_id))
                .filter_map(|u| match &u.holder {
                    Holder::Backend(link) => Some(link.gate.clone()),
                    Holder::OpeningParent { .. } => None,
                })
                .collect();
            (gates, above)
        };
        for gate in &gates {
            gate.close();
        }
        for node in &above {
            node.driver().drain_begin();
        }
        let drained = Drained {
            gates,
            nodes: above,
            began,
        };
        for node in &drained.nodes {
            node.wait_idle().await;
        }
        drained
    }

    /// Opens a filter made by the caller over `child`: a node named
    /// `node_name` (an automatic `#block` name if `None`; owned by the
    /// monitor, as if added by `blockdev-add`) whose driver `make` builds
    /// over the edge to `child`. Inserting it above the child's users is
    /// then [`BlockGraph::replace_node`].
    pub async fn add_filter(
        &self,
        node_name: Option<&str>,
        child: &str,
        make: impl FnOnce(Arc<NodeChild>) -> BlockResult<Box<dyn BlockDriver>>,
    ) -> BlockResult<Arc<Node>> {
        let _control = self.shared.control.lock().await;
        let child = self.lookup(None, Some(child))?;
        let mut state = self.state();
        let name = state.new_name(node_name)?;
        let implicit = node_name.is_none();
        let flags = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let edge = NodeChild::new(ChildRole::File, flags, child.clone());
        let driver = make(edge.clone())?;
        let settings = NodeSettings {
            read_only: child.is_read_only(),
            discard_unmap: true,
            ..NodeSettings::default()
        };
        let position = state.node_count();
        let new = NewNode {
            name,
            driver,
            settings,
            options: None,
            children: vec![edge],
            events: self.shared.events().cloned(),
            implicit,
        };
        let node = state.register(position, new, &[])?;
        state.give_to_monitor(&node);
        Ok(node)
    }

    /// `bdrv_replace_node`: every user of `from` (its parents and the
    /// backends on it) uses `to` instead, except `to` itself and what is
    /// below it (a filter inserted above `from` keeps its edge to it).
    pub async fn replace_node(&self, from: &str, to: &str) -> BlockResult<()> {
        let _control = self.shared.control.lock().await;
        let from = self.lookup(None, Some(from))?;
        let to = self.lookup(None, Some(to))?;
        if Arc::ptr_eq(&from, &to) {
            return Err(generic("Cannot replace a node by itself"));
        }
        let _drained = self.drained(&[from.clone(), to.clone()]).await;
        self.state().replace_node(&from, &to)
    }

    /// Opens a filter over `child` (as [`BlockGraph::add_filter`]) and puts
    /// it above `child` for all its users (as [`BlockGraph::replace_node`]);
    /// if that fails the filter closes again.
    pub async fn insert_filter(
        &self,
        node_name: Option<&str>,
        child: &str,
        make: impl FnOnce(Arc<NodeChild>) -> BlockResult<Box<dyn BlockDriver>>,
    ) -> BlockResult<Arc<Node>> {
        let filter = self.add_filter(node_name, child, make).await?;
        if let Err(error) = self.replace_node(child, filter.name()).await {
            let _ = self.blockdev_del(filter.name()).await;
            return Err(error);
        }
        Ok(filter)
    }

    /// Takes a filter out of the graph: its users use its child again
    /// (under a drained section), then the filter closes.
    pub async fn remove_filter(&self, filter: &str) -> BlockResult<()> {
        let child = self
            .lookup(None, Some(filter))?
            .driver()
            .filtered()
            .map(|edge| edge.node())
            .ok_or_else(|| generic(format!("'{filter}' is not a filter")))?;
        self.replace_node(filter, child.name()).await?;
        self.blockdev_del(filter).await
    }

    /// Gives `parent` (a format that can have one) the backing node
    /// `child`, or none: the backing edge is pointed at it, added, or
    /// removed, and the driver reads through it from then on. Nodes that
    /// nobody uses any more close.
    pub async fn set_backing(&self, parent: &str, child: Option<&str>) -> BlockResult<()> {
        let _control = self.shared.control.lock().await;
        let parent = self.lookup(None, Some(parent))?;
        let child = child.map(|c| self.lookup(None, Some(c))).transpose()?;
        let closed = {
            let _drained = self.drained(std::slice::from_ref(&parent)).await;
            let mut state = self.state();
            state.set_backing(&parent, child.as_ref())?;
            state.remove_unreferenced()
        };
        self.shared.close_nodes(closed).await;
        Ok(())
    }

    /// Points `parent`'s `role` edge at `child` (a node that exists). Nodes
    /// that nobody uses any more (the old child, if only `parent` used it
    /// and the monitor did not add it) close.
    pub async fn set_child(&self, parent: &str, role: ChildRole, child: &str) -> BlockResult<()> {
        let _control = self.shared.control.lock().await;
        let parent = self.lookup(None, Some(parent))?;
        let child = self.lookup(None, Some(child))?;
        let edge = parent
            .children()
            .iter()
            .find(|c| c.role() == role)
            .cloned()
            .ok_or_else(|| {
                generic(format!(
                    "Node '{}' has no '{}' child",
                    parent.name(),
                    role.name()
                ))
            })?;
        let closed = {
            let _drained = self.drained(std::slice::from_ref(&parent)).await;
            let mut state = self.state();
            state.set_edge(&parent, &edge, &child)?;
            state.remove_unreferenced()
        };
        self.shared.close_nodes(closed).await;
        Ok(())
    }
}

impl GraphState {
    /// `nodes` and every node above them (parents, their parents, ...).
    fn ancestors(&self, nodes: &[Arc<Node>]) -> Vec<Arc<Node>> {
        let mut found: Vec<Arc<Node>> = nodes.to_vec();
        let mut next = 0;
        while next < found.len() {
            let current = found[next].clone();
            next += 1;
            for parent in self.nodes() {
                let is_parent = parent.children().iter().any(|c| c.points_to(&current));
                if is_parent && !found.iter().any(|n| Arc::ptr_eq(n, parent)) {
                    found.push(parent.clone());
                }
            }
        }
        found
    }

    /// `to` and everything below it.
    pub(super) fn subtree_ids(node: &Node) -> HashSet<u64> {
        let mut ids = HashSet::from([node.id()]);
        let mut stack: Vec<Arc<Node>> = node.children().iter().map(|c| c.node()).collect();
        while let Some(next) = stack.pop() {
            if ids.insert(next.id()) {
                stack.extend(next.children().iter().map(|c| c.node()));
            }
        }
        ids
    }

    fn replace_node(&mut self, from: &Arc<Node>, to: &Arc<Node>) -> BlockResult<()> {
        let below_to = Self::subtree_ids(to);
        let mut moved = Vec::new();
        for parent in self.nodes() {
            if below_to.contains(&parent.id()) {
                continue;
            }
            for edge in parent.children().iter().filter(|c| c.points_to(from)) {
                moved.push(Moved::Edge(edge.clone(), edge.replace(to.clone())));
            }
        }
        for (index, used) in self.uses_mut().iter_mut().enumerate() {
            if let (Holder::Backend(link), true) = (&used.holder, used.node_id == from.id()) {
                moved.push(Moved::Backend {
                    index,
                    old: link.root.swap(to.clone()),
                });
                used.node_id = to.id();
            }
        }
        self.commit_moves(moved)
    }

    fn set_edge(
        &mut self,
        parent: &Arc<Node>,
        edge: &Arc<NodeChild>,
        child: &Arc<Node>,
    ) -> BlockResult<()> {
        if Self::subtree_ids(child).contains(&parent.id()) {
            return Err(generic(format!(
                "Making '{}' a child of '{}' would create a cycle",
                child.name(),
                parent.name()
            )));
        }
        let old = edge.replace(child.clone());
        self.commit_moves(vec![Moved::Edge(edge.clone(), old)])
    }

    fn set_backing(&mut self, parent: &Arc<Node>, child: Option<&Arc<Node>>) -> BlockResult<()> {
        let old = parent.children();
        let existing = old.iter().find(|c| c.role() == ChildRole::Backing).cloned();
        match (existing, child) {
            (Some(edge), Some(child)) => self.set_edge(parent, &edge, child),
            (None, None) => Ok(()),
            (None, Some(child)) => {
                if Self::subtree_ids(child).contains(&parent.id()) {
                    return Err(generic(format!(
                        "Making '{}' a backing child of '{}' would create a cycle",
                        child.name(),
                        parent.name()
                    )));
                }
                let edge = NodeChild::new(ChildRole::Backing, ChildRoleFlags::COW, child.clone());
                edge.set_seq(self.take_seq());
                parent.driver().set_backing(Some(edge.clone()))?;
                let mut children = (*old).clone();
                children.push(edge);
                parent.set_children(children);
                let too_deep = self.nodes().iter().any(|n| depth(n) > MAX_DEPTH);
                let result = if too_deep {
                    Err(generic(format!(
                        "Block graph too deep (at most {MAX_DEPTH} levels)"
                    )))
                } else {
                    self.refresh_perms()
                };
                if result.is_err() {
                    parent.set_children((*old).clone());
                    let _ = parent.driver().set_backing(None);
                    let _ = self.refresh_perms();
                }
                result
            }
            (Some(edge), None) => {
                parent.driver().set_backing(None)?;
                let children = old
                    .iter()
                    .filter(|c| !Arc::ptr_eq(c, &edge))
                    .cloned()
                    .collect();
                parent.set_children(children);
                // Dropping an edge only loosens permissions.
                let _ = self.refresh_perms();
                Ok(())
            }
        }
    }

    /// Applies the permissions of the moved shape; moves everything back
    /// if they conflict or the graph grew too deep.
    fn commit_moves(&mut self, moved: Vec<Moved>) -> BlockResult<()> {
        let too_deep = self.nodes().iter().any(|n| depth(n) > MAX_DEPTH);
        let result = if too_deep {
            Err(generic(format!(
                "Block graph too deep (at most {MAX_DEPTH} levels)"
            )))
        } else {
            self.refresh_perms()
        };
        if result.is_err() {
            for undo in moved.into_iter().rev() {
                match undo {
                    Moved::Edge(edge, old) => {
                        edge.replace(old);
                    }
                    Moved::Backend { index, old } => {
                        let used = &mut self.uses_mut()[index];
                        used.node_id = old.id();
                        if let Holder::Backend(link) = &used.holder {
                            link.root.store(old);
                        }
                    }
                }
            }
            // The old shape's permissions held before; they hold again.
            let _ = self.refresh_perms();
        }
        result
    }
}

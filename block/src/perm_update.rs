//! Recomputes and applies the permissions of every node and edge after a
//! change to the graph (a node or backend added or removed), all or
//! nothing, in QEMU's order: for each node, parents first, check that no
//! user needs what another does not share, that nobody writes to a
//! read-only node, and let the driver prepare (a file takes its image
//! locks). Only when every node agreed are the new permissions committed;
//! otherwise every prepared driver aborts and nothing changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::drain::Gate;
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::node::Node;
use crate::permissions::Perm;

/// A use of a node other than a child edge: a backend, or a node still
/// being opened that already works on its child.
#[derive(Debug, Clone)]
pub(crate) struct Use {
    /// The node used.
    pub node_id: u64,
    pub perm: Perm,
    pub shared: Perm,
    /// Attach order, shared with node edges; the record's key.
    pub seq: u64,
    pub holder: Holder,
}

/// Who holds a [`Use`].
#[derive(Debug, Clone)]
pub(crate) enum Holder {
    /// An export's (or a command's temporary) backend.
    Backend(BackendLink),
    /// A node being opened, before its edge to the child exists.
    OpeningParent {
        /// The future node's name.
        name: String,
        /// The future edge's name.
        edge: &'static str,
    },
}

/// What the graph holds of a backend: its gate, and its root (which a
/// graph change may point at another node).
#[derive(Clone)]
pub(crate) struct BackendLink {
    pub gate: Arc<Gate>,
    pub root: Arc<ArcSwap<Node>>,
    /// The backend may stay on an inactive node (an export with
    /// `allow-inactive`, QEMU's `force_allow_inactivate`): while the node
    /// is inactive its permissions wait for the node to be activated.
    pub allow_inactive: bool,
}

impl std::fmt::Debug for BackendLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLink")
            .field("root", &self.root.load().name())
            .finish()
    }
}

/// One user of a node, as the conflict check and its message see it.
struct User {
    perm: Perm,
    shared: Perm,
    seq: u64,
    /// `node 'x'` or `an unnamed block device`.
    description: String,
    /// The edge name: `file`, `backing`, `root`.
    edge: &'static str,
}

/// The permissions a node is about to get, with its computed child edges.
struct Planned<'a> {
    node: &'a Arc<Node>,
    cumulative: (Perm, Perm),
    edges: Vec<(Perm, Perm)>,
    /// Whether the driver was asked to prepare (the cumulative changed).
    prepared: bool,
}

/// Recomputes all permissions from the graph's structure and applies them.
pub(crate) fn refresh(nodes: &[Arc<Node>], uses: &[Use]) -> BlockResult<()> {
    let order = parents_first(nodes);
    let mut plans: Vec<Planned> = Vec::with_capacity(order.len());
    // (parent id, child index) -> edge perms, filled as parents are planned.
    let mut edge_perms: HashMap<(u64, usize), (Perm, Perm)> = HashMap::new();
    let parent_edges = parent_edges(nodes);

    for node in order {
        let users = users_of(node, uses, &parent_edges, &edge_perms);
        let result = check_users(node, &users).and_then(|cumulative| {
            let prepared = cumulative != node.applied.get();
            if prepared {
                node.driver().check_perm(cumulative.0, cumulative.1)?;
            }
            Ok((cumulative, prepared))
        });
        let (cumulative, prepared) = match result {
            Ok(r) => r,
            Err(e) => {
                abort(&plans);
                return Err(e);
            }
        };
        let edges: Vec<(Perm, Perm)> = node
            .children()
            .iter()
            .map(|child| {
                let (perm, shared) = if node.is_active() {
                    node.driver()
                        .child_perm(child, node.is_writable(), cumulative.0, cumulative.1)
                } else {
                    // The image belongs to another process, which writes it.
                    let (perm, _) =
                        node.driver()
                            .child_perm(child, false, cumulative.0, cumulative.1);
                    (perm & Perm::CONSISTENT_READ, Perm::ALL)
                };
                let shared = if child.node().settings().force_share {
                    Perm::ALL
                } else {
                    shared
                };
                (perm, shared)
            })
            .collect();
        for (index, perms) in edges.iter().enumerate() {
            edge_perms.insert((node.id(), index), *perms);
        }
        plans.push(Planned {
            node,
            cumulative,
            edges,
            prepared,
        });
    }

    for plan in &plans {
        if plan.prepared {
            plan.node
                .driver()
                .set_perm(plan.cumulative.0, plan.cumulative.1);
            plan.node.applied.set(plan.cumulative.0, plan.cumulative.1);
        }
        for (child, (perm, shared)) in plan.node.children().iter().zip(&plan.edges) {
            child.perms.set(*perm, *shared);
        }
    }
    Ok(())
}

/// Drops every permission of a node leaving the graph (its locks go).
pub(crate) fn release(node: &Node) {
    if node.applied.get() == (Perm::NONE, Perm::ALL) {
        return;
    }
    // Loosening cannot conflict; a driver that still fails keeps its
    // state, which the closing of the node ends anyway.
    if node.driver().check_perm(Perm::NONE, Perm::ALL).is_ok() {
        node.driver().set_perm(Perm::NONE, Perm::ALL);
        node.applied.set(Perm::NONE, Perm::ALL);
    }
}

fn abort(plans: &[Planned]) {
    for plan in plans.iter().filter(|p| p.prepared) {
        plan.node.driver().abort_perm();
    }
}

/// The users of `node`: its backends and the edges of its parents (with
/// the permissions planned for them in this update), newest first.
fn users_of(
    node: &Node,
    uses: &[Use],
    parent_edges: &HashMap<u64, Vec<(&Arc<Node>, usize)>>,
    edge_perms: &HashMap<(u64, usize), (Perm, Perm)>,
) -> Vec<User> {
    let mut users: Vec<User> = uses
        .iter()
        .filter(|u| u.node_id == node.id())
        .map(|u| {
            let (description, edge) = match &u.holder {
                Holder::Backend(_) => ("an unnamed block device".to_string(), "root"),
                Holder::OpeningParent { name, edge } => (format!("node '{name}'"), *edge),
            };
            let waiting = !node.is_active()
                && matches!(&u.holder, Holder::Backend(link) if link.allow_inactive);
            let (perm, shared) = if waiting {
                (Perm::NONE, Perm::ALL)
            } else {
                (u.perm, u.shared)
            };
            User {
                perm,
                shared,
                seq: u.seq,
                description,
                edge,
            }
        })
        .collect();
    for (parent, index) in parent_edges.get(&node.id()).into_iter().flatten() {
        let child = &parent.children()[*index];
        let (perm, shared) = edge_perms
            .get(&(parent.id(), *index))
            .copied()
            .unwrap_or((Perm::NONE, Perm::ALL));
        users.push(User {
            perm,
            shared,
            seq: child.seq(),
            description: format!("node '{}'", parent.name()),
            edge: child.role().name(),
        });
    }
    users.sort_by_key(|u| std::cmp::Reverse(u.seq));
    users
}

/// QEMU's `bdrv_parent_perms_conflict` and read-only check; returns the
/// cumulative (taken, shared) permissions of the users.
fn check_users(node: &Node, users: &[User]) -> BlockResult<(Perm, Perm)> {
    if !node.is_active() {
        // QEMU checks this when a user attaches; here, on every update.
        let beyond_read = users
            .iter()
            .find(|u| !(u.perm & !Perm::CONSISTENT_READ).is_empty());
        if let Some(user) = beyond_read {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "Permission '{}' unavailable on inactive node",
                    user.perm.human_names()
                ),
            ));
        }
    }
    for (i, a) in users.iter().enumerate() {
        for (j, b) in users.iter().enumerate() {
            let conflict = b.perm & !a.shared;
            if i != j && !conflict.is_empty() {
                let name = node.name();
                return Err(BlockError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "Permission conflict on node '{name}': permissions '{}' are both required by {} (uses node '{name}' as '{}' child) and unshared by {} (uses node '{name}' as '{}' child).",
                        conflict.human_names(),
                        b.description,
                        b.edge,
                        a.description,
                        a.edge
                    ),
                ));
            }
        }
    }
    let perm = users.iter().fold(Perm::NONE, |acc, u| acc | u.perm);
    let shared = users.iter().fold(Perm::ALL, |acc, u| acc & u.shared);
    if perm.intersects(Perm::WRITE | Perm::WRITE_UNCHANGED) && !node.is_writable() {
        return Err(BlockError::new(
            ErrorKind::PermissionDenied,
            "Block node is read-only",
        ));
    }
    Ok((perm, shared))
}

/// For each node id, the (parent, child index) pairs pointing at it.
fn parent_edges(nodes: &[Arc<Node>]) -> HashMap<u64, Vec<(&Arc<Node>, usize)>> {
    let mut map: HashMap<u64, Vec<(&Arc<Node>, usize)>> = HashMap::new();
    for parent in nodes {
        for (index, child) in parent.children().iter().enumerate() {
            map.entry(child.node().id())
                .or_default()
                .push((parent, index));
        }
    }
    map
}

/// The nodes ordered so that every parent comes before its children
/// (iterative depth-first post-order, reversed).
fn parents_first(nodes: &[Arc<Node>]) -> Vec<&Arc<Node>> {
    let by_id: HashMap<u64, &Arc<Node>> = nodes.iter().map(|n| (n.id(), n)).collect();
    let mut visited = HashSet::new();
    let mut post_order = Vec::with_capacity(nodes.len());
    for root in nodes {
        if !visited.insert(root.id()) {
            continue;
        }
        // (node, index of the next child to visit)
        let mut stack: Vec<(&Arc<Node>, usize)> = vec![(root, 0)];
        while let Some((node, next)) = stack.pop() {
            match node.children().get(next) {
                Some(child) => {
                    stack.push((node, next + 1));
                    let id = child.node().id();
                    if let Some(&child) = by_id.get(&id).filter(|_| visited.insert(id)) {
                        stack.push((child, 0));
                    }
                }
                None => post_order.push(node),
            }
        }
    }
    post_order.reverse();
    post_order
}

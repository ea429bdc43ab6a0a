//! `blockdev-reopen`: nodes take new options while they serve, all of a
//! list or none.
//!
//! Each entry names an existing node and gives its options anew, as
//! QEMU's: the driver stays the same; the generic options (`read-only`,
//! `auto-read-only`, `detect-zeroes`, `discard`, `cache`, `force-share`)
//! take their given or default values; a `file` or `backing` child given
//! by name moves the edge to that node; any other driver option must be
//! what the node has. The nodes are drained, their settings and edges
//! changed, and the permissions of the new shape applied; if anything
//! conflicts every node gets its old settings and edges back.

use std::any::Any;
use std::sync::Arc;

use schema::block::{BlockdevDriver, BlockdevOptions, BlockdevRef, BlockdevRefOrNull};

use super::state::GraphState;
use super::{generic, BlockGraph};
use crate::driver::ChildRole;
use crate::error::BlockResult;
use crate::node::{Node, NodeChild, NodeSettings};
use crate::open::node_settings;
use crate::permissions::Perm;

/// What one entry changes.
struct Reopen {
    node: Arc<Node>,
    settings: NodeSettings,
    options: BlockdevDriver,
    /// What the driver prepared for its own options.
    prepared: Option<Arc<dyn Any + Send + Sync>>,
    /// Edges to move, and where.
    edges: Vec<(Arc<NodeChild>, Arc<Node>)>,
    /// A backing edge to add (the node had none) or to drop (`null`).
    backing: BackingChange,
}

/// A node whose list of edges a reopen replaced, with the old list.
type Relinked = (Arc<Node>, Arc<Vec<Arc<NodeChild>>>);

/// A backing edge that appears or goes with a reopen.
enum BackingChange {
    Keep,
    Add(Arc<Node>),
    Drop(Arc<NodeChild>),
}

/// A child option as a reopen names it: a node, none (`null`), or a
/// backing option left out (which QEMU allows only for a node without a
/// backing node or backing file name).
enum ChildChange<'a> {
    To(&'a str),
    Null,
    Missing,
}

impl BlockGraph {
    /// `blockdev-reopen`.
    pub async fn blockdev_reopen(&self, entries: &[BlockdevOptions]) -> BlockResult<()> {
        let _control = self.shared.control.lock().await;
        let plans = entries
            .iter()
            .map(|options| self.plan_reopen(options))
            .collect::<BlockResult<Vec<_>>>()?;
        let nodes: Vec<Arc<Node>> = plans.iter().map(|p| p.node.clone()).collect();
        let turning = |read_only: bool| -> Vec<Arc<Node>> {
            plans
                .iter()
                .filter(|p| {
                    p.node.settings().read_only != read_only && p.settings.read_only == read_only
                })
                .map(|p| p.node.clone())
                .collect()
        };
        let (to_write, to_read_only) = (turning(false), turning(true));
        let closed = {
            let _drained = self.drained(&nodes).await;
            // Drivers of nodes that start writing get ready first; those
            // that stop write out once nothing may write any more.
            let ready = set_drivers_read_only(&to_write, false).await;
            let applied = ready.and_then(|()| {
                let mut state = self.state();
                state.apply_reopen(&plans)?;
                // A backing node dropped and held by nobody else closes.
                Ok(state.remove_unreferenced())
            });
            match applied {
                Ok(closed) => {
                    set_drivers_read_only(&to_read_only, true).await?;
                    closed
                }
                Err(error) => {
                    let _ = set_drivers_read_only(&to_write, true).await;
                    return Err(error);
                }
            }
        };
        self.shared.close_nodes(closed).await;
        Ok(())
    }

    /// Makes `node` (and the nodes under it that hold its image, the way
    /// a reopen's children inherit) read-write or read-only again, as
    /// QEMU's `bdrv_reopen_set_read_only`: for a job or command that
    /// writes to a backing image for its time. Returns the nodes it
    /// changed, to give to the opposite call afterwards.
    pub async fn set_read_only(
        &self,
        node: &Arc<Node>,
        read_only: bool,
    ) -> BlockResult<Vec<Arc<Node>>> {
        let _control = self.shared.control.lock().await;
        let mut nodes = Vec::new();
        let mut current = Some(node.clone());
        while let Some(next) = current {
            if next.settings().read_only == read_only {
                break;
            }
            current = next.child(ChildRole::File);
            nodes.push(next);
        }
        if nodes.is_empty() {
            return Ok(nodes);
        }
        let _drained = self.drained(&nodes).await;
        let switch = |nodes: &[Arc<Node>], read_only: bool| -> BlockResult<()> {
            let state = self.state();
            let mut old = Vec::new();
            for node in nodes {
                let mut settings = node.settings();
                settings.read_only = read_only;
                old.push((node.clone(), node.replace_settings(settings)));
            }
            state.refresh_perms().inspect_err(|_| {
                for (node, settings) in old {
                    node.replace_settings(settings);
                }
            })
        };
        if read_only {
            // The format writes out while its file still takes writes.
            set_drivers_read_only(&nodes, true).await?;
            switch(&nodes, true)?;
        } else {
            // The file takes writes before the format starts writing.
            switch(&nodes, false)?;
            let mut bottom_up = nodes.clone();
            bottom_up.reverse();
            if let Err(error) = set_drivers_read_only(&bottom_up, false).await {
                let _ = switch(&nodes, true);
                return Err(error);
            }
        }
        Ok(nodes)
    }

    fn plan_reopen(&self, options: &BlockdevOptions) -> BlockResult<Reopen> {
        let name = options
            .node_name
            .as_deref()
            .ok_or_else(|| generic("node-name not specified"))?;
        let node = self
            .node(name)
            .ok_or_else(|| generic(format!("Failed to find node with node-name='{name}'")))?;
        let old = node.driver_options().ok_or_else(|| {
            generic(format!(
                "Block format '{}' used by node '{name}' does not support reopening files",
                node.driver().format_name()
            ))
        })?;
        if old.name() != options.driver.name() {
            return Err(cannot_change("driver"));
        }
        let mut settings = node_settings(options, None)?;
        // Activation is `blockdev-set-active`'s business, not a reopen's.
        settings.inactive = node.settings().inactive;
        let mut edges = Vec::new();
        let mut backing = BackingChange::Keep;
        for (role, change) in child_changes(name, &old, &options.driver)? {
            let edge = node.children().iter().find(|c| c.role() == role).cloned();
            match (change, edge) {
                (ChildChange::Null, None) => {}
                (ChildChange::Missing, edge) => {
                    if edge.is_some() || node.driver().backing_file_name().is_some() {
                        return Err(generic(format!("backing is missing for '{name}'")));
                    }
                }
                (ChildChange::Null, Some(edge)) => {
                    self.check_edge_change(&node, &edge)?;
                    backing = BackingChange::Drop(edge);
                }
                (ChildChange::To(target), edge) => {
                    let target = self.lookup(None, Some(target))?;
                    match edge {
                        Some(edge) if !sees(&edge.node(), &target) => {
                            self.check_edge_change(&node, &edge)?;
                            edges.push((edge, target));
                        }
                        Some(_) => {}
                        None if role == ChildRole::Backing => {
                            if GraphState::subtree_ids(&target).contains(&node.id()) {
                                return Err(generic(format!(
                                    "Making '{}' a backing child of '{}' would create a cycle",
                                    target.name(),
                                    node.name()
                                )));
                            }
                            backing = BackingChange::Add(target);
                        }
                        None => return Err(cannot_change(role.name())),
                    }
                }
            }
        }
        let prepared =
            node.driver()
                .prepare_reopen(&options.driver, &settings, self.shared.objects())?;
        Ok(Reopen {
            node,
            settings,
            options: options.driver.clone(),
            prepared,
            edges,
            backing,
        })
    }
}

impl BlockGraph {
    /// Refuses to move or drop `edge` of `node` when a job relies on it,
    /// with QEMU's checks (`bdrv_reopen_parse_file_or_backing`): a filter
    /// a job inserted unnamed is not replaced, and a link the job froze is
    /// not moved (the links of its chain, as QEMU, and the edges into its
    /// filter, where QEMU 10 aborts when a named job filter's parent is
    /// reopened to another child).
    fn check_edge_change(&self, node: &Node, edge: &NodeChild) -> BlockResult<()> {
        let child = edge.node();
        if child.is_implicit() {
            return Err(generic(format!(
                "Cannot replace implicit {} child of {}",
                edge.role().name(),
                node.name()
            )));
        }
        if self.state().is_frozen(node, edge.role()) {
            return Err(generic(format!(
                "Cannot change frozen '{}' link from '{}' to '{}'",
                edge.role().name(),
                node.name(),
                child.name()
            )));
        }
        Ok(())
    }
}

/// Whether `child`, seen through the filters jobs inserted unnamed, is
/// `target` (QEMU's `bdrv_skip_implicit_filters`): a reopen naming the
/// node below such a filter leaves the edge as it is.
fn sees(child: &Arc<Node>, target: &Arc<Node>) -> bool {
    let mut current = child.clone();
    loop {
        if Arc::ptr_eq(&current, target) {
            return true;
        }
        if !current.is_implicit() {
            return false;
        }
        match current.driver().filtered() {
            Some(edge) => current = edge.node(),
            None => return false,
        }
    }
}

/// Tells each driver of `nodes`, in order, its node's new read-only state
/// (persistent bitmaps are stored before an image stops being written).
async fn set_drivers_read_only(nodes: &[Arc<Node>], read_only: bool) -> BlockResult<()> {
    for node in nodes {
        if read_only {
            node.store_persistent_bitmaps(false).await?;
        }
        node.driver().set_read_only(read_only).await?;
        node.set_bitmaps_read_only(read_only);
    }
    Ok(())
}

impl GraphState {
    fn apply_reopen(&mut self, plans: &[Reopen]) -> BlockResult<()> {
        for plan in plans {
            let node = &plan.node;
            let old = node.settings();
            node.driver().check_reopen(&old, &plan.settings)?;
            let losing_write = !old.read_only && plan.settings.read_only;
            let (taken, _) = node.applied.get();
            if losing_write && taken.intersects(Perm::WRITE | Perm::WRITE_UNCHANGED) {
                return Err(generic(format!(
                    "Read-only block node '{}' cannot support read-write users",
                    node.name()
                )));
            }
        }
        let mut undo: Vec<(Arc<Node>, NodeSettings)> = Vec::new();
        let mut moved: Vec<(Arc<NodeChild>, Arc<Node>)> = Vec::new();
        let mut relinked: Vec<Relinked> = Vec::new();
        for plan in plans {
            undo.push((plan.node.clone(), plan.node.replace_settings(plan.settings)));
            for (edge, target) in &plan.edges {
                moved.push((edge.clone(), edge.replace(target.clone())));
            }
            if let Err(error) = self.change_backing_edge(plan, &mut relinked) {
                self.undo_reopen(moved, undo, relinked);
                return Err(error);
            }
        }
        let cycle = plans.iter().any(|plan| {
            plan.edges
                .iter()
                .any(|(_, target)| GraphState::subtree_ids(target).contains(&plan.node.id()))
        });
        let result = if cycle {
            Err(generic("Making the new child a child would create a cycle"))
        } else {
            self.refresh_perms()
        };
        if let Err(e) = result {
            self.undo_reopen(moved, undo, relinked);
            return Err(e);
        }
        for plan in plans {
            if let Some(prepared) = &plan.prepared {
                plan.node.driver().commit_reopen(prepared.clone());
            }
            plan.node.set_driver_options(plan.options.clone());
        }
        Ok(())
    }
}

impl GraphState {
    /// Adds or drops `plan`'s backing edge; what it changed is recorded in
    /// `relinked` (the node and its old list of edges) for an undo.
    fn change_backing_edge(
        &mut self,
        plan: &Reopen,
        relinked: &mut Vec<Relinked>,
    ) -> BlockResult<()> {
        let node = &plan.node;
        let old = node.children();
        match &plan.backing {
            BackingChange::Keep => return Ok(()),
            BackingChange::Add(target) => {
                let edge = NodeChild::new(
                    ChildRole::Backing,
                    crate::permissions::ChildRoleFlags::COW,
                    target.clone(),
                );
                edge.set_seq(self.take_seq());
                node.driver().set_backing(Some(edge.clone()))?;
                let mut children = (*old).clone();
                children.push(edge);
                node.set_children(children);
            }
            BackingChange::Drop(edge) => {
                node.driver().set_backing(None)?;
                let children = old
                    .iter()
                    .filter(|c| !Arc::ptr_eq(c, edge))
                    .cloned()
                    .collect();
                node.set_children(children);
            }
        }
        relinked.push((node.clone(), old));
        Ok(())
    }

    /// Puts every moved edge, relinked edge list and setting back.
    fn undo_reopen(
        &mut self,
        moved: Vec<(Arc<NodeChild>, Arc<Node>)>,
        undo: Vec<(Arc<Node>, NodeSettings)>,
        relinked: Vec<Relinked>,
    ) {
        for (node, old) in relinked.into_iter().rev() {
            let backing = old.iter().find(|c| c.role() == ChildRole::Backing).cloned();
            let _ = node.driver().set_backing(backing);
            node.set_children((*old).clone());
        }
        for (edge, old) in moved.into_iter().rev() {
            edge.replace(old);
        }
        for (node, old) in undo.into_iter().rev() {
            node.replace_settings(old);
        }
        // The old shape's permissions held before; they hold again.
        let _ = self.refresh_perms();
    }
}

/// The child options of `new` against `old`, checking that every other
/// driver option is unchanged (QEMU's "Cannot change the option").
fn child_changes<'a>(
    node: &str,
    old: &BlockdevDriver,
    new: &'a BlockdevDriver,
) -> BlockResult<Vec<(ChildRole, ChildChange<'a>)>> {
    match (old, new) {
        (BlockdevDriver::File(old), BlockdevDriver::File(new)) => {
            same("filename", &old.filename, &new.filename)?;
            same("pr-manager", &old.pr_manager, &new.pr_manager)?;
            same("locking", &old.locking, &new.locking)?;
            same("aio", &old.aio, &new.aio)?;
            Ok(Vec::new())
        }
        (BlockdevDriver::NullCo(old), BlockdevDriver::NullCo(new))
        | (BlockdevDriver::NullAio(old), BlockdevDriver::NullAio(new)) => {
            same("size", &old.size, &new.size)?;
            same("latency-ns", &old.latency_ns, &new.latency_ns)?;
            same("read-zeroes", &old.read_zeroes, &new.read_zeroes)?;
            Ok(Vec::new())
        }
        // The window (`offset`, `size`) is the driver's to check.
        (BlockdevDriver::Raw(_), BlockdevDriver::Raw(new)) => {
            Ok(vec![(ChildRole::File, by_name("file", &new.file)?)])
        }
        // The other options are the driver's to check and apply.
        (BlockdevDriver::Qcow2(old), BlockdevDriver::Qcow2(new)) => {
            same("data-file", &old.data_file, &new.data_file)?;
            let backing = match &new.backing {
                None => ChildChange::Missing,
                Some(BlockdevRefOrNull::Reference(name)) => ChildChange::To(name),
                Some(BlockdevRefOrNull::Null) => ChildChange::Null,
                Some(BlockdevRefOrNull::Definition(_)) => return Err(cannot_change("backing")),
            };
            Ok(vec![
                (ChildRole::File, by_name("file", &new.file)?),
                (ChildRole::Backing, backing),
            ])
        }
        (BlockdevDriver::Throttle(_), BlockdevDriver::Throttle(new)) => {
            Ok(vec![(ChildRole::File, by_name("file", &new.file)?)])
        }
        // The sizes are the driver's to check; a size given before must be
        // given again (QEMU's words).
        (BlockdevDriver::Preallocate(old), BlockdevDriver::Preallocate(new)) => {
            not_reset("prealloc-align", &old.prealloc_align, &new.prealloc_align)?;
            not_reset("prealloc-size", &old.prealloc_size, &new.prealloc_size)?;
            Ok(vec![(ChildRole::File, by_name("file", &new.file)?)])
        }
        (BlockdevDriver::Blkdebug(old), BlockdevDriver::Blkdebug(new)) => {
            same("config", &old.config, &new.config)?;
            same("align", &old.align, &new.align)?;
            same("max-transfer", &old.max_transfer, &new.max_transfer)?;
            same("opt-write-zero", &old.opt_write_zero, &new.opt_write_zero)?;
            same("max-write-zero", &old.max_write_zero, &new.max_write_zero)?;
            same("opt-discard", &old.opt_discard, &new.opt_discard)?;
            same("max-discard", &old.max_discard, &new.max_discard)?;
            same("inject-error", &old.inject_error, &new.inject_error)?;
            same("set-state", &old.set_state, &new.set_state)?;
            same(
                "take-child-perms",
                &old.take_child_perms,
                &new.take_child_perms,
            )?;
            same(
                "unshare-child-perms",
                &old.unshare_child_perms,
                &new.unshare_child_perms,
            )?;
            Ok(vec![(ChildRole::Image, by_name("image", &new.image)?)])
        }
        _ => Err(generic(format!(
            "Block format '{}' used by node '{node}' does not support reopening files",
            new.name()
        ))),
    }
}

/// A child named by reference; a new inline definition cannot come with
/// a reopen.
fn by_name<'a>(option: &str, child: &'a BlockdevRef) -> BlockResult<ChildChange<'a>> {
    match child {
        BlockdevRef::Reference(name) => Ok(ChildChange::To(name)),
        BlockdevRef::Definition(_) => Err(cannot_change(option)),
    }
}

fn same<T: PartialEq>(option: &str, old: &T, new: &T) -> BlockResult<()> {
    if old == new {
        Ok(())
    } else {
        Err(cannot_change(option))
    }
}

/// An option given before may change but not go.
fn not_reset<T>(option: &str, old: &Option<T>, new: &Option<T>) -> BlockResult<()> {
    if old.is_some() && new.is_none() {
        return Err(generic(format!(
            "Option '{option}' cannot be reset to its default value"
        )));
    }
    Ok(())
}

fn cannot_change(option: &str) -> crate::error::BlockError {
    generic(format!("Cannot change the option '{option}'"))
}

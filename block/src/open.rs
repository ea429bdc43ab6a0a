//! How a node is opened: its generic settings, its children, and the
//! context its driver opens in.
//!
//! The graph opens a node by building an [`OpenContext`] and handing it
//! to the driver's `open` (one line per driver in [`crate::factory`]).
//! Through the context the driver opens or finds its children and makes
//! its edges to them, claims permissions on a child it reads while
//! opening, looks up the daemon's objects (throttle groups, secrets) and
//! the graph's event sink, and keeps a handle to have permissions applied
//! again when its own needs change.
//!
//! Children given inline are opened first (QEMU registers them before their
//! parent too) and inherit the parent's `read-only`, `auto-read-only`,
//! `cache.*`, `force-share` and `active` unless they set them, and default
//! to `discard=unmap` (the parent's own policy already filters discards).
//! Backing children are read-only unless they say otherwise. If anything
//! fails, or the caller gives up, every node this open created is closed.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use schema::block::{
    BlockdevDetectZeroesOptions, BlockdevDiscardOptions, BlockdevOptions, BlockdevRef,
};
use schema::event::EventSink;

use crate::driver::ChildRole;
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::factory;
use crate::graph::{BackendPerms, Claim, GraphShared, NewNode};
use crate::node::{Node, NodeChild, NodeSettings};
use crate::permissions::ChildRoleFlags;

/// The daemon's objects, as drivers look them up by id while opening:
/// each is a shared handle the driver downcasts to the type it needs.
pub trait ObjectLookup: Send + Sync {
    /// The object with this id, if there is one.
    fn object(&self, id: &str) -> Option<Arc<dyn Any + Send + Sync>>;
}

/// What a driver opens in: the new node's name and settings, its
/// children, the graph's objects and events.
pub struct OpenContext<'a> {
    graph: &'a Arc<GraphShared>,
    name: String,
    settings: NodeSettings,
    children: Vec<Arc<NodeChild>>,
    claims: Vec<Claim<'a>>,
    /// Where the node goes in creation order, if not after everything
    /// opened with it.
    position: Option<usize>,
}

impl<'a> OpenContext<'a> {
    /// The new node's name.
    pub fn node_name(&self) -> &str {
        &self.name
    }

    /// The new node's generic settings.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// Where drivers' events go, if anywhere.
    pub fn events(&self) -> Option<&EventSink> {
        self.graph.events()
    }

    /// The daemon's object with this id, if any.
    pub fn object(&self, id: &str) -> Option<Arc<dyn Any + Send + Sync>> {
        self.graph.objects()?.object(id)
    }

    /// A handle to have the graph's permissions applied again later,
    /// when the driver's needs on its children change by themselves.
    pub fn perm_refresh(&self) -> PermRefresh {
        PermRefresh(Arc::downgrade(self.graph))
    }

    /// The node with this name.
    pub fn find(&self, name: &str) -> BlockResult<Arc<Node>> {
        find(self.graph, name)
    }

    /// A node given by name, or opened from its inline definition (a
    /// backing child, `cow`, is read-only unless it says otherwise). No
    /// edge to it exists yet: see [`OpenContext::add_child`].
    pub async fn open_node(&mut self, child: &BlockdevRef, cow: bool) -> BlockResult<Arc<Node>> {
        match child {
            BlockdevRef::Reference(name) => self.find(name),
            BlockdevRef::Definition(options) => self.open_definition(options, cow).await,
        }
    }

    /// Opens a node from `options`, inheriting from the new node.
    pub async fn open_definition(
        &mut self,
        options: &BlockdevOptions,
        cow: bool,
    ) -> BlockResult<Arc<Node>> {
        let inherit = Inherit {
            parent: &self.settings,
            cow,
        };
        open_node(self.graph, options, Some(inherit)).await
    }

    /// Takes permissions on `node` for the new node's future `edge`, so
    /// that the driver may read (and repair) it while opening under the
    /// protection of its locks; the edge replaces the claim.
    pub fn claim(
        &mut self,
        node: &Arc<Node>,
        perms: BackendPerms,
        edge: &'static str,
    ) -> BlockResult<()> {
        crate::graph::check_child_active(&self.name, self.settings.inactive, node, edge)?;
        let claim = self.graph.claim(node, perms, &self.name, edge)?;
        self.claims.push(claim);
        Ok(())
    }

    /// Puts the new node here in creation order, before what is opened
    /// after this call (QEMU opens a backing chain after its format node).
    pub fn place_here(&mut self) {
        self.position = Some(self.graph.state().node_count());
    }

    /// Makes the new node's edge to `node`.
    pub fn add_child(
        &mut self,
        role: ChildRole,
        flags: ChildRoleFlags,
        node: Arc<Node>,
    ) -> Arc<NodeChild> {
        let edge = NodeChild::new(role, flags, node);
        self.children.push(edge.clone());
        edge
    }

    /// Opens or finds `child` and makes the edge to it.
    pub async fn child(
        &mut self,
        child: &BlockdevRef,
        role: ChildRole,
        flags: ChildRoleFlags,
    ) -> BlockResult<Arc<NodeChild>> {
        let node = self.open_node(child, role == ChildRole::Backing).await?;
        Ok(self.add_child(role, flags, node))
    }
}

/// A driver's way to have the permissions of the graph applied again
/// after what it takes on its children changed without a graph change
/// (QEMU's `bdrv_child_refresh_perms`). It holds the graph weakly: a node
/// does not keep its graph alive.
#[derive(Clone)]
pub struct PermRefresh(Weak<GraphShared>);

impl PermRefresh {
    /// Applies the permissions once no graph change is under way; does
    /// nothing if the graph is gone.
    pub async fn run(&self) -> BlockResult<()> {
        match self.0.upgrade() {
            Some(graph) => graph.refresh_perms().await,
            None => Ok(()),
        }
    }
}

/// What a child inherits from the parent that defines it inline.
#[derive(Clone, Copy)]
pub(crate) struct Inherit<'a> {
    parent: &'a NodeSettings,
    /// A backing child: read-only unless it says otherwise.
    cow: bool,
}

type OpenFuture<'a> = Pin<Box<dyn Future<Output = BlockResult<Arc<Node>>> + Send + 'a>>;

/// Opens a node and everything it brings; all or nothing. The caller holds
/// the graph's control lock.
pub(crate) async fn open_tree(
    graph: &Arc<GraphShared>,
    options: &BlockdevOptions,
) -> BlockResult<Arc<Node>> {
    let mut unwind = Unwind {
        graph,
        mark: graph.state().node_count(),
        armed: true,
    };
    let node = open_node(graph, options, None).await?;
    unwind.armed = false;
    Ok(node)
}

/// QEMU's leftover-option error for `"cache": {}`: an empty group names
/// no cache option, so the flattened `cache` key is left for the driver,
/// which knows no such option. It comes once the driver has opened, as in
/// QEMU.
fn empty_cache_refused(is_protocol: bool, driver: &str) -> BlockError {
    let message = if is_protocol {
        format!("Block protocol '{driver}' doesn't support the option 'cache'")
    } else {
        format!("Block format '{driver}' does not support the option 'cache'")
    };
    BlockError::new(ErrorKind::InvalidArgument, message)
}

/// Closes the nodes of a failed or abandoned open.
struct Unwind<'a> {
    graph: &'a Arc<GraphShared>,
    mark: usize,
    armed: bool,
}

impl Drop for Unwind<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.graph.state().unwind_to(self.mark);
        }
    }
}

fn open_node<'a>(
    graph: &'a Arc<GraphShared>,
    options: &'a BlockdevOptions,
    inherit: Option<Inherit<'a>>,
) -> OpenFuture<'a> {
    Box::pin(async move {
        let mut cx = OpenContext {
            graph,
            name: graph.state().new_name(options.node_name.as_deref())?,
            settings: node_settings(options, inherit)?,
            children: Vec::new(),
            claims: Vec::new(),
            position: None,
        };
        let driver = factory::open_driver(&mut cx, &options.driver).await?;
        let stored_bitmaps = driver.load_bitmaps().await?;
        if options
            .cache
            .as_ref()
            .is_some_and(|cache| *cache == Default::default())
        {
            return Err(empty_cache_refused(
                driver.is_protocol(),
                options.driver.name(),
            ));
        }
        let OpenContext {
            name,
            settings,
            children,
            claims,
            position,
            ..
        } = cx;
        let retire: Vec<u64> = claims.iter().map(|c| c.seq()).collect();
        let mut state = graph.state();
        let position = position.unwrap_or(state.node_count());
        let new = NewNode {
            name,
            driver,
            settings,
            options: Some(options.driver.clone()),
            children,
            events: graph.events().cloned(),
            implicit: false,
        };
        let node = state.register(position, new, &retire)?;
        drop(state);
        node.adopt_stored_bitmaps(stored_bitmaps);
        for claim in claims {
            claim.retire();
        }
        Ok(node)
    })
}

fn find(graph: &GraphShared, name: &str) -> BlockResult<Arc<Node>> {
    graph.state().find(name).ok_or_else(|| {
        BlockError::new(
            ErrorKind::InvalidArgument,
            format!("Cannot find device='{name}' nor node-name='{name}'"),
        )
    })
}

/// The node's generic settings, with inheritance from an inline parent.
pub(crate) fn node_settings(
    options: &BlockdevOptions,
    inherit: Option<Inherit>,
) -> BlockResult<NodeSettings> {
    let parent = inherit.map(|i| i.parent);
    let cow = inherit.is_some_and(|i| i.cow);
    let inherited = |own: Option<bool>, from_parent: fn(&NodeSettings) -> bool| {
        own.or(parent.map(from_parent)).unwrap_or(false)
    };
    let cache = options.cache.clone().unwrap_or_default();
    let settings = NodeSettings {
        read_only: if cow {
            options.read_only.unwrap_or(true)
        } else {
            inherited(options.read_only, |p| p.read_only)
        },
        auto_read_only: if cow {
            options.auto_read_only.unwrap_or(false)
        } else {
            inherited(options.auto_read_only, |p| p.auto_read_only)
        },
        // Not inherited: QEMU opens inline children active.
        inactive: options.active == Some(false),
        force_share: inherited(options.force_share, |p| p.force_share),
        discard_unmap: match options.discard {
            Some(discard) => discard == BlockdevDiscardOptions::Unmap,
            None => parent.is_some(),
        },
        detect_zeroes: options.detect_zeroes.unwrap_or_default(),
        cache_direct: inherited(cache.direct, |p| p.cache_direct),
        cache_no_flush: inherited(cache.no_flush, |p| p.cache_no_flush),
    };
    if settings.detect_zeroes == BlockdevDetectZeroesOptions::Unmap && !settings.discard_unmap {
        return Err(BlockError::new(
            ErrorKind::InvalidArgument,
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
        ));
    }
    if settings.force_share && !settings.read_only {
        return Err(BlockError::new(
            ErrorKind::InvalidArgument,
            "force-share=on can only be used with read-only images",
        ));
    }
    Ok(settings)
}

//! The results of `query-named-block-nodes`, `query-blockstats` and
//! `x-debug-query-block-graph` (schema types), built from the graph as QSD
//! 10.0 builds them: which members appear, list order, ids.

use std::sync::Arc;

use schema::info::{
    BlockDeviceInfo, BlockdevCacheInfo, ImageInfo, XDbgBlockGraph, XDbgBlockGraphEdge,
    XDbgBlockGraphNode, XDbgBlockGraphNodeType,
};

use schema::stats::BlockStats;

use crate::driver::ChildRole;
use crate::filename::display_filename;
use crate::graph::BlockGraph;
use crate::node::Node;
use crate::perm_update::{Holder, Use};
use crate::permissions::{ChildRoleFlags, Perm};

/// How deep `query-blockstats` follows `parent` links (the graph's own
/// depth limit is far larger; a reply stays small).
const MAX_STATS_DEPTH: usize = 64;

impl BlockGraph {
    /// `query-named-block-nodes`: every node, newest first. With `flat`,
    /// backing images are not nested.
    pub fn query_named_block_nodes(&self, flat: bool) -> Vec<BlockDeviceInfo> {
        self.nodes()
            .iter()
            .map(|node| block_device_info(node, flat))
            .collect()
    }

    /// `query-blockstats`. With `query_nodes`, every node, oldest first
    /// (QEMU's `bdrv_next_node`), each with its primary data child as
    /// `parent`. Without, QEMU lists the backends that have a name or a
    /// guest device: QSD has none (exports' backends are anonymous), and
    /// neither has storaged.
    pub fn query_blockstats(&self, query_nodes: bool) -> Vec<BlockStats> {
        if !query_nodes {
            return Vec::new();
        }
        let mut nodes = self.nodes();
        nodes.reverse();
        nodes.iter().map(|n| node_stats(n, 0)).collect()
    }

    /// `x-debug-query-block-graph`.
    pub fn debug_block_graph(&self) -> XDbgBlockGraph {
        self.with_state(debug_graph)
    }
}

/// A node's entry of `query-blockstats` (QEMU's `bdrv_query_bds_stats`
/// at node level: no `backing`).
fn node_stats(node: &Node, depth: usize) -> BlockStats {
    let parent = if depth < MAX_STATS_DEPTH {
        stats_parent(node).map(|p| Box::new(node_stats(&p, depth + 1)))
    } else {
        None
    };
    BlockStats {
        device: None,
        qdev: None,
        node_name: Some(node.name().to_string()),
        stats: node.stats().device_stats(),
        driver_specific: node.driver().specific_stats(),
        parent,
        backing: None,
    }
}

/// The child whose statistics `query-blockstats` nests as `parent`: the
/// primary child if it holds data or is filtered, else the first child
/// that does.
fn stats_parent(node: &Node) -> Option<Arc<Node>> {
    let data = ChildRoleFlags::DATA.union(ChildRoleFlags::FILTERED);
    let children = node.children();
    children
        .iter()
        .find(|c| c.flags().contains(ChildRoleFlags::PRIMARY) && c.flags().intersects(data))
        .or_else(|| children.iter().find(|c| c.flags().intersects(data)))
        .map(|c| c.node())
}

fn block_device_info(node: &Arc<Node>, flat: bool) -> BlockDeviceInfo {
    let settings = node.settings();
    let backing = node.child(ChildRole::Backing);
    let mut image = image_info(node);
    let mut backing_file_depth = 0i64;
    if !flat {
        // Nest the backing chain, counting its length.
        let mut slot = &mut image;
        let mut current = backing.clone();
        while let Some(layer) = current {
            backing_file_depth += 1;
            current = layer.child(ChildRole::Backing);
            slot = slot.backing_image.insert(Box::new(image_info(&layer)));
        }
    }
    BlockDeviceInfo {
        file: display_filename(node),
        node_name: Some(node.name().to_string()),
        ro: settings.read_only,
        drv: node.driver().format_name().to_string(),
        backing_file: backing.map(|b| display_filename(&b)),
        backing_file_depth,
        active: node.is_active(),
        encrypted: false,
        detect_zeroes: settings.detect_zeroes,
        bps: 0,
        bps_rd: 0,
        bps_wr: 0,
        iops: 0,
        iops_rd: 0,
        iops_wr: 0,
        image,
        bps_max: None,
        bps_rd_max: None,
        bps_wr_max: None,
        iops_max: None,
        iops_rd_max: None,
        iops_wr_max: None,
        bps_max_length: None,
        bps_rd_max_length: None,
        bps_wr_max_length: None,
        iops_max_length: None,
        iops_rd_max_length: None,
        iops_wr_max_length: None,
        iops_size: None,
        group: None,
        cache: BlockdevCacheInfo {
            writeback: true,
            direct: settings.cache_direct,
            no_flush: settings.cache_no_flush,
        },
        // QEMU reports the unsigned threshold as a signed integer.
        write_threshold: node.write_threshold() as i64,
        dirty_bitmaps: node.bitmaps().info(),
    }
}

fn image_info(node: &Node) -> ImageInfo {
    let driver_info = node.driver().driver_info();
    let stored_backing = node.driver().backing_file_name();
    let backing = node.child(ChildRole::Backing);
    let full_backing = backing.as_ref().map(|b| display_filename(b));
    ImageInfo {
        filename: display_filename(node),
        format: node.driver().format_name().to_string(),
        dirty_flag: driver_info.map(|i| i.dirty),
        actual_size: allocated_file_size(node).map(saturating_i64),
        virtual_size: saturating_i64(node.size()),
        cluster_size: driver_info.and_then(|i| i.cluster_size).map(saturating_i64),
        encrypted: None,
        compressed: None,
        backing_filename: stored_backing
            .as_ref()
            .map(|b| b.name.clone())
            .or_else(|| full_backing.clone()),
        backing_filename_format: stored_backing
            .and_then(|b| b.format)
            .or_else(|| backing.map(|b| b.driver().format_name().to_string())),
        full_backing_filename: full_backing,
        snapshots: node
            .driver()
            .snapshots()
            .filter(|snapshots| !snapshots.is_empty()),
        format_specific: node.driver().format_specific(),
        backing_image: None,
    }
}

/// What the driver reports, or for formats the sum over the children that
/// hold this node's data (QEMU's `bdrv_sum_allocated_file_size`).
pub fn allocated_file_size(node: &Node) -> Option<u64> {
    if let Some(size) = node.driver().allocated_size() {
        return Some(size);
    }
    if node.driver().is_protocol() {
        return None;
    }
    let holders = ChildRoleFlags::DATA
        .union(ChildRoleFlags::METADATA)
        .union(ChildRoleFlags::FILTERED);
    let mut total = 0u64;
    for child in node.children().iter() {
        if child.flags().intersects(holders) {
            total = total.saturating_add(allocated_file_size(&child.node())?);
        }
    }
    Some(total)
}

/// Builds the debug graph: backends first, then nodes, each in creation
/// order, ids handed out on first sight; lists come out newest first, as
/// QEMU prepends.
fn debug_graph(nodes: &[Arc<Node>], uses: &[Use]) -> XDbgBlockGraph {
    let mut ids: Vec<(Key, u64)> = Vec::new();
    let mut id_of = |key: Key| -> u64 {
        if let Some((_, id)) = ids.iter().find(|(k, _)| *k == key) {
            return *id;
        }
        let id = ids.len() as u64 + 1;
        ids.push((key, id));
        id
    };
    let mut graph_nodes = Vec::new();
    let mut edges = Vec::new();
    for backend in uses
        .iter()
        .filter(|u| matches!(u.holder, Holder::Backend(_)))
    {
        let id = id_of(Key::Backend(backend.seq));
        graph_nodes.push(XDbgBlockGraphNode {
            id,
            r#type: XDbgBlockGraphNodeType::BlockBackend,
            name: String::new(),
        });
        edges.push(edge(
            id,
            id_of(Key::Node(backend.node_id)),
            "root",
            (backend.perm, backend.shared),
        ));
    }
    for node in nodes {
        let id = id_of(Key::Node(node.id()));
        graph_nodes.push(XDbgBlockGraphNode {
            id,
            r#type: XDbgBlockGraphNodeType::BlockDriver,
            name: node.name().to_string(),
        });
        // QEMU lists a node's children newest first.
        for child in node.children().iter().rev() {
            edges.push(edge(
                id,
                id_of(Key::Node(child.node().id())),
                child.role().name(),
                child.perms(),
            ));
        }
    }
    graph_nodes.reverse();
    edges.reverse();
    XDbgBlockGraph {
        nodes: graph_nodes,
        edges,
    }
}

/// A vertex of the debug graph before it has an id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Backend(u64),
    Node(u64),
}

fn edge(parent: u64, child: u64, name: &str, (perm, shared): (Perm, Perm)) -> XDbgBlockGraphEdge {
    XDbgBlockGraphEdge {
        parent,
        child,
        name: name.to_string(),
        perm: perm.to_qapi(),
        shared_perm: shared.to_qapi(),
    }
}

/// QAPI sizes are `int`; no real size comes near `i64::MAX`.
pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

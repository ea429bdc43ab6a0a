//! How a node is born: one `match` on the schema's driver enum. Adding a
//! driver is one arm here and one file (or directory).
//!
//! Children given inline are opened first (QEMU registers them before their
//! parent too) and inherit the parent's `read-only`, `auto-read-only`,
//! `cache.*`, `force-share` and `active` unless they set them, and default
//! to `discard=unmap` (the parent's own policy already filters discards).
//! Backing children are read-only unless they say otherwise. A format that
//! reads its image while opening first claims its permissions on the image
//! node, as QEMU attaches the child before the driver opens. If anything
//! fails, or the caller gives up, every node this call created is closed.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use schema::block::{
    BlockdevDetectZeroesOptions, BlockdevDiscardOptions, BlockdevDriver, BlockdevOptions,
    BlockdevOptionsQcow2, BlockdevRef, BlockdevRefOrNull,
};
use schema::event::{Event, EventSink};
use serde_json::json;

use crate::driver::{BlockDriver, ChildRole};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::file::FileDriver;
use crate::filename::display_filename;
use crate::graph::{BackendPerms, GraphShared};
use crate::node::{Node, NodeChild, NodeSettings};
use crate::null::NullDriver;
use crate::permissions::{default_child_perms, ChildRoleFlags, Perm};
use crate::qcow2::{BlockChild, CorruptionEvent, CorruptionHook, Qcow2, Qcow2Options};
use crate::raw::RawDriver;

/// The first bytes of a qcow2 image, for probing a backing file's format.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// What a child inherits from the parent that defines it inline.
#[derive(Clone, Copy)]
struct Inherit<'a> {
    parent: &'a NodeSettings,
    /// A backing child: read-only unless it says otherwise.
    cow: bool,
}

type OpenFuture<'a> = Pin<Box<dyn Future<Output = BlockResult<Arc<Node>>> + Send + 'a>>;

/// Opens a node and everything it brings; all or nothing. The caller holds
/// the graph's control lock.
pub(crate) async fn open_tree(
    graph: &GraphShared,
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

/// Closes the nodes of a failed or abandoned open.
struct Unwind<'a> {
    graph: &'a GraphShared,
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
    graph: &'a GraphShared,
    options: &'a BlockdevOptions,
    inherit: Option<Inherit<'a>>,
) -> OpenFuture<'a> {
    Box::pin(async move {
        let name = graph.state().new_name(options.node_name.as_deref())?;
        let settings = node_settings(options, inherit)?;
        // Where the node goes in creation order: after its children, except
        // that QEMU opens a backing chain after the format node.
        let mut position = None;
        let (driver, children, claim): (Box<dyn BlockDriver>, Vec<Arc<NodeChild>>, _) =
            match &options.driver {
                BlockdevDriver::File(file) => (
                    Box::new(FileDriver::open(file, &settings)?),
                    Vec::new(),
                    None,
                ),
                BlockdevDriver::NullCo(null) => {
                    (Box::new(NullDriver::new(null)?), Vec::new(), None)
                }
                BlockdevDriver::Raw(raw) => {
                    let file = open_child(graph, &raw.file, &settings).await?;
                    let role = RawDriver::file_role(raw);
                    let child = NodeChild::new(ChildRole::File, role, file);
                    let driver = RawDriver::open(child.clone(), raw)?;
                    (Box::new(driver), vec![child], None)
                }
                BlockdevDriver::Qcow2(qcow2) => {
                    let file = open_child(graph, &qcow2.file, &settings).await?;
                    // The image is read (and maybe repaired) while opening.
                    let writable = !settings.read_only && !settings.inactive;
                    let (perm, shared) =
                        default_child_perms(ChildRoleFlags::IMAGE, writable, Perm::NONE, Perm::ALL);
                    let claim = graph.claim(&file, BackendPerms { perm, shared }, &name, "file")?;
                    position = Some(graph.state().node_count());
                    let (driver, children) =
                        open_qcow2(graph, qcow2, file, &settings, &name).await?;
                    (driver, children, Some(claim))
                }
            };
        let retire: Vec<u64> = claim.iter().map(|c| c.seq()).collect();
        let mut state = graph.state();
        let position = position.unwrap_or(state.node_count());
        let node = state.register(position, name, driver, settings, children, &retire)?;
        drop(state);
        if let Some(claim) = claim {
            claim.retire();
        }
        Ok(node)
    })
}

/// A child given by name, or opened from its inline definition.
async fn open_child(
    graph: &GraphShared,
    child: &BlockdevRef,
    parent: &NodeSettings,
) -> BlockResult<Arc<Node>> {
    match child {
        BlockdevRef::Reference(name) => find(graph, name),
        BlockdevRef::Definition(options) => {
            let inherit = Inherit { parent, cow: false };
            open_node(graph, options, Some(inherit)).await
        }
    }
}

fn find(graph: &GraphShared, name: &str) -> BlockResult<Arc<Node>> {
    graph.state().find(name).ok_or_else(|| {
        BlockError::new(
            ErrorKind::InvalidArgument,
            format!("Cannot find device='{name}' nor node-name='{name}'"),
        )
    })
}

/// Opens a qcow2 image over `file`, with the backing chain its options or
/// its header name.
async fn open_qcow2(
    graph: &GraphShared,
    options: &BlockdevOptionsQcow2,
    file: Arc<Node>,
    settings: &NodeSettings,
    name: &str,
) -> BlockResult<(Box<dyn BlockDriver>, Vec<Arc<NodeChild>>)> {
    let mut qcow2_options = Qcow2Options::from_schema(options, settings)?;
    qcow2_options.on_corruption = graph.events().map(|events| corruption_hook(events, name));
    let inherit = Inherit {
        parent: settings,
        cow: true,
    };
    let backing = match &options.backing {
        Some(BlockdevRefOrNull::Null) => None,
        Some(BlockdevRefOrNull::Reference(name)) => Some(find(graph, name)?),
        Some(BlockdevRefOrNull::Definition(backing)) => {
            Some(open_node(graph, backing, Some(inherit)).await?)
        }
        None => open_backing_from_header(graph, &file, inherit).await?,
    };
    let image = NodeChild::new(ChildRole::File, ChildRoleFlags::IMAGE, file);
    let backing = backing.map(|b| NodeChild::new(ChildRole::Backing, ChildRoleFlags::COW, b));
    let driver = Qcow2::open(
        image.clone(),
        backing.clone().map(|b| -> Arc<dyn BlockChild> { b }),
        qcow2_options,
    )
    .await?;
    let children = std::iter::once(image).chain(backing).collect();
    Ok((Box::new(driver), children))
}

/// Reports corruption of node `name` as QEMU's `BLOCK_IMAGE_CORRUPTED`.
fn corruption_hook(events: &EventSink, name: &str) -> CorruptionHook {
    let events = events.clone();
    let name = name.to_string();
    Arc::new(move |corruption: &CorruptionEvent| {
        let mut data = json!({
            "device": "",
            "node-name": name,
            "msg": corruption.message,
            "fatal": corruption.fatal,
        });
        if let Some(offset) = corruption.offset {
            data["offset"] = json!(offset);
        }
        if let Some(size) = corruption.size {
            data["size"] = json!(size);
        }
        events(Event::new("BLOCK_IMAGE_CORRUPTED", data));
    })
}

/// Opens the backing file the image header names (relative names are
/// relative to the image's directory), in the format the header names or,
/// failing that, the one its first bytes show.
async fn open_backing_from_header(
    graph: &GraphShared,
    file: &Arc<Node>,
    inherit: Inherit<'_>,
) -> BlockResult<Option<Arc<Node>>> {
    let info = Qcow2::backing_info(file.as_ref()).await?;
    let Some(backing_name) = info.file else {
        return Ok(None);
    };
    let image_name = display_filename(file);
    let path = if Path::new(&backing_name).is_absolute() {
        backing_name.clone()
    } else if image_name.starts_with("json:") {
        return Err(BlockError::new(
            ErrorKind::InvalidArgument,
            format!("Cannot use relative backing file names for '{image_name}'"),
        ));
    } else {
        let dir = Path::new(&image_name).parent().unwrap_or(Path::new(""));
        dir.join(&backing_name).to_string_lossy().into_owned()
    };
    let format = match info.format {
        Some(format) => format,
        None => probe_format(&path)?,
    };
    let protocol = json!({"driver": "file", "filename": path});
    let options: BlockdevOptions = schema::from_json(json!({"driver": format, "file": protocol}))
        .map_err(|e| {
        BlockError::new(
            ErrorKind::InvalidArgument,
            format!("Could not open backing file: {}", e.desc),
        )
    })?;
    open_node(graph, &options, Some(inherit))
        .await
        .map(Some)
        .map_err(|e| BlockError::new(e.kind, format!("Could not open backing file: {e}")))
}

/// `qcow2` if the file starts with the qcow2 magic, else `raw`.
fn probe_format(path: &str) -> BlockResult<String> {
    let mut magic = [0u8; QCOW2_MAGIC.len()];
    let read = std::fs::File::open(path)
        .and_then(|file| std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0));
    match read {
        Ok(()) if magic == QCOW2_MAGIC => Ok("qcow2".to_string()),
        Ok(()) => Ok("raw".to_string()),
        // Too short for any header: raw.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok("raw".to_string()),
        Err(e) => Err(BlockError::from_io(
            format!("Could not open backing file: Could not open '{path}'"),
            e,
        )),
    }
}

/// The node's generic settings, with inheritance from an inline parent.
fn node_settings(options: &BlockdevOptions, inherit: Option<Inherit>) -> BlockResult<NodeSettings> {
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
        inactive: inherited(options.active.map(|active| !active), |p| p.inactive),
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

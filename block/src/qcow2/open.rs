//! Opening a qcow2 node in the graph: its image child (claimed while the
//! header is read and maybe repaired), the backing chain its options or
//! its header name, and the corruption events it reports.

use std::path::Path;
use std::sync::Arc;

use schema::block::{BlockdevOptions, BlockdevOptionsQcow2, BlockdevRefOrNull};
use schema::event::{BlockImageCorruptedData, EventSink, QmpEvent};
use serde_json::json;

use super::{BlockChild, CorruptionEvent, CorruptionHook, Qcow2, Qcow2Options};
use crate::driver::ChildRole;
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::filename::display_filename;
use crate::graph::BackendPerms;
use crate::info::saturating_i64;
use crate::node::Node;
use crate::open::OpenContext;
use crate::permissions::{default_child_perms, ChildRoleFlags, Perm};

impl Qcow2 {
    /// Opens a qcow2 node: the image over its `file` child, with the
    /// backing chain its options or its header name.
    pub async fn open_node(
        cx: &mut OpenContext<'_>,
        options: &BlockdevOptionsQcow2,
    ) -> BlockResult<Qcow2> {
        let file = cx.open_node(&options.file, false).await?;
        // The image is read (and maybe repaired) while opening.
        let settings = *cx.settings();
        let writable = !settings.read_only && !settings.inactive;
        let (perm, shared) =
            default_child_perms(ChildRoleFlags::IMAGE, writable, Perm::NONE, Perm::ALL);
        // An inactive image belongs to another process, which may write it.
        let shared = if settings.inactive { Perm::ALL } else { shared };
        cx.claim(&file, BackendPerms { perm, shared }, "file")?;
        cx.place_here();
        let mut qcow2_options = Qcow2Options::from_schema(options, &settings)?;
        qcow2_options.on_corruption = cx
            .events()
            .map(|events| corruption_hook(events, cx.node_name()));
        let backing = match &options.backing {
            Some(BlockdevRefOrNull::Null) => None,
            Some(BlockdevRefOrNull::Reference(name)) => Some(cx.find(name)?),
            Some(BlockdevRefOrNull::Definition(backing)) => {
                Some(cx.open_definition(backing, true).await?)
            }
            None => open_backing_from_header(cx, &file).await?,
        };
        let image = cx.add_child(ChildRole::File, ChildRoleFlags::IMAGE, file);
        let backing = backing.map(|b| cx.add_child(ChildRole::Backing, ChildRoleFlags::COW, b));
        Qcow2::open(
            image,
            backing.map(|b| -> Arc<dyn BlockChild> { b }),
            qcow2_options,
        )
        .await
    }
}

/// Reports corruption of node `name` as QEMU's `BLOCK_IMAGE_CORRUPTED`.
fn corruption_hook(events: &EventSink, name: &str) -> CorruptionHook {
    let events = events.clone();
    let name = name.to_string();
    Arc::new(move |corruption: &CorruptionEvent| {
        events(
            QmpEvent::BlockImageCorrupted(BlockImageCorruptedData {
                device: String::new(),
                node_name: Some(name.clone()),
                msg: corruption.message.clone(),
                offset: corruption.offset.map(saturating_i64),
                size: corruption.size.map(saturating_i64),
                fatal: corruption.fatal,
            })
            .into(),
        );
    })
}

/// Opens the backing file the image header names (relative names are
/// relative to the image's directory), in the format the header names or,
/// failing that, the one its first bytes show.
async fn open_backing_from_header(
    cx: &mut OpenContext<'_>,
    file: &Arc<Node>,
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
    cx.open_definition(&options, true)
        .await
        .map(Some)
        .map_err(|e| BlockError::new(e.kind, format!("Could not open backing file: {e}")))
}

/// The backing file's format, probed.
fn probe_format(path: &str) -> BlockResult<String> {
    crate::probe::probe_format(path)
        .map(str::to_owned)
        .map_err(|e| {
            BlockError::from_io(
                format!("Could not open backing file: Could not open '{path}'"),
                e,
            )
        })
}

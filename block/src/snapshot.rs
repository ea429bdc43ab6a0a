//! External snapshots, as QEMU's `blockdev-snapshot` and
//! `blockdev-snapshot-sync`: an overlay image takes a node as its backing
//! image and every user of the node (exports, parents) moves to the
//! overlay, in one drained section each step; new writes go to the
//! overlay and the node stays as it was at that moment.

use schema::block::BlockdevOptions;
use schema::job::{BlockdevSnapshot, BlockdevSnapshotSync, NewImageMode};
use serde_json::json;

use crate::driver::ChildRole;
use crate::error::{BlockResult, ErrorKind};
use crate::filename::display_filename;
use crate::graph::{generic, BlockGraph};

impl BlockGraph {
    /// `blockdev-snapshot`.
    pub async fn snapshot(&self, args: &BlockdevSnapshot) -> BlockResult<()> {
        let node = self.lookup(Some(&args.node), Some(&args.node))?;
        let overlay = self.lookup(Some(&args.overlay), Some(&args.overlay))?;
        if let Some(parent) = self.nodes().into_iter().find(|parent| {
            parent
                .children()
                .iter()
                .any(|edge| edge.role() == ChildRole::Backing && edge.points_to(&node))
        }) {
            return Err(generic(format!(
                "Node '{}' is busy: node is used as backing hd of '{}'",
                node.name(),
                parent.name()
            )));
        }
        if self.has_users(&overlay) && !std::sync::Arc::ptr_eq(&node, &overlay) {
            return Err(generic("The overlay is already in use"));
        }
        if overlay.child(ChildRole::Backing).is_some() {
            return Err(generic("The overlay already has a backing image"));
        }
        self.set_backing(overlay.name(), Some(node.name()))
            .await
            .map_err(|error| match error.kind {
                ErrorKind::NotSupported => generic("The overlay does not support backing images"),
                _ => error,
            })?;
        if let Err(error) = self.replace_node(node.name(), overlay.name()).await {
            let _ = self.set_backing(overlay.name(), None).await;
            return Err(error);
        }
        Ok(())
    }

    /// Undoes [`BlockGraph::snapshot`] (a transaction that failed later):
    /// the overlay's users use the node again and it loses its backing.
    pub async fn undo_snapshot(&self, args: &BlockdevSnapshot) -> BlockResult<()> {
        self.replace_node(&args.overlay, &args.node).await?;
        self.set_backing(&args.overlay, None).await
    }

    /// `blockdev-snapshot-sync`: creates the overlay's image (unless
    /// `mode=existing`) with the node as its backing file, opens it as
    /// `snapshot-node-name`, and takes the snapshot; returns what it did.
    pub async fn snapshot_sync(
        &self,
        args: &BlockdevSnapshotSync,
    ) -> BlockResult<BlockdevSnapshot> {
        let device = args.device.as_deref();
        let node = self.lookup(device, args.node_name.as_deref())?;
        let Some(name) = args.snapshot_node_name.as_deref() else {
            return Err(generic("New overlay node-name missing"));
        };
        if self.node(name).is_some() {
            return Err(generic("New overlay node-name already in use"));
        }
        let format = args.format.as_deref().unwrap_or("qcow2");
        if format != "qcow2" {
            return Err(generic(format!(
                "Snapshots in format '{format}' are not supported (only qcow2)"
            )));
        }
        if args.mode.unwrap_or_default() == NewImageMode::AbsolutePaths {
            let backing = display_filename(&node);
            let backing_format = node.driver().format_name();
            crate::create::create_image_file(
                self,
                &args.snapshot_file,
                "qcow2",
                node.size(),
                Some((&backing, backing_format)),
            )
            .await?;
        }
        let options: BlockdevOptions = schema::from_json(json!({
            "driver": format,
            "node-name": name,
            "backing": null,
            "file": {"driver": "file", "filename": args.snapshot_file},
        }))
        .map_err(|error| generic(error.desc))?;
        self.blockdev_add(&options).await?;
        let snapshot = BlockdevSnapshot {
            node: node.name().to_owned(),
            overlay: name.to_owned(),
        };
        if let Err(error) = self.snapshot(&snapshot).await {
            let _ = self.blockdev_del(name).await;
            return Err(error);
        }
        Ok(snapshot)
    }
}

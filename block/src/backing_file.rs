//! `change-backing-file`: another backing file name in the metadata of an
//! image of a chain, leaving the graph as it is (QEMU's
//! `qmp_change_backing_file`). The image's format is written with it, as
//! QEMU does.

use std::sync::Arc;

use crate::blockjob::check_root;
use crate::driver::ChildRole;
use crate::error::BlockResult;
use crate::graph::{generic, BlockGraph};
use crate::node::Node;
use crate::permissions::ChildRoleFlags;

impl BlockGraph {
    /// Names `backing_file` as the backing file of `image_node_name`, an
    /// image with a backing file in the chain under the root node
    /// `device`.
    pub async fn change_backing_file(
        &self,
        device: &str,
        image_node_name: &str,
        backing_file: &str,
    ) -> BlockResult<()> {
        let root = self.lookup(Some(device), Some(device))?;
        check_root(self, &root)?;
        let image = self.lookup(Some(""), Some(image_node_name))?;
        if image.child(ChildRole::Backing).is_none() {
            return Err(generic(
                "not allowing backing file change on an image without a backing file",
            ));
        }
        self.check_not_blocked(&root)?;
        if !chain_contains(&root, &image) {
            return Err(generic(format!(
                "'{device}' and image file are not in the same chain"
            )));
        }
        let format = image.driver().format_name();
        image
            .change_backing_file(Some(backing_file), Some(format))
            .await
            .map_err(|error| {
                generic(format!(
                    "Could not change backing file to '{backing_file}': {}",
                    error.message
                ))
            })
    }
}

/// Whether `image` is `top` or below it through filters and backing
/// files (QEMU's `bdrv_chain_contains`).
fn chain_contains(top: &Arc<Node>, image: &Arc<Node>) -> bool {
    let mut current = Some(top.clone());
    while let Some(node) = current {
        if Arc::ptr_eq(&node, image) {
            return true;
        }
        current = node
            .children()
            .iter()
            .find(|edge| {
                edge.flags().contains(ChildRoleFlags::FILTERED)
                    || edge.flags().contains(ChildRoleFlags::COW)
            })
            .map(|edge| edge.node());
    }
    false
}

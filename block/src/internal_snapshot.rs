//! Internal snapshots, as QEMU's `blockdev-snapshot-internal-sync` and
//! `blockdev-snapshot-delete-internal-sync`: the checks and messages of a
//! root node's snapshot, taken or deleted by its format driver while the
//! node is drained (only qcow2 has them).

use schema::info::SnapshotInfo;

use crate::blockjob::check_root;
use crate::error::BlockResult;
use crate::graph::{generic, BlockGraph};

impl BlockGraph {
    /// Takes internal snapshot `name` of the root node `device`.
    pub async fn snapshot_internal(&self, device: &str, name: &str) -> BlockResult<()> {
        let node = self.lookup(Some(device), Some(device))?;
        check_root(self, &node)?;
        self.check_not_blocked(&node)?;
        if node.is_read_only() {
            return Err(generic(format!("Device '{device}' is read only")));
        }
        let Some(snapshots) = node.driver().snapshots() else {
            return Err(generic(format!(
                "Block format '{}' used by device '{device}' does not support internal snapshots",
                node.driver().format_name()
            )));
        };
        if name.is_empty() {
            return Err(generic("Name is empty"));
        }
        if snapshots.iter().any(|snapshot| snapshot.name == name) {
            return Err(generic(format!(
                "Snapshot with name '{name}' already exists on device '{device}'"
            )));
        }
        let _drained = self.drained(std::slice::from_ref(&node)).await;
        node.driver().snapshot_create(name).await
    }

    /// Reads node `node_name` as its internal snapshot `id`/`name` from now
    /// on (qemu-nbd's `--load-snapshot`): an identifier given alone
    /// (`id_or_name`) is tried as an id, then as a name, as QEMU does.
    pub async fn load_snapshot(
        &self,
        node_name: &str,
        id: Option<&str>,
        name: Option<&str>,
    ) -> BlockResult<()> {
        let node = self.lookup(None, Some(node_name))?;
        let _drained = self.drained(std::slice::from_ref(&node)).await;
        node.driver().snapshot_load_tmp(id, name).await
    }

    /// Deletes the internal snapshot of root node `device` that has `id`
    /// and/or `name`; returns it.
    pub async fn snapshot_delete_internal(
        &self,
        device: &str,
        id: Option<&str>,
        name: Option<&str>,
    ) -> BlockResult<SnapshotInfo> {
        let node = self.lookup(Some(device), Some(device))?;
        check_root(self, &node)?;
        if id.is_none() && name.is_none() {
            return Err(generic("Name or id must be provided"));
        }
        self.check_not_blocked(&node)?;
        let Some(snapshots) = node.driver().snapshots() else {
            return Err(generic(
                "Failed to get a snapshot list: Operation not supported",
            ));
        };
        let found = snapshots.iter().any(|snapshot| {
            id.is_none_or(|id| snapshot.id == id) && name.is_none_or(|name| snapshot.name == name)
        });
        if !found {
            return Err(generic(format!(
                "Snapshot with id '{}' and name '{}' does not exist on device '{device}'",
                id.unwrap_or("null"),
                name.unwrap_or("null")
            )));
        }
        let _drained = self.drained(std::slice::from_ref(&node)).await;
        node.driver().snapshot_delete(id, name).await
    }
}

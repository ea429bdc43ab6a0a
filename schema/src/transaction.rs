//! `transaction`: several actions that succeed or fail together, as in
//! QEMU's `qapi/transaction.json`.

use crate::introspect::Introspect;
use serde::{Deserialize, Serialize};

use crate::bitmap::{BlockDirtyBitmap, BlockDirtyBitmapAdd, BlockDirtyBitmapMerge};
use crate::de::union::qapi_union;
use crate::job::{BlockdevBackupArgs, BlockdevSnapshot, BlockdevSnapshotSync};

/// An action's arguments, under `data` (QAPI's `...Wrapper` types).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct ActionData<T> {
    pub data: T,
}

/// `abort`'s arguments: none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct Abort {}

/// `drive-backup` (`DriveBackup`): a backup to an image it creates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct DriveBackup {
    pub job_id: Option<String>,
    pub device: String,
    pub target: String,
    pub format: Option<String>,
    pub sync: crate::job::MirrorSyncMode,
    pub mode: Option<crate::job::NewImageMode>,
    pub speed: Option<i64>,
    pub bitmap: Option<String>,
    pub bitmap_mode: Option<crate::job::BitmapSyncMode>,
    pub compress: Option<bool>,
    pub on_source_error: Option<crate::job::BlockdevOnError>,
    pub on_target_error: Option<crate::job::BlockdevOnError>,
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
    pub filter_node_name: Option<String>,
    pub discard_source: Option<bool>,
    #[introspect(features("unstable"))]
    pub x_perf: Option<crate::job::BackupPerf>,
}

/// `blockdev-snapshot-internal-sync`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct BlockdevSnapshotInternal {
    pub device: String,
    pub name: String,
}

/// `blockdev-snapshot-delete-internal-sync`: a snapshot by `id`, `name`
/// or both.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevSnapshotDeleteInternal {
    pub device: String,
    pub id: Option<String>,
    pub name: Option<String>,
}

qapi_union! {
    /// One action of a transaction.
    pub struct TransactionAction {
    }
    /// What the action does.
    discriminator "type" => pub action: TransactionActionKind {
        "abort" => Abort(ActionData<Abort>),
        "block-dirty-bitmap-add" => BitmapAdd(ActionData<BlockDirtyBitmapAdd>),
        "block-dirty-bitmap-remove" => BitmapRemove(ActionData<BlockDirtyBitmap>),
        "block-dirty-bitmap-clear" => BitmapClear(ActionData<BlockDirtyBitmap>),
        "block-dirty-bitmap-enable" => BitmapEnable(ActionData<BlockDirtyBitmap>),
        "block-dirty-bitmap-disable" => BitmapDisable(ActionData<BlockDirtyBitmap>),
        "block-dirty-bitmap-merge" => BitmapMerge(ActionData<BlockDirtyBitmapMerge>),
        "blockdev-backup" => BlockdevBackup(ActionData<BlockdevBackupArgs>),
        "blockdev-snapshot" => BlockdevSnapshot(ActionData<BlockdevSnapshot>),
        "blockdev-snapshot-internal-sync" => BlockdevSnapshotInternalSync(ActionData<BlockdevSnapshotInternal>),
        "blockdev-snapshot-sync" => BlockdevSnapshotSync(ActionData<BlockdevSnapshotSync>),
        "drive-backup" => DriveBackup(ActionData<DriveBackup>) features ["deprecated"],
    }
}

/// When the jobs a transaction starts complete (`ActionCompletionMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum ActionCompletionMode {
    #[default]
    Individual,
    Grouped,
}

/// `properties` of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct TransactionProperties {
    pub completion_mode: Option<ActionCompletionMode>,
}

/// `transaction`.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
pub struct TransactionArgs {
    pub actions: Vec<TransactionAction>,
    pub properties: Option<TransactionProperties>,
}

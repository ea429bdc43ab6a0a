//! The block job commands and what they report, as in QEMU's
//! `qapi/block-core.json` and `qapi/job.json`: `block-job-*`,
//! `blockdev-mirror`, `block-stream`, `block-commit`, the error policies
//! and `query-block-jobs`. (`query-jobs` and the job status and type live
//! with `blockdev-create` in [`crate::create`].)

use crate::introspect::{variants, Empty, EnumValues, Introspect, ObjectMembers, SchemaBuilder};
use serde::{Deserialize, Serialize};

use crate::create::{JobStatus, JobType};
use crate::de::union::qapi_union;

/// What a job does when an I/O request fails (`BlockdevOnError`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockdevOnError {
    #[default]
    Report,
    Ignore,
    Enospc,
    Stop,
    Auto,
}

/// A block job's I/O status (`BlockDeviceIoStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum IoStatus {
    Ok,
    Failed,
    Nospace,
}

/// What a mirror copies (`MirrorSyncMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorSyncMode {
    Top,
    Full,
    None,
    Incremental,
    Bitmap,
}

/// How a mirror treats guest writes (`MirrorCopyMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorCopyMode {
    #[default]
    Background,
    WriteBlocking,
}

/// One element of `query-block-jobs` (`BlockJobInfo`), without the
/// members a job type adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobInfo {
    #[serde(rename = "type")]
    pub job_type: JobType,
    pub device: String,
    pub len: i64,
    pub offset: i64,
    pub busy: bool,
    pub paused: bool,
    pub speed: i64,
    pub io_status: IoStatus,
    pub ready: bool,
    pub status: JobStatus,
    pub auto_finalize: bool,
    pub auto_dismiss: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a mirror job adds to its `query-block-jobs` row
/// (`BlockJobInfoMirror`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobInfoMirror {
    pub actively_synced: bool,
}

/// One element of `query-block-jobs`: the common members and what the
/// job's type adds (a union on `type`; only mirror adds any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockJobInfoRow {
    #[serde(flatten)]
    pub info: BlockJobInfo,
    #[serde(flatten)]
    pub mirror: Option<BlockJobInfoMirror>,
}

impl Introspect for BlockJobInfoRow {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        schema.flat_union::<Self>(&[], BlockJobInfo::members, "type", |schema| {
            let types: Vec<String> = JobType::VALUES
                .iter()
                .map(|&case| match case {
                    "mirror" => BlockJobInfoMirror::introspect(schema),
                    _ => Empty::introspect(schema),
                })
                .collect();
            variants(JobType::VALUES, types)
        })
    }
}

/// `block-job-pause`, `block-job-resume`, `block-job-complete`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobDeviceArgs {
    pub device: String,
}

/// `block-job-cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobCancelArgs {
    pub device: String,
    pub force: Option<bool>,
}

/// `block-job-set-speed`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobSetSpeedArgs {
    pub device: String,
    pub speed: i64,
}

/// `block-job-change` options of a mirror.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobChangeOptionsMirror {
    pub copy_mode: MirrorCopyMode,
}

/// A job type whose options cannot change: no members.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct NoJobOptions {}

qapi_union! {
    /// `block-job-change`: the job and its type's new options.
    pub struct BlockJobChangeOptions {
        pub id: String,
    }
    /// The job's type.
    discriminator "type" => pub options: BlockJobChangeType {
        "commit" => Commit(NoJobOptions),
        "stream" => Stream(NoJobOptions),
        "mirror" => Mirror(BlockJobChangeOptionsMirror),
        "backup" => Backup(NoJobOptions),
        "create" => Create(NoJobOptions),
        "amend" => Amend(NoJobOptions),
        "snapshot-load" => SnapshotLoad(NoJobOptions),
        "snapshot-save" => SnapshotSave(NoJobOptions),
        "snapshot-delete" => SnapshotDelete(NoJobOptions),
    }
}

/// `blockdev-mirror`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevMirrorArgs {
    pub job_id: Option<String>,
    pub device: String,
    pub target: String,
    pub replaces: Option<String>,
    pub sync: MirrorSyncMode,
    pub speed: Option<i64>,
    pub granularity: Option<u32>,
    pub buf_size: Option<i64>,
    pub on_source_error: Option<BlockdevOnError>,
    pub on_target_error: Option<BlockdevOnError>,
    pub filter_node_name: Option<String>,
    pub copy_mode: Option<MirrorCopyMode>,
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
}

/// `block-stream`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockStreamArgs {
    pub job_id: Option<String>,
    pub device: String,
    pub base: Option<String>,
    pub base_node: Option<String>,
    pub backing_file: Option<String>,
    pub backing_mask_protocol: Option<bool>,
    pub bottom: Option<String>,
    pub speed: Option<i64>,
    pub on_error: Option<BlockdevOnError>,
    pub filter_node_name: Option<String>,
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
}

/// `block-commit`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockCommitArgs {
    pub job_id: Option<String>,
    pub device: String,
    pub base_node: Option<String>,
    #[introspect(features("deprecated"))]
    pub base: Option<String>,
    pub top_node: Option<String>,
    #[introspect(features("deprecated"))]
    pub top: Option<String>,
    pub backing_file: Option<String>,
    pub backing_mask_protocol: Option<bool>,
    pub speed: Option<i64>,
    pub on_error: Option<BlockdevOnError>,
    pub filter_node_name: Option<String>,
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
}

/// What a backup with a bitmap does to the bitmap when it ends
/// (`BitmapSyncMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BitmapSyncMode {
    OnSuccess,
    Never,
    Always,
}

/// `x-perf` of a backup (`BackupPerf`): `max-workers`, `max-chunk` and
/// `min-cluster-size` shape the copy; `use-copy-range` is a hint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BackupPerf {
    pub use_copy_range: Option<bool>,
    pub max_workers: Option<i64>,
    pub max_chunk: Option<i64>,
    pub min_cluster_size: Option<crate::Size>,
}

/// `blockdev-backup`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevBackupArgs {
    pub job_id: Option<String>,
    pub device: String,
    pub target: String,
    pub sync: MirrorSyncMode,
    pub speed: Option<i64>,
    pub bitmap: Option<String>,
    pub bitmap_mode: Option<BitmapSyncMode>,
    pub compress: Option<bool>,
    pub on_source_error: Option<BlockdevOnError>,
    pub on_target_error: Option<BlockdevOnError>,
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
    pub filter_node_name: Option<String>,
    pub discard_source: Option<bool>,
    #[introspect(features("unstable"))]
    pub x_perf: Option<BackupPerf>,
}

/// `blockdev-snapshot`: `overlay` (a node without a backing image) goes
/// above `node` for all its users.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevSnapshot {
    pub node: String,
    pub overlay: String,
}

/// How `blockdev-snapshot-sync` finds the overlay's image
/// (`NewImageMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum NewImageMode {
    Existing,
    #[default]
    AbsolutePaths,
}

/// `blockdev-snapshot-sync`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevSnapshotSync {
    pub device: Option<String>,
    pub node_name: Option<String>,
    pub snapshot_file: String,
    pub snapshot_node_name: Option<String>,
    pub format: Option<String>,
    pub mode: Option<NewImageMode>,
}

/// `drive-mirror`: a mirror to an image it creates (or opens, with
/// `mode=existing`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct DriveMirror {
    pub job_id: Option<String>,
    pub device: String,
    pub target: String,
    pub format: Option<String>,
    pub node_name: Option<String>,
    pub replaces: Option<String>,
    pub sync: MirrorSyncMode,
    pub mode: Option<NewImageMode>,
    pub speed: Option<i64>,
    pub granularity: Option<u32>,
    pub buf_size: Option<i64>,
    pub on_source_error: Option<BlockdevOnError>,
    pub on_target_error: Option<BlockdevOnError>,
    pub unmap: Option<bool>,
    pub copy_mode: Option<MirrorCopyMode>,
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
}

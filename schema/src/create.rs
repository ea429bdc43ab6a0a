//! `blockdev-create` and the job commands it runs under, as in QEMU's
//! `qapi/block-core.json` and `qapi/job.json`.

use crate::introspect::Introspect;
use serde::{Deserialize, Serialize};

use crate::block::BlockdevRef;
use crate::de::union::qapi_union;
use crate::size::Size;

/// Preallocation modes of image creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum PreallocMode {
    #[default]
    Off,
    Metadata,
    Falloc,
    Full,
}

/// The qcow2 on-disk version to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockdevQcow2Version {
    V2,
    V3,
}

/// The compression algorithm recorded in a qcow2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum Qcow2CompressionType {
    Zlib,
    Zstd,
}

/// `blockdev-create` options of the `file` driver.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevCreateOptionsFile {
    pub filename: String,
    pub size: Size,
    pub preallocation: Option<PreallocMode>,
    pub nocow: Option<bool>,
    pub extent_size_hint: Option<Size>,
}

/// `blockdev-create` options of the `qcow2` driver.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevCreateOptionsQcow2 {
    pub file: BlockdevRef,
    pub data_file: Option<BlockdevRef>,
    pub data_file_raw: Option<bool>,
    pub extended_l2: Option<bool>,
    pub size: Size,
    pub version: Option<BlockdevQcow2Version>,
    pub backing_file: Option<String>,
    pub backing_fmt: Option<String>,
    pub cluster_size: Option<Size>,
    pub preallocation: Option<PreallocMode>,
    pub lazy_refcounts: Option<bool>,
    pub refcount_bits: Option<i64>,
    pub compression_type: Option<Qcow2CompressionType>,
}

qapi_union! {
    /// What `blockdev-create` creates, by driver.
    pub struct BlockdevCreateOptions {
    }
    /// The driver whose image is created. Every driver `blockdev-add`
    /// knows is read, as in QEMU; those that create nothing are refused
    /// when the command runs.
    discriminator "driver" => pub driver: BlockdevCreateDriver {
        "blkdebug" => Blkdebug(NoCreateOptions),
        "compress" => Compress(NoCreateOptions),
        "copy-on-read" => CopyOnRead(NoCreateOptions),
        "file" => File(BlockdevCreateOptionsFile),
        "nbd" => Nbd(NoCreateOptions),
        "null-aio" => NullAio(NoCreateOptions),
        "null-co" => NullCo(NoCreateOptions),
        "preallocate" => Preallocate(NoCreateOptions),
        "qcow2" => Qcow2(BlockdevCreateOptionsQcow2),
        "raw" => Raw(NoCreateOptions),
        "throttle" => Throttle(NoCreateOptions),
    }
}

/// The (no) options of a driver that cannot create (or amend) images.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct NoCreateOptions {}

/// What `x-blockdev-amend` can change in a qcow2 image
/// (`BlockdevAmendOptionsQcow2`): only its encryption's keys.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevAmendOptionsQcow2 {
    /// `QCryptoBlockAmendOptions` (storaged has no encrypted images).
    pub encrypt: Option<serde_json::Value>,
}

qapi_union! {
    /// What `x-blockdev-amend` changes, by driver.
    pub struct BlockdevAmendOptions {
    }
    /// The node's driver.
    discriminator "driver" => pub driver: BlockdevAmendDriver {
        "blkdebug" => Blkdebug(NoCreateOptions),
        "compress" => Compress(NoCreateOptions),
        "copy-on-read" => CopyOnRead(NoCreateOptions),
        "file" => File(NoCreateOptions),
        "nbd" => Nbd(NoCreateOptions),
        "null-aio" => NullAio(NoCreateOptions),
        "null-co" => NullCo(NoCreateOptions),
        "preallocate" => Preallocate(NoCreateOptions),
        "qcow2" => Qcow2(BlockdevAmendOptionsQcow2),
        "raw" => Raw(NoCreateOptions),
        "throttle" => Throttle(NoCreateOptions),
    }
}

/// `x-blockdev-amend`.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevAmendArgs {
    pub job_id: String,
    pub node_name: String,
    pub options: BlockdevAmendOptions,
    pub force: Option<bool>,
}

/// QEMU's message for a driver that creates nothing.
pub const CREATE_UNSUPPORTED: &str = "Driver does not support blockdev-create";

impl BlockdevCreateDriver {
    /// Whether the driver creates images.
    pub fn creates(&self) -> bool {
        matches!(self, Self::File(_) | Self::Qcow2(_))
    }
}

/// `blockdev-create`.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevCreateArgs {
    pub job_id: String,
    pub options: BlockdevCreateOptions,
}

/// The arguments of the job commands that name one job (`job-dismiss`,
/// `job-cancel`, `job-finalize`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct JobIdArgs {
    pub id: String,
}

/// A job's state (`JobStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    Undefined,
    Created,
    Running,
    Paused,
    Ready,
    Standby,
    Waiting,
    Pending,
    Aborting,
    Concluded,
    Null,
}

/// The kind of a job (`JobType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum JobType {
    Commit,
    Stream,
    Mirror,
    Backup,
    Create,
    Amend,
    SnapshotLoad,
    SnapshotSave,
    SnapshotDelete,
}

/// One element of `query-jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct JobInfo {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: JobType,
    pub status: JobStatus,
    pub current_progress: i64,
    pub total_progress: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

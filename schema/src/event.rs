//! QMP events as values, and the sink through which the block layer and
//! the exports emit them without knowing about monitors. The monitor adds
//! the timestamp when it sends one.
//!
//! Every event the daemon sends is a variant of [`QmpEvent`] with a typed
//! payload, declared once in [`qmp_events!`]: its name on the wire, its
//! data, and its entry in `query-qmp-schema` all come from that one line.

use std::sync::Arc;

use serde::Serialize;

use crate::create::{JobStatus, JobType};
use crate::introspect::{Introspect, SchemaBuilder};

/// An event: its name and its data (`null` when it has none, and then left
/// out on the wire, as QEMU does).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub event: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

/// Where events go; cloned into every component that emits some.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

impl Event {
    pub fn new(event: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            event: event.into(),
            data,
        }
    }
}

/// Declares [`QmpEvent`]: one variant per event, with its wire name and
/// the type of its data.
macro_rules! qmp_events {
    ($( $(#[$meta:meta])* $name:literal => $variant:ident($data:ty), )+) => {
        /// An event the daemon sends, with its data.
        #[derive(Debug, Clone, PartialEq)]
        pub enum QmpEvent {
            $( $(#[$meta])* $variant($data), )+
        }

        impl QmpEvent {
            /// The event's name on the wire.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $name, )+
                }
            }

            /// Describes every event in `schema`.
            pub fn describe(schema: &mut SchemaBuilder) {
                $( schema.event::<$data>($name, &[]); )+
            }

            fn data(&self) -> serde_json::Value {
                let data = match self {
                    $( Self::$variant(data) => serde_json::to_value(data), )+
                };
                // Plain structs of strings and numbers always encode.
                data.unwrap_or_default()
            }
        }
    };
}

qmp_events! {
    /// A job changed status.
    "JOB_STATUS_CHANGE" => JobStatusChange(JobStatusChangeData),
    /// A block job is in sync and may be completed.
    "BLOCK_JOB_READY" => BlockJobReady(BlockJobProgress),
    /// A block job was cancelled.
    "BLOCK_JOB_CANCELLED" => BlockJobCancelled(BlockJobProgress),
    /// A block job ended, with its error if it failed.
    "BLOCK_JOB_COMPLETED" => BlockJobCompleted(BlockJobCompletedData),
    /// A block job waits for `job-finalize`.
    "BLOCK_JOB_PENDING" => BlockJobPending(BlockJobPendingData),
    /// A block job met an I/O error.
    "BLOCK_JOB_ERROR" => BlockJobError(BlockJobErrorData),
    /// An image's metadata was found corrupt.
    "BLOCK_IMAGE_CORRUPTED" => BlockImageCorrupted(BlockImageCorruptedData),
    /// An export is gone (after `block-export-del`, once its last client
    /// left).
    "BLOCK_EXPORT_DELETED" => BlockExportDeleted(BlockExportDeletedData),
    /// A write reached past a node's write threshold.
    "BLOCK_WRITE_THRESHOLD" => BlockWriteThreshold(crate::stats::BlockWriteThresholdData),
}

impl From<QmpEvent> for Event {
    fn from(event: QmpEvent) -> Self {
        Event::new(event.name(), event.data())
    }
}

impl QmpEvent {
    /// `BLOCK_EXPORT_DELETED` of export `id`.
    pub fn block_export_deleted(id: &str) -> Self {
        Self::BlockExportDeleted(BlockExportDeletedData { id: id.to_owned() })
    }
}

/// `JOB_STATUS_CHANGE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct JobStatusChangeData {
    pub id: String,
    pub status: JobStatus,
}

/// `BLOCK_JOB_READY` and `BLOCK_JOB_CANCELLED`: where a block job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockJobProgress {
    #[serde(rename = "type")]
    pub job_type: JobType,
    pub device: String,
    pub len: i64,
    pub offset: i64,
    pub speed: i64,
}

/// `BLOCK_JOB_COMPLETED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockJobCompletedData {
    #[serde(rename = "type")]
    pub job_type: JobType,
    pub device: String,
    pub len: i64,
    pub offset: i64,
    pub speed: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `BLOCK_JOB_PENDING`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockJobPendingData {
    #[serde(rename = "type")]
    pub job_type: JobType,
    pub id: String,
}

/// The kind of request that failed (`IoOperationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum IoOperationType {
    Read,
    Write,
}

/// What was done about an I/O error (`BlockErrorAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockErrorAction {
    Ignore,
    Report,
    Stop,
}

/// `BLOCK_JOB_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockJobErrorData {
    pub device: String,
    pub operation: IoOperationType,
    pub action: BlockErrorAction,
}

/// `BLOCK_IMAGE_CORRUPTED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockImageCorruptedData {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub msg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    pub fatal: bool,
}

/// `BLOCK_EXPORT_DELETED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockExportDeletedData {
    pub id: String,
}

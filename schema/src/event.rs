//! QMP events as values, and the sink through which the block layer and
//! the exports emit them without knowing about monitors. The monitor adds
//! the timestamp when it sends one.

use std::sync::Arc;

use serde::Serialize;

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

    /// `BLOCK_EXPORT_DELETED`: an export is gone (after `block-export-del`,
    /// once its last client left).
    pub fn block_export_deleted(id: &str) -> Self {
        Self::new("BLOCK_EXPORT_DELETED", serde_json::json!({ "id": id }))
    }
}

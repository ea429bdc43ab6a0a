//! The messages a monitor sends: greeting, replies, events. Each is built
//! as a JSON value and written in QEMU's form by [`crate::json::message`].

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use schema::event::Event;
use schema::QmpError;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::builtin::OFFERED_CAPABILITIES;
use crate::json;

/// What the greeting (and `query-version`) reports: QAPI's `VersionInfo`,
/// defined once in the schema.
pub use schema::info::{VersionInfo, VersionTriple};

fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `{"QMP": {"version": ..., "capabilities": [...]}}`.
pub(crate) fn greeting(version: &VersionInfo, pretty: bool) -> Bytes {
    let greeting = json!({
        "QMP": {
            "version": to_value(version),
            "capabilities": OFFERED_CAPABILITIES,
        }
    });
    json::message(&greeting, pretty).into()
}

/// `{"return": ..., "id": ...}` or `{"error": {"class": ..., "desc": ...}, "id": ...}`.
pub(crate) fn reply(result: Result<Value, QmpError>, id: Option<Value>, pretty: bool) -> Bytes {
    let mut reply = Map::new();
    match result {
        Ok(value) => {
            reply.insert("return".into(), value);
        }
        Err(error) => {
            reply.insert(
                "error".into(),
                json!({ "class": to_value(&error.class), "desc": error.desc }),
            );
        }
    }
    if let Some(id) = id {
        reply.insert("id".into(), id);
    }
    json::message(&Value::Object(reply), pretty).into()
}

/// `{"event": ..., "data": ..., "timestamp": {"seconds": ..., "microseconds": ...}}`
/// with the wall-clock time QEMU uses. `data: Value::Null` leaves `data`
/// out, as QEMU does for events without data.
pub(crate) fn event(event: &Event, at: SystemTime, pretty: bool) -> Bytes {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut message = Map::new();
    message.insert("event".into(), Value::from(event.event.as_str()));
    if !event.data.is_null() {
        message.insert("data".into(), event.data.clone());
    }
    message.insert(
        "timestamp".into(),
        json!({
            "seconds": since_epoch.as_secs(),
            "microseconds": since_epoch.subsec_micros(),
        }),
    );
    json::message(&Value::Object(message), pretty).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::ErrorClass;
    use std::time::Duration;

    fn text(bytes: Bytes) -> String {
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn greeting_like_qsd() {
        let version = VersionInfo {
            qemu: VersionTriple {
                major: 10,
                minor: 0,
                micro: 2,
            },
            package: "storaged 0.1.0".into(),
        };
        assert_eq!(
            text(greeting(&version, false)),
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \
             \"package\": \"storaged 0.1.0\"}, \"capabilities\": [\"oob\"]}}\r\n"
        );
    }

    #[test]
    fn replies_like_qsd() {
        assert_eq!(
            text(reply(Ok(json!({})), Some(json!(4)), false)),
            "{\"return\": {}, \"id\": 4}\r\n"
        );
        let error = QmpError::new(
            ErrorClass::CommandNotFound,
            "The command x has not been found",
        );
        assert_eq!(
            text(reply(Err(error), Some(json!("a")), false)),
            "{\"id\": \"a\", \"error\": {\"class\": \"CommandNotFound\", \
             \"desc\": \"The command x has not been found\"}}\r\n"
        );
    }

    #[test]
    fn events_like_qsd() {
        let at = UNIX_EPOCH + Duration::from_micros(1_795_242_051_729_488);
        assert_eq!(
            text(event(
                &schema::event::QmpEvent::block_export_deleted("e").into(),
                at,
                false
            )),
            "{\"timestamp\": {\"seconds\": 1795242051, \"microseconds\": 729488}, \
             \"event\": \"BLOCK_EXPORT_DELETED\", \"data\": {\"id\": \"e\"}}\r\n"
        );
        assert_eq!(
            text(event(&Event::new("STOP", Value::Null), at, false)),
            "{\"timestamp\": {\"seconds\": 1795242051, \"microseconds\": 729488}, \"event\": \"STOP\"}\r\n"
        );
    }
}

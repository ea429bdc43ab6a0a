//! Checks that a message is a well-formed QMP request, with QEMU's error
//! texts (`qapi/qmp-dispatch.c`, `qmp_dispatch_check_obj`).
//!
//! Members are checked in QEMU's member order, so a request with several
//! faults gets the same error from storaged as from QEMU.

use schema::QmpError;
use serde_json::{Map, Value};

use crate::json::member_order;

/// A request ready to run.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) id: Option<Value>,
    pub(crate) command: String,
    pub(crate) arguments: Map<String, Value>,
    /// Sent as `exec-oob` rather than `execute`.
    pub(crate) out_of_band: bool,
}

/// A request refused before it ran: its error, and the id to echo.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub(crate) id: Option<Value>,
    pub(crate) error: QmpError,
}

/// Whether QEMU's monitor would treat `message` as out-of-band: handled at
/// once when read, ahead of the in-band queue (`qmp_is_oob`).
pub(crate) fn is_out_of_band(message: &Value) -> bool {
    message
        .as_object()
        .is_some_and(|object| object.contains_key("exec-oob") && !object.contains_key("execute"))
}

/// Checks `message`; `allow_oob` is whether the client enabled the `oob`
/// capability (otherwise `exec-oob` is an unexpected member).
pub(crate) fn check(message: Value, allow_oob: bool) -> Result<Request, Rejected> {
    let Value::Object(mut object) = message else {
        return Err(Rejected {
            id: None,
            error: QmpError::generic("QMP input must be a JSON object"),
        });
    };
    let id = object.get("id").cloned();
    let reject = |desc: String| Rejected {
        id: id.clone(),
        error: QmpError::generic(desc),
    };
    let mut command_key: Option<&'static str> = None;
    for (key, value) in member_order::members(&object) {
        match key.as_str() {
            "execute" | "exec-oob" if key == "execute" || allow_oob => {
                if !value.is_string() {
                    return Err(reject(format!("QMP input member '{key}' must be a string")));
                }
                if let Some(earlier) = command_key {
                    return Err(reject(format!(
                        "QMP input member '{key}' clashes with '{earlier}'"
                    )));
                }
                command_key = Some(if key == "execute" {
                    "execute"
                } else {
                    "exec-oob"
                });
            }
            "arguments" if !value.is_object() => {
                return Err(reject(
                    "QMP input member 'arguments' must be an object".to_string(),
                ));
            }
            "arguments" | "id" => {}
            _ => return Err(reject(format!("QMP input member '{key}' is unexpected"))),
        }
    }
    let Some(command_key) = command_key else {
        return Err(reject("QMP input lacks member 'execute'".to_string()));
    };
    let out_of_band = command_key == "exec-oob";
    let command = match object.shift_remove(command_key) {
        Some(Value::String(command)) => command,
        _ => return Err(reject("QMP input lacks member 'execute'".to_string())),
    };
    let arguments = match object.shift_remove("arguments") {
        Some(Value::Object(arguments)) => arguments,
        _ => Map::new(),
    };
    Ok(Request {
        id,
        command,
        arguments,
        out_of_band,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desc(message: Value, allow_oob: bool) -> String {
        check(message, allow_oob)
            .map(|r| format!("ok {}", r.command))
            .unwrap_or_else(|r| r.error.desc)
    }

    #[test]
    fn qemu_texts() {
        assert_eq!(desc(json!([1]), false), "QMP input must be a JSON object");
        assert_eq!(
            desc(json!({"id": 1}), false),
            "QMP input lacks member 'execute'"
        );
        assert_eq!(
            desc(json!({"execute": 1}), false),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            desc(json!({"execute": "x", "arguments": []}), false),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            desc(json!({"execute": "x", "foo": 1}), false),
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            desc(json!({"exec-oob": "x"}), false),
            "QMP input member 'exec-oob' is unexpected"
        );
        assert_eq!(desc(json!({"exec-oob": "x"}), true), "ok x");
        assert_eq!(
            desc(json!({"execute": "x", "exec-oob": "y"}), true),
            "QMP input member 'execute' clashes with 'exec-oob'"
        );
        // QEMU meets "baz" first in its member order.
        assert_eq!(
            desc(
                json!({"exec-oob": "x", "foo": 1, "bar": 2, "baz": 3, "arguments": 7}),
                true
            ),
            "QMP input member 'baz' is unexpected"
        );
    }

    #[test]
    fn id_is_kept_for_errors() {
        let rejected = check(json!({"id": [1], "execute": 5}), false).unwrap_err();
        assert_eq!(rejected.id, Some(json!([1])));
    }
}

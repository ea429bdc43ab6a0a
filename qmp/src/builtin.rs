//! The commands the monitor answers itself: `qmp_capabilities` and
//! `query-commands`, with QEMU's argument checking and error texts.

use std::collections::HashSet;

use schema::{ErrorClass, QmpError};
use serde_json::{json, Map, Value};

use crate::json::member_order;

pub(crate) const QMP_CAPABILITIES: &str = "qmp_capabilities";
pub(crate) const QUERY_COMMANDS: &str = "query-commands";

/// The capabilities the greeting offers. QSD offers `oob` on every monitor
/// (its monitors run in their own I/O thread); so does storaged.
pub(crate) const OFFERED_CAPABILITIES: [&str; 1] = ["oob"];

/// The capabilities a `qmp_capabilities` request enables.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Enabled {
    pub(crate) oob: bool,
}

/// Checks the arguments of `qmp_capabilities` (`enable`: an optional list of
/// capability names) as QEMU's generated code does.
pub(crate) fn capabilities_to_enable(arguments: &Map<String, Value>) -> Result<Enabled, QmpError> {
    let mut enabled = Enabled::default();
    if let Some(list) = arguments.get("enable") {
        let Value::Array(names) = list else {
            return Err(invalid_type("enable", "array"));
        };
        for (index, name) in names.iter().enumerate() {
            let Value::String(name) = name else {
                return Err(invalid_type(&format!("enable[{index}]"), "string"));
            };
            if !OFFERED_CAPABILITIES.contains(&name.as_str()) {
                // QEMU names list elements "null" in this message.
                return Err(QmpError::generic(format!(
                    "Parameter 'null' does not accept value '{name}'"
                )));
            }
            enabled.oob |= name == "oob";
        }
    }
    reject_unexpected(arguments, &["enable"])?;
    Ok(enabled)
}

/// The error `qmp_capabilities` gives once negotiation is done.
pub(crate) fn already_negotiated() -> QmpError {
    QmpError::new(
        ErrorClass::CommandNotFound,
        "Capabilities negotiation is already complete, command ignored",
    )
}

/// The commands `query-commands` lists and the monitor accepts once
/// negotiation is done: the dispatcher's, plus the monitor's own.
#[derive(Debug)]
pub(crate) struct Commands {
    listed: Vec<String>,
    known: HashSet<String>,
}

impl Commands {
    pub(crate) fn new(mut listed: Vec<String>) -> Self {
        for own in [QUERY_COMMANDS, QMP_CAPABILITIES] {
            if !listed.iter().any(|name| name == own) {
                listed.push(own.to_string());
            }
        }
        let known = listed.iter().cloned().collect();
        Self { listed, known }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.known.contains(name)
    }

    /// Runs `query-commands`.
    pub(crate) fn query(&self, arguments: &Map<String, Value>) -> Result<Value, QmpError> {
        reject_unexpected(arguments, &[])?;
        Ok(Value::Array(
            self.listed
                .iter()
                .map(|name| json!({ "name": name }))
                .collect(),
        ))
    }
}

fn invalid_type(parameter: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{parameter}', expected: {expected}"
    ))
}

/// QEMU's "Parameter 'x' is unexpected" for the first member of `arguments`
/// that is not in `known`.
fn reject_unexpected(arguments: &Map<String, Value>, known: &[&str]) -> Result<(), QmpError> {
    match first_unexpected(arguments, known) {
        Some(name) => Err(QmpError::generic(format!(
            "Parameter '{name}' is unexpected"
        ))),
        None => Ok(()),
    }
}

/// Which unexpected member QEMU names. QEMU's input visitor copies the
/// members (in QDict order) into a GLib hash table, removes those it uses,
/// and names the first one left in table order. GLib (2.74, QSD's) starts
/// with 8 slots, places a key at `(g_str_hash(key) * 11) % 7` and probes
/// forward by 1, 2, 3... slots; that is reproduced exactly while the table
/// has not grown (up to 7 members). Larger argument objects are rare here
/// and get the first unexpected member in QDict order.
fn first_unexpected<'a>(arguments: &'a Map<String, Value>, known: &[&str]) -> Option<&'a str> {
    const SLOTS: usize = 8;
    const MODULUS: u32 = 7;
    let members = member_order::members(arguments);
    let unexpected = |name: &str| !known.contains(&name);
    if members.len() >= SLOTS {
        return members
            .into_iter()
            .map(|(name, _)| name.as_str())
            .find(|name| unexpected(name));
    }
    let mut slots: [Option<&str>; SLOTS] = [None; SLOTS];
    for (name, _) in members {
        let mut slot = (g_str_hash(name).wrapping_mul(11) % MODULUS) as usize;
        let mut step = 0;
        while slots[slot].is_some() {
            step += 1;
            slot = (slot + step) & (SLOTS - 1);
        }
        slots[slot] = Some(name);
    }
    slots.into_iter().flatten().find(|name| unexpected(name))
}

/// GLib's `g_str_hash` (djb2 over signed chars), with GLib's adjustment of
/// the reserved values 0 and 1.
fn g_str_hash(key: &str) -> u32 {
    let hash = key.bytes().fold(5381u32, |hash, byte| {
        hash.wrapping_mul(33).wrapping_add(byte as i8 as u32)
    });
    hash.max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn enable_error(value: Value) -> String {
        capabilities_to_enable(&args(value))
            .err()
            .map(|e| e.desc)
            .unwrap_or_default()
    }

    #[test]
    fn capability_arguments_like_qemu() {
        assert_eq!(
            capabilities_to_enable(&args(json!({"enable": ["oob", "oob"]}))).ok(),
            Some(Enabled { oob: true })
        );
        assert_eq!(
            capabilities_to_enable(&args(json!({"enable": []}))).ok(),
            Some(Enabled { oob: false })
        );
        assert_eq!(
            enable_error(json!({"enable": "oob"})),
            "Invalid parameter type for 'enable', expected: array"
        );
        assert_eq!(
            enable_error(json!({"enable": [null]})),
            "Invalid parameter type for 'enable[0]', expected: string"
        );
        assert_eq!(
            enable_error(json!({"enable": ["foo"]})),
            "Parameter 'null' does not accept value 'foo'"
        );
        assert_eq!(
            enable_error(json!({"bar": 1})),
            "Parameter 'bar' is unexpected"
        );
    }

    #[test]
    fn unexpected_parameter_as_qsd_names_it() {
        // Observed with qemu-storage-daemon 10.0.
        assert_eq!(
            enable_error(json!({"enable": ["oob"], "x": 1, "y": 2})),
            "Parameter 'y' is unexpected"
        );
        let commands = Commands::new(vec![]);
        let error = commands.query(&args(json!({"x": 1, "y": 2, "z": 3})));
        assert_eq!(
            error.err().map(|e| e.desc).unwrap_or_default(),
            "Parameter 'z' is unexpected"
        );
    }

    #[test]
    fn own_commands_are_listed_once() {
        let commands = Commands::new(vec!["quit".into(), QUERY_COMMANDS.into()]);
        assert_eq!(
            commands.query(&Map::new()).ok(),
            Some(
                json!([{"name": "quit"}, {"name": "query-commands"}, {"name": "qmp_capabilities"}])
            )
        );
    }
}

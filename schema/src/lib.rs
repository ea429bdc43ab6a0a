//! The schema: every option and command type of storaged, as plain serde
//! types. Both the command line (keyval or JSON) and QMP deserialize into
//! these, so there is exactly one definition of each option.
//!
//! Entry points: [`from_json`] for QMP arguments, [`parse_option`] for a
//! command-line option, [`keyval::parse`] for the keyval syntax alone.

pub mod bitmap;
pub mod block;
pub mod char;
pub mod create;
pub mod de;
pub mod error;
pub mod event;
pub mod export;
pub mod info;
pub mod introspect;
pub mod job;
mod json;
pub mod keyval;
pub mod metrics;
pub mod monitor;
pub mod object;
pub mod qemuopts;
pub mod qemuopts_help;
pub mod size;
pub mod sockets;
pub mod stats;
pub mod trace;
pub mod transaction;
pub mod value;

// The derive names this crate `::schema`, inside it too.
extern crate self as schema;

pub use error::{ErrorClass, QmpError};
pub use size::Size;
pub use value::{Origin, Value};

use serde::de::DeserializeOwned;

/// Deserializes QMP arguments (or any JSON) strictly, as QMP does: a JSON
/// string where an integer is expected is an error.
pub fn from_json<T: DeserializeOwned>(json: serde_json::Value) -> Result<T, QmpError> {
    Value::from_json(json).deserialize_into()
}

/// Parses a command-line option: the JSON form when it starts with `{`,
/// else keyval syntax with `implied_key` for a leading bare value.
pub fn parse_option<T: DeserializeOwned>(
    input: &str,
    implied_key: Option<&str>,
) -> Result<T, QmpError> {
    let value = if input.starts_with('{') {
        Value::from_json(json::parse_object(input)?)
    } else {
        keyval::parse(input, implied_key)?
    };
    value.deserialize_into()
}

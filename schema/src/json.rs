//! The JSON form of a command-line option (`--blockdev '{"driver":...}'`),
//! with QEMU's wording for the common parse errors.

use serde_json::error::Category;
use serde_json::Value as Json;

use crate::QmpError;

/// Parses `input` as one JSON object.
pub fn parse_object(input: &str) -> Result<Json, QmpError> {
    let value: Json = serde_json::from_str(input).map_err(|e| QmpError::generic(describe(&e)))?;
    match value {
        Json::Object(_) => Ok(value),
        _ => Err(QmpError::generic("JSON parse error, expecting an object")),
    }
}

fn describe(error: &serde_json::Error) -> String {
    match error.classify() {
        Category::Eof => "JSON parse error, premature EOI".to_owned(),
        Category::Syntax if error.to_string().starts_with("trailing characters") => {
            "Expecting at most one JSON value".to_owned()
        }
        _ => {
            let message = error.to_string();
            let without_position = message.split(" at line ").next().unwrap_or(&message);
            format!("JSON parse error, {without_position}")
        }
    }
}

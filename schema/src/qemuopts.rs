//! QEMU's older option syntax (`util/qemu-option.c`), which QSD still uses
//! for `--chardev`: flat `name=value` items, `,,` escaping a comma in
//! values, an implied name for a leading bare value, and deprecated
//! short-form booleans (`server` for `server=on`, `nowait` for `wait=off`)
//! that are accepted with a warning.
//!
//! `id` is special as in QEMU: the first `id=` wins, later ones are ignored,
//! and it must be an identifier.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::keyval::unescape_value;
use crate::value::Value;
use crate::QmpError;

/// Bare items that ask QEMU for help; storaged offers none.
const HELP_WORDS: [&str; 2] = ["help", "?"];

/// A parsed option and the deprecation warnings its syntax earned.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub options: T,
    /// Messages to print as warnings, one per deprecated item.
    pub warnings: Vec<String>,
}

/// Parses `input` and deserializes it into `T`; unknown names are
/// reported as QEMU does ("Invalid parameter 'x'").
pub fn parse<T: DeserializeOwned>(
    input: &str,
    implied_name: Option<&str>,
) -> Result<Parsed<T>, QmpError> {
    let (tree, warnings) = parse_tree(input, implied_name)?;
    Ok(Parsed {
        options: Value::from_qemu_opts(tree).deserialize_into()?,
        warnings,
    })
}

/// Deserializes flat `name`/`value` items into `T` as QemuOpts reads
/// them, as a group of a QEMU configuration file holds them (a later item
/// of the same name replaces an earlier one).
pub fn from_items<T: DeserializeOwned>(
    items: impl IntoIterator<Item = (String, String)>,
) -> Result<T, QmpError> {
    let tree: Map<String, Json> = items
        .into_iter()
        .map(|(name, value)| (name, Json::String(value)))
        .collect();
    Value::from_qemu_opts(Json::Object(tree)).deserialize_into()
}

fn parse_tree(input: &str, implied_name: Option<&str>) -> Result<(Json, Vec<String>), QmpError> {
    let mut items = Map::new();
    let mut warnings = Vec::new();
    let mut id: Option<String> = None;
    let mut rest = input;
    let mut implied_name = implied_name;
    while !rest.is_empty() {
        let item = next_item(rest, implied_name.take())?;
        rest = item.rest;
        warnings.extend(item.warning);
        if item.name == "id" {
            id.get_or_insert(item.value);
        } else {
            items.insert(item.name, Json::String(item.value));
        }
    }
    if let Some(id) = id {
        if !is_identifier(&id) {
            return Err(QmpError::generic("Parameter 'id' expects an identifier"));
        }
        items.insert("id".to_owned(), Json::String(id));
    }
    Ok((Json::Object(items), warnings))
}

struct Item<'a> {
    name: String,
    value: String,
    warning: Option<String>,
    rest: &'a str,
}

fn next_item<'a>(params: &'a str, implied_name: Option<&str>) -> Result<Item<'a>, QmpError> {
    let name_len = params.find(['=', ',']).unwrap_or(params.len());
    let (name, value, warning, rest) = if params[name_len..].starts_with('=') {
        let (value, rest) = unescape_value(&params[name_len + 1..]);
        (params[..name_len].to_owned(), value, None, rest)
    } else if let Some(implied) = implied_name {
        let (value, rest) = unescape_value(params);
        (implied.to_owned(), value, None, rest)
    } else {
        let flag = &params[..name_len];
        if HELP_WORDS.contains(&flag) {
            return Err(QmpError::generic("Help is not available for this option"));
        }
        let rest = params[name_len..].strip_prefix(',').unwrap_or("");
        let (name, value) = match flag.strip_prefix("no") {
            Some(negated) => (negated, "off"),
            None => (flag, "on"),
        };
        let advice = match name {
            "delay" => format!("nodelay={}", if value == "off" { "on" } else { "off" }),
            _ => format!("{name}={value}"),
        };
        let warning =
            format!("short-form boolean option '{flag}' deprecated\nPlease use {advice} instead");
        (name.to_owned(), value.to_owned(), Some(warning), rest)
    };
    Ok(Item {
        name,
        value,
        warning,
        rest,
    })
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

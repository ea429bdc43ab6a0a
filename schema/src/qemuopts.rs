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

/// Bare items that ask for help (QEMU's `is_help_option`).
const HELP_WORDS: [&str; 2] = ["help", "?"];

/// A parsed option and the deprecation warnings its syntax earned.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub options: T,
    /// Messages to print as warnings, one per deprecated item.
    pub warnings: Vec<String>,
}

/// What an option asks for: options, or (a bare `help` or `?` item) the
/// list of options, which [`crate::qemuopts_help`] prints.
#[derive(Debug, Clone, PartialEq)]
pub enum Request<T> {
    Options(Parsed<T>),
    /// The warnings are those of the items before `help`.
    Help {
        warnings: Vec<String>,
    },
}

/// Parses `input` and deserializes it into `T`; unknown names are
/// reported as QEMU does ("Invalid parameter 'x'"). An option that asks
/// for help is an error: the caller offers none.
pub fn parse<T: DeserializeOwned>(
    input: &str,
    implied_name: Option<&str>,
) -> Result<Parsed<T>, QmpError> {
    match parse_or_help(input, implied_name)? {
        Request::Options(parsed) => Ok(parsed),
        Request::Help { .. } => Err(QmpError::generic("Help is not available for this option")),
    }
}

/// Parses `input` as QEMU's `qemu_opts_parse_noisily` does: the `id` is
/// checked first, wherever it is; then the items in order, each checked
/// (name and value) before the next, until a bare `help` (or `?`) item,
/// which asks for help; the items after it are not checked.
pub fn parse_or_help<T: DeserializeOwned>(
    input: &str,
    implied_name: Option<&str>,
) -> Result<Request<T>, QmpError> {
    let items = split_items(input, implied_name);
    // The first `id` counts, later ones are ignored.
    let id = items.iter().find(|item| item.name == "id");
    if id.is_some_and(|id| !is_identifier(&id.value)) {
        return Err(QmpError::generic("Parameter 'id' expects an identifier"));
    }
    let help_at = items.iter().position(|item| item.help);
    let checked = &items[..help_at.unwrap_or(items.len())];
    let mut tree = Map::new();
    for item in checked.iter().filter(|item| item.name != "id") {
        tree.insert(item.name.clone(), Json::String(item.value.clone()));
    }
    if let Some(id) = id {
        tree.insert("id".to_owned(), Json::String(id.value.clone()));
    }
    let warnings: Vec<String> = checked
        .iter()
        .filter_map(|item| item.warning.clone())
        .collect();
    let options: T = Value::from_qemu_opts(Json::Object(tree)).deserialize_into()?;
    Ok(match help_at {
        Some(_) => Request::Help { warnings },
        None => Request::Options(Parsed { options, warnings }),
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

/// Every item of `input`, in order.
fn split_items(input: &str, implied_name: Option<&str>) -> Vec<Item> {
    let mut items = Vec::new();
    let mut rest = input;
    let mut implied_name = implied_name;
    while !rest.is_empty() {
        let (item, after) = next_item(rest, implied_name.take());
        items.push(item);
        rest = after;
    }
    items
}

/// One `name=value` item (or bare flag).
struct Item {
    name: String,
    value: String,
    /// Why the item's syntax is deprecated.
    warning: Option<String>,
    /// A bare `help` or `?`.
    help: bool,
}

/// The item at the start of `params`, and what follows it.
fn next_item<'a>(params: &'a str, implied_name: Option<&str>) -> (Item, &'a str) {
    let name_len = params.find(['=', ',']).unwrap_or(params.len());
    let item = |name: &str, value: String, warning, help| Item {
        name: name.to_owned(),
        value,
        warning,
        help,
    };
    if params[name_len..].starts_with('=') {
        let (value, rest) = unescape_value(&params[name_len + 1..]);
        return (item(&params[..name_len], value, None, false), rest);
    }
    if let Some(implied) = implied_name {
        let (value, rest) = unescape_value(params);
        return (item(implied, value, None, false), rest);
    }
    let flag = &params[..name_len];
    let rest = params[name_len..].strip_prefix(',').unwrap_or("");
    if HELP_WORDS.contains(&flag) {
        return (item(flag, "on".to_owned(), None, true), rest);
    }
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
    (item(name, value.to_owned(), Some(warning), false), rest)
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

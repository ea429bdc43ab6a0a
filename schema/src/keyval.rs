//! QEMU's `key=value,...` syntax (`util/keyval.c`), parsed into a JSON tree
//! of string leaves.
//!
//! - `,,` in a value stands for one comma;
//! - dotted keys build nested objects (`file.driver=file`);
//! - numeric fragments build lists (`bitmaps.0=a,bitmaps.1=b`), whose
//!   indexes must run from 0 without gaps;
//! - with an implied key, the first item may be a bare value
//!   (`nbd,id=e` is `type=nbd,id=e`); it ends at the first `,` or `=` and
//!   has no escapes;
//! - a key given twice keeps its last value, as in QEMU;
//! - a key used both as a value and as an object is an error;
//! - a bare `help` or `?` asks for help, which is refused.
//!
//! The leaves are converted by the target type later ([`crate::de`]).

use serde_json::{Map, Value as Json};

use crate::value::Value;
use crate::QmpError;

/// QEMU's limit: a key fragment must be shorter than 128 bytes.
pub const MAX_FRAGMENT_LEN: usize = 127;

/// How deeply keys may nest (`a.b.c...`). QEMU has no limit; this one keeps
/// recursion bounded and is far above any real option.
pub const MAX_KEY_DEPTH: usize = 64;

/// Bare items that ask QEMU for help; storaged offers none.
const HELP_WORDS: [&str; 2] = ["help", "?"];

/// Parses `input`; `implied_key` names the member a leading bare value
/// belongs to (`driver` for `--blockdev`, `type` for `--export`, ...).
pub fn parse(input: &str, implied_key: Option<&str>) -> Result<Value, QmpError> {
    let mut root = Map::new();
    let mut rest = input;
    let mut implied_key = implied_key;
    while !rest.is_empty() {
        rest = parse_one(&mut root, rest, implied_key.take())?;
    }
    Ok(Value::from_keyval(listify(root, "")?))
}

fn error(message: String) -> QmpError {
    QmpError::generic(message)
}

/// Parses one `key=value` (or bare implied value) at the start of
/// `params` into `root`; returns what follows its separating comma.
fn parse_one<'a>(
    root: &mut Map<String, Json>,
    params: &'a str,
    implied_key: Option<&str>,
) -> Result<&'a str, QmpError> {
    let key_len = params.find(['=', ',']).unwrap_or(params.len());
    let bare_value = key_len > 0 && !params[key_len..].starts_with('=');
    if bare_value && HELP_WORDS.contains(&&params[..key_len]) {
        return Err(error("Help is not available for this option".to_owned()));
    }
    let (key, implied_value) = match implied_key {
        Some(implied) if bare_value => (implied, Some(&params[..key_len])),
        _ => (&params[..key_len], None),
    };

    let (parent, last) = walk_key(root, key)?;

    let (value, rest) = match implied_value {
        Some(value) => {
            let after = &params[key_len..];
            (value.to_owned(), after.strip_prefix(',').unwrap_or(after))
        }
        None => {
            let after_key = params[key_len..]
                .strip_prefix('=')
                .ok_or_else(|| error(format!("Expected '=' after parameter '{key}'")))?;
            unescape_value(after_key)
        }
    };

    match parent.get_mut(last.as_str()) {
        Some(Json::Object(_)) => Err(inconsistent(key)),
        Some(slot) => {
            *slot = Json::String(value);
            Ok(rest)
        }
        None => {
            parent.insert(last, Json::String(value));
            Ok(rest)
        }
    }
}

/// Validates the fragments of `key` and creates the objects its inner
/// fragments name; returns the object that holds the last fragment and
/// that fragment (indexes in canonical decimal form).
fn walk_key<'m>(
    root: &'m mut Map<String, Json>,
    key: &str,
) -> Result<(&'m mut Map<String, Json>, String), QmpError> {
    let mut current = root;
    let mut previous: Option<String> = None;
    let mut position = 0;
    let mut depth = 0;
    loop {
        let rest = &key[position..];
        let fragment = if position > 0 && rest.starts_with(|c: char| c.is_ascii_digit()) {
            rest.bytes().take_while(u8::is_ascii_digit).count()
        } else {
            qapi_name_len(rest)
        };
        let after = &rest[fragment..];
        if fragment == 0 || !(after.is_empty() || after.starts_with('.')) {
            return Err(error(format!("Invalid parameter '{key}'")));
        }
        if fragment > MAX_FRAGMENT_LEN {
            let what = if position > 0 || !after.is_empty() {
                "Parameter fragment"
            } else {
                "Parameter"
            };
            return Err(error(format!("{what} '{}' is too long", &rest[..fragment])));
        }
        depth += 1;
        if depth > MAX_KEY_DEPTH {
            return Err(error(format!("Parameter '{key}' is nested too deeply")));
        }
        if let Some(inner) = previous.take() {
            current = object_at(current, inner, &key[..position - 1])?;
        }
        previous = Some(canonical_fragment(&rest[..fragment]));
        position += fragment;
        if after.is_empty() {
            break;
        }
        position += 1;
    }
    let last = previous.ok_or_else(|| error(format!("Invalid parameter '{key}'")))?;
    Ok((current, last))
}

/// The object at `map[fragment]`, created if absent; `shown` is the key up
/// to here, for the error when it is already a value.
fn object_at<'m>(
    map: &'m mut Map<String, Json>,
    fragment: String,
    shown: &str,
) -> Result<&'m mut Map<String, Json>, QmpError> {
    match map
        .entry(fragment)
        .or_insert_with(|| Json::Object(Map::new()))
    {
        Json::Object(inner) => Ok(inner),
        _ => Err(inconsistent(shown)),
    }
}

fn inconsistent(key: &str) -> QmpError {
    error(format!("Parameters '{key}.*' used inconsistently"))
}

/// List indexes are compared by value (`01` is `1`), capped like QEMU's.
fn canonical_fragment(fragment: &str) -> String {
    if fragment.starts_with(|c: char| c.is_ascii_digit()) {
        let index: u64 = fragment.parse().unwrap_or(u64::MAX);
        index.min(i32::MAX as u64).to_string()
    } else {
        fragment.to_owned()
    }
}

fn is_index(fragment: &str) -> bool {
    fragment.starts_with(|c: char| c.is_ascii_digit())
}

/// The length of the QAPI name at the start of `text` (QEMU's
/// `parse_qapi_name(text, false)`): an optional downstream `__RFQDN_`
/// prefix, a letter, then letters, digits, `-` and `_`.
fn qapi_name_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'_') {
        if bytes.get(1) != Some(&b'_') {
            return 0;
        }
        i = 2;
        while bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.')
        {
            i += 1;
        }
        if bytes.get(i) != Some(&b'_') {
            return 0;
        }
        i += 1;
    }
    if !bytes.get(i).is_some_and(u8::is_ascii_alphabetic) {
        return 0;
    }
    i += 1;
    while bytes
        .get(i)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        i += 1;
    }
    i
}

/// Reads a value up to the first single comma, turning `,,` into `,`;
/// returns the value and what follows the comma.
pub(crate) fn unescape_value(text: &str) -> (String, &str) {
    let mut value = String::new();
    let mut rest = text;
    loop {
        match rest.find(',') {
            None => {
                value.push_str(rest);
                return (value, "");
            }
            Some(comma) => {
                value.push_str(&rest[..comma]);
                let after = &rest[comma + 1..];
                match after.strip_prefix(',') {
                    Some(after_escape) => {
                        value.push(',');
                        rest = after_escape;
                    }
                    None => return (value, after),
                }
            }
        }
    }
}

/// Turns objects whose keys are all indexes into lists, innermost first.
/// `prefix` is the dotted key of `map` with a trailing dot.
fn listify(map: Map<String, Json>, prefix: &str) -> Result<Json, QmpError> {
    let mut has_index = false;
    let mut has_member = false;
    let mut converted = Map::new();
    for (key, value) in map {
        if is_index(&key) {
            has_index = true;
        } else {
            has_member = true;
        }
        let value = match value {
            Json::Object(inner) => listify(inner, &format!("{prefix}{key}."))?,
            leaf => leaf,
        };
        converted.insert(key, value);
    }
    if has_index && has_member {
        return Err(error(format!("Parameters '{prefix}*' used inconsistently")));
    }
    if !has_index {
        return Ok(Json::Object(converted));
    }
    let mut items = Vec::with_capacity(converted.len());
    for index in 0..converted.len() {
        match converted.remove(&index.to_string()) {
            Some(item) => items.push(item),
            None => return Err(error(format!("Parameter '{prefix}{index}' missing"))),
        }
    }
    Ok(Json::Array(items))
}

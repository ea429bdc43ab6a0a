//! The file name a node shows in `query-named-block-nodes`, derived as
//! QEMU's `bdrv_refresh_filename` does: a protocol node shows its file
//! name; a format over a protocol node shows the protocol's name unless its
//! own options change what it shows (`raw` with `offset`); a filter, and
//! anything else, shows `json:{...}` with the options that rebuild it,
//! printed in QEMU's QDict iteration order so that scripts comparing
//! strings keep working:
//! bucket by bucket, and inside a bucket the member inserted last first,
//! so members are inserted in the order QEMU inserts them (driver,
//! strong options, children).

use std::cmp::Reverse;

use serde_json::{Map, Value as Json};

use crate::driver::ChildRole;
use crate::node::Node;

/// The buckets of QEMU's QDict hash table (`QDICT_BUCKET_MAX`).
const QDICT_BUCKETS: u32 = 512;

/// The name shown for `node`.
pub fn display_filename(node: &Node) -> String {
    match exact_filename(node) {
        Some(name) => name,
        None => format!("json:{}", to_qemu_json(&Json::Object(full_options(node)))),
    }
}

/// A plain file name for the node, if one describes it fully (QEMU's
/// `exact_filename`).
pub(crate) fn exact_filename(node: &Node) -> Option<String> {
    let own = node.driver().filename();
    if !own.is_empty() {
        return Some(own);
    }
    // A filter never passes for its child, even over a protocol node
    // (QEMU's `is_filter` check): it shows `json:{...}`.
    if !node.driver().strong_options().is_empty() || node.driver().filtered().is_some() {
        return None;
    }
    let primary = node.child(ChildRole::File)?;
    if primary.driver().is_protocol() {
        exact_filename(&primary)
    } else {
        None
    }
}

/// The options that rebuild the node: driver, strong options, children
/// (QEMU's `full_open_options`). Backing children come from the image and
/// are left out, as QEMU does when they were not overridden.
fn full_options(node: &Node) -> Map<String, Json> {
    let mut options = Map::new();
    options.insert(
        "driver".to_string(),
        Json::String(node.driver().format_name().to_string()),
    );
    options.extend(node.driver().strong_options());
    for child in node.children().iter() {
        if child.role() != ChildRole::Backing {
            options.insert(
                child.role().name().to_string(),
                Json::Object(full_options(&child.node())),
            );
        }
    }
    options
}

/// Serializes like QEMU's `qobject_to_json`: `", "` and `": "` separators,
/// object members in QDict order (bucket, then the later inserted
/// first), non-ASCII escaped as `\uXXXX`.
pub fn to_qemu_json(value: &Json) -> String {
    let mut out = String::new();
    write_json(value, &mut out);
    out
}

fn write_json(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(&n.to_string()),
        Json::String(s) => write_string(s, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Json::Object(map) => {
            let mut keys: Vec<(usize, &String)> = map.keys().enumerate().collect();
            keys.sort_by_key(|&(inserted, key)| (qdict_bucket(key), Reverse(inserted)));
            out.push('{');
            for (i, (_, key)) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(key, out);
                out.push_str(": ");
                write_json(&map[key.as_str()], out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (' '..'\u{7f}').contains(&c) => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out.push('"');
}

/// The QDict bucket of a key (QEMU's `tdb_hash` modulo the bucket count).
pub(crate) fn qdict_bucket(key: &str) -> u32 {
    let mut value = 0x238F_13AFu32.wrapping_mul(key.len() as u32);
    for (i, byte) in key.bytes().enumerate() {
        value = value.wrapping_add(u32::from(byte) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345) % QDICT_BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_come_in_qdict_order() {
        let options = json!({
            "driver": "raw",
            "offset": 4096,
            "size": 1048576,
            "file": {"driver": "file", "filename": "/tmp/blk/disk.img"}
        });
        assert_eq!(
            to_qemu_json(&options),
            r#"{"offset": 4096, "driver": "raw", "size": 1048576, "file": {"driver": "file", "filename": "/tmp/blk/disk.img"}}"#
        );
        let null = json!({"driver": "null-co", "size": 1048576, "read-zeroes": true});
        assert_eq!(
            to_qemu_json(&null),
            r#"{"read-zeroes": true, "driver": "null-co", "size": 1048576}"#
        );
        // Members that share a bucket: the later inserted first.
        assert_eq!(
            to_qemu_json(&json!({"minor": 1, "micro": 2})),
            r#"{"micro": 2, "minor": 1}"#
        );
        assert_eq!(
            to_qemu_json(&json!({"micro": 2, "minor": 1})),
            r#"{"minor": 1, "micro": 2}"#
        );
    }

    #[test]
    fn strings_escape_like_qemu() {
        assert_eq!(
            to_qemu_json(&json!("a\"b\\c\nd\u{1}é😀")),
            r#""a\"b\\c\nd\u0001\u00E9\uD83D\uDE00""#
        );
    }
}

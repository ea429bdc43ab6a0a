//! The order in which QEMU lists the members of a JSON object.
//!
//! QEMU keeps objects in a `QDict`, a hash table of 512 buckets keyed by
//! `tdb_hash`, and walks it bucket by bucket; inside a bucket the member
//! inserted last comes first (`qobject/qdict.c`). That is why QMP replies
//! read `{"return": ..., "id": ...}` but `{"id": ..., "error": ...}`, and
//! events start with `"timestamp"`. QEMU checks request members in the same
//! order, which decides which error a request with several faults gets.
//! Ordering by the same rule makes storaged's output byte-identical to
//! QEMU's, given members inserted in QAPI schema order (serde_json keeps
//! insertion order: the `preserve_order` feature).

use serde_json::{Map, Value};

/// Number of buckets of a QEMU `QDict`.
const QDICT_BUCKETS: u32 = 512;

/// QEMU's `tdb_hash` (from gdbm via tdb).
fn tdb_hash(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(b) << (i * 5 % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
}

/// The bucket of `key` in a `QDict`.
fn bucket(key: &str) -> u32 {
    tdb_hash(key) % QDICT_BUCKETS
}

/// The members of `object` in the order QEMU would list them.
pub(crate) fn members(object: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut members: Vec<(usize, (&String, &Value))> = object.iter().enumerate().collect();
    members.sort_by_key(|&(inserted, (key, _))| (bucket(key), std::cmp::Reverse(inserted)));
    members.into_iter().map(|(_, member)| member).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(value: Value) -> Vec<String> {
        let Value::Object(object) = value else {
            unreachable!("test input is an object")
        };
        members(&object)
            .into_iter()
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[test]
    fn orders_as_qemu_writes_them() {
        assert_eq!(keys(json!({"return": 1, "id": 2})), ["return", "id"]);
        assert_eq!(keys(json!({"error": 1, "id": 2})), ["id", "error"]);
        assert_eq!(keys(json!({"class": 1, "desc": 2})), ["class", "desc"]);
        assert_eq!(
            keys(json!({"event": 1, "data": 2, "timestamp": 3})),
            ["timestamp", "event", "data"]
        );
        assert_eq!(
            keys(json!({"seconds": 1, "microseconds": 2})),
            ["seconds", "microseconds"]
        );
        assert_eq!(
            keys(json!({"version": 1, "capabilities": 2})),
            ["version", "capabilities"]
        );
        // "micro" and "minor" share a bucket: the later-inserted comes first.
        assert_eq!(
            keys(json!({"major": 1, "minor": 2, "micro": 3})),
            ["micro", "minor", "major"]
        );
    }
}

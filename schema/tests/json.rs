//! QMP-style (strict JSON) reading of block options.

use schema::block::{BlockdevDriver, BlockdevOptions, BlockdevRef};
use serde_json::json;

fn err<T: serde::de::DeserializeOwned + std::fmt::Debug>(v: serde_json::Value) -> String {
    schema::from_json::<T>(v).unwrap_err().desc
}

#[test]
fn null_co_node() {
    let o: BlockdevOptions = schema::from_json(
        json!({"driver": "null-co", "node-name": "n", "size": 4096, "read-only": true}),
    )
    .unwrap();
    assert_eq!(o.node_name.as_deref(), Some("n"));
    assert_eq!(o.read_only, Some(true));
    match o.driver {
        BlockdevDriver::NullCo(n) => assert_eq!(n.size, Some(4096)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn raw_over_inline_file() {
    let o: BlockdevOptions = schema::from_json(json!({
        "driver": "raw", "node-name": "r",
        "file": {"driver": "file", "filename": "/tmp/x", "cache": {"direct": true}}
    }))
    .unwrap();
    let BlockdevDriver::Raw(raw) = o.driver else {
        panic!()
    };
    let BlockdevRef::Definition(file) = raw.file else {
        panic!()
    };
    assert_eq!(file.cache.unwrap().direct, Some(true));
    assert_eq!(file.driver.name(), "file");
}

#[test]
fn strict_errors() {
    assert_eq!(
        err::<BlockdevOptions>(json!({"driver": "null-co", "read-only": "on"})),
        "Invalid parameter type for 'read-only', expected: boolean"
    );
    assert_eq!(
        err::<BlockdevOptions>(json!({"driver": "null-co", "foo": 1})),
        "Parameter 'foo' is unexpected"
    );
    assert_eq!(
        err::<BlockdevOptions>(json!({"driver": "xyz"})),
        "Parameter 'driver' does not accept value 'xyz'"
    );
    assert_eq!(
        err::<BlockdevOptions>(json!({"node-name": "x"})),
        "Parameter 'driver' is missing"
    );
    assert_eq!(
        err::<BlockdevOptions>(json!({"driver": "raw", "file": {"driver": "file"}})),
        "Parameter 'file.filename' is missing"
    );
    assert_eq!(
        err::<BlockdevOptions>(
            json!({"driver": "raw", "file": {"driver": "file", "filename": "x", "bar": 1}})
        ),
        "Parameter 'file.bar' is unexpected"
    );
    assert_eq!(
        err::<BlockdevOptions>(json!({"driver": "null-co", "size": "1G"})),
        "Invalid parameter type for 'size', expected: integer"
    );
    assert_eq!(
        err::<BlockdevOptions>(json!({"driver": "raw", "file": 1})),
        "Invalid parameter type for 'file', expected: BlockdevRef"
    );
    // An enum error names only the member, however deep (QEMU's input
    // visitor); a union's discriminator names its whole path.
    assert_eq!(
        err::<BlockdevOptions>(
            json!({"driver": "raw", "file": {"driver": "file", "filename": "x", "aio": "foo"}})
        ),
        "Parameter 'aio' does not accept value 'foo'"
    );
}

#[test]
fn blkdebug_rules_and_their_errors_as_qsd() {
    let o: BlockdevOptions = schema::from_json(json!({
        "driver": "blkdebug", "image": "f", "align": 4096, "max-transfer": 65536,
        "inject-error": [{"event": "read_aio", "errno": 28, "sector": 8, "once": true}],
        "set-state": [{"event": "none", "state": 1, "new_state": 2}],
        "take-child-perms": ["resize"]
    }))
    .unwrap();
    let BlockdevDriver::Blkdebug(b) = o.driver else {
        panic!()
    };
    let rule = &b.inject_error.unwrap()[0];
    assert_eq!(rule.event, schema::block::BlkdebugEvent::ReadAio);
    assert_eq!(
        (rule.errno, rule.sector, rule.once),
        (Some(28), Some(8), Some(true))
    );
    assert_eq!(b.set_state.unwrap()[0].new_state, 2);
    let blkdebug = |extra: serde_json::Value| {
        let mut options = json!({"driver": "blkdebug", "image": "f"});
        options
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        err::<BlockdevOptions>(options)
    };
    // QEMU names only the member in enum errors, and `null` for a list
    // element; other errors carry the whole path.
    for (extra, message) in [
        (
            json!({"inject-error": [{"event": "bogus"}]}),
            "Parameter 'event' does not accept value 'bogus'",
        ),
        (
            json!({"inject-error": [{"event": "none", "iotype": "x"}]}),
            "Parameter 'iotype' does not accept value 'x'",
        ),
        (
            json!({"take-child-perms": ["graph-mod"]}),
            "Parameter 'null' does not accept value 'graph-mod'",
        ),
        (
            json!({"inject-error": [{}]}),
            "Parameter 'inject-error[0].event' is missing",
        ),
        (
            json!({"inject-error": [{"event": "none", "bogus": 1}]}),
            "Parameter 'inject-error[0].bogus' is unexpected",
        ),
        (
            json!({"set-state": [{"event": "none", "new-state": 2}]}),
            "Parameter 'set-state[0].new_state' is missing",
        ),
        (
            json!({"max-transfer": 2147483648u64}),
            "Parameter 'max-transfer' expects int32_t",
        ),
    ] {
        assert_eq!(blkdebug(extra.clone()), message, "{extra}");
    }
}

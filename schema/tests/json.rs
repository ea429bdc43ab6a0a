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

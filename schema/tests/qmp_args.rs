//! QMP command arguments: strict JSON, with the messages QSD 10.0 gives
//! over QMP for the same input.

use schema::block::{BlockResizeArgs, BlockdevDelArgs, BlockdevOptions, QueryNamedBlockNodesArgs};
use schema::export::{
    BlockExportDelArgs, BlockExportOptions, BlockExportRemoveMode, NbdServerStartArgs,
};
use schema::object::ObjectOptions;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

fn err<T: DeserializeOwned + std::fmt::Debug>(args: Value) -> String {
    schema::from_json::<T>(args).unwrap_err().desc
}

#[test]
fn command_arguments() {
    assert_eq!(
        err::<BlockdevDelArgs>(json!({})),
        "Parameter 'node-name' is missing"
    );
    assert_eq!(
        err::<BlockdevDelArgs>(json!({"node-name": "zz", "foo": 1})),
        "Parameter 'foo' is unexpected"
    );
    assert_eq!(
        err::<BlockResizeArgs>(json!({"node-name": "n", "size": "1G"})),
        "Invalid parameter type for 'size', expected: integer"
    );
    assert_eq!(
        err::<QueryNamedBlockNodesArgs>(json!({"flat": "yes"})),
        "Invalid parameter type for 'flat', expected: boolean"
    );
    assert_eq!(
        err::<BlockdevOptions>(
            json!({"driver": "raw", "node-name": "y", "file": {"driver": "file"}})
        ),
        "Parameter 'file.filename' is missing"
    );
    assert_eq!(
        err::<BlockExportOptions>(
            json!({"type": "nbd", "id": "e2", "node-name": "n", "bitmaps": ["a", {"node": "n"}]})
        ),
        "Parameter 'bitmaps[1].name' is missing"
    );
    assert_eq!(
        err::<NbdServerStartArgs>(json!({"addr": {"type": "unix", "path": "/x"}})),
        "Parameter 'addr.data' is missing"
    );
    assert_eq!(
        err::<ObjectOptions>(
            json!({"qom-type": "throttle-group", "id": "t", "limits": {"bps-total": "x"}})
        ),
        "Invalid parameter type for 'limits.bps-total', expected: integer"
    );
    assert_eq!(
        err::<BlockdevOptions>(
            json!({"driver": "null-co", "node-name": "z", "cache": {"direct": true, "no-flush": "x"}})
        ),
        "Invalid parameter type for 'cache.no-flush', expected: boolean"
    );
    assert_eq!(
        err::<BlockExportDelArgs>(json!({"id": "e", "mode": "soft"})),
        "Parameter 'mode' does not accept value 'soft'"
    );
    assert_eq!(
        err::<BlockdevOptions>(
            json!({"driver": "raw", "node-name": "w", "file": "f", "size": 1.5})
        ),
        "Invalid parameter type for 'size', expected: integer"
    );
}

#[test]
fn valid_arguments() {
    let del: BlockExportDelArgs = schema::from_json(json!({"id": "e", "mode": "hard"})).unwrap();
    assert_eq!(del.mode, Some(BlockExportRemoveMode::Hard));
    let resize: BlockResizeArgs =
        schema::from_json(json!({"node-name": "n", "size": 1048576})).unwrap();
    assert_eq!(
        (resize.node_name.as_deref(), resize.size),
        (Some("n"), 1048576)
    );
    let query: QueryNamedBlockNodesArgs = schema::from_json(json!({})).unwrap();
    assert_eq!(query.flat, None);
}

#[test]
fn serde_json_reads_schema_types_directly_and_strictly() {
    let options: BlockdevOptions =
        serde_json::from_value(json!({"driver": "raw", "file": {"driver": "null-co"}})).unwrap();
    assert_eq!(options.driver.name(), "raw");
}

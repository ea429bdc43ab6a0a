//! The block node commands over QMP, with good and bad arguments:
//! `blockdev-add`, `blockdev-del`, `block_resize`,
//! `query-named-block-nodes`, `x-debug-query-block-graph`.

mod common;

use common::{error, ok, sparse_file, TestDaemon};
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

fn generic(desc: &str) -> (String, String) {
    ("GenericError".to_owned(), desc.to_owned())
}

/// The entry of `query-named-block-nodes` for `node_name`.
fn node<'a>(nodes: &'a Value, node_name: &str) -> &'a Value {
    nodes
        .as_array()
        .expect("a list")
        .iter()
        .find(|entry| entry["node-name"] == node_name)
        .unwrap_or_else(|| panic!("no node {node_name} in {nodes}"))
}

#[tokio::test]
async fn file_raw_and_null_nodes_are_added_queried_and_deleted() {
    let daemon = TestDaemon::start(&[]);
    let image = daemon.path("disk.img");
    sparse_file(&image, 4 * MIB);
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "file", "node-name": "f0", "filename": image}),
    )
    .await;
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "raw", "node-name": "r0", "file": "f0", "offset": 1048576}),
    )
    .await;
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "null-co", "node-name": "n0", "size": 65536, "read-only": true}),
    )
    .await;

    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    let names: Vec<&str> = nodes
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| entry["node-name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["n0", "r0", "f0"], "newest first, as QSD");
    let file = node(&nodes, "f0");
    assert_eq!(file["drv"], "file");
    assert_eq!(file["ro"], false);
    assert_eq!(file["file"], image.display().to_string());
    assert_eq!(file["image"]["virtual-size"], 4 * MIB);
    assert_eq!(file["image"]["format"], "file");
    assert_eq!(
        file["cache"],
        json!({"writeback": true, "direct": false, "no-flush": false})
    );
    assert_eq!(file["detect_zeroes"], "off");
    let raw = node(&nodes, "r0");
    assert_eq!(raw["drv"], "raw");
    assert_eq!(raw["image"]["virtual-size"], 3 * MIB);
    let null = node(&nodes, "n0");
    assert_eq!(null["drv"], "null-co");
    assert_eq!(null["ro"], true);
    assert_eq!(null["image"]["virtual-size"], 65536);

    let flat = ok(
        &mut client,
        "query-named-block-nodes",
        json!({"flat": true}),
    )
    .await;
    assert_eq!(flat.as_array().map(Vec::len), Some(3));

    let graph = ok(&mut client, "x-debug-query-block-graph", json!({})).await;
    let edges = graph["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1);
    let id_of = |name: &str| {
        graph["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|entry| entry["name"] == name)
            .map(|entry| entry["id"].clone())
            .expect("node in graph")
    };
    assert_eq!(edges[0]["name"], "file");
    assert_eq!(edges[0]["parent"], id_of("r0"));
    assert_eq!(edges[0]["child"], id_of("f0"));

    assert_eq!(
        error(&mut client, "blockdev-del", json!({"node-name": "f0"})).await,
        generic("Block device f0 is in use")
    );
    ok(&mut client, "blockdev-del", json!({"node-name": "r0"})).await;
    ok(&mut client, "blockdev-del", json!({"node-name": "f0"})).await;
    ok(&mut client, "blockdev-del", json!({"node-name": "n0"})).await;
    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    assert_eq!(nodes, json!([]));
}

#[tokio::test]
async fn blockdev_add_rejects_bad_arguments_with_qemu_messages() {
    let daemon = TestDaemon::start(&["--blockdev", "null-co,node-name=n0"]);
    let mut client = daemon.connect().await;
    let cases = [
        (
            json!({"driver": "null-co", "node-name": "n0"}),
            "Duplicate nodes with node-name='n0'",
        ),
        (
            json!({"driver": "null-co", "node-name": "n1", "foo": 1}),
            "Parameter 'foo' is unexpected",
        ),
        (
            json!({"driver": "null-co", "node-name": "n1", "size": "1M"}),
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            json!({"driver": "bogus", "node-name": "n1"}),
            "Parameter 'driver' does not accept value 'bogus'",
        ),
        (json!({"node-name": "n1"}), "Parameter 'driver' is missing"),
        (
            json!({"driver": "file", "node-name": "f0", "filename": "/nonexistent/x"}),
            "Could not open '/nonexistent/x': No such file or directory",
        ),
        (
            json!({"driver": "raw", "node-name": "r0", "file": "nope"}),
            "Cannot find device='nope' nor node-name='nope'",
        ),
    ];
    for (arguments, desc) in cases {
        assert_eq!(
            error(&mut client, "blockdev-add", arguments.clone()).await,
            generic(desc),
            "{arguments}"
        );
    }
    // Nothing was half-added.
    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn blockdev_del_errors() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    assert_eq!(
        error(&mut client, "blockdev-del", json!({"node-name": "zz"})).await,
        generic("Failed to find node with node-name='zz'")
    );
    assert_eq!(
        error(&mut client, "blockdev-del", json!({})).await,
        generic("Parameter 'node-name' is missing")
    );
    assert_eq!(
        error(&mut client, "blockdev-del", json!({"node-name": 5})).await,
        generic("Invalid parameter type for 'node-name', expected: string")
    );
}

#[tokio::test]
async fn block_resize_grows_the_file_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("disk.img");
    sparse_file(&image, MIB);
    let image_arg = format!("driver=file,node-name=f0,filename={}", image.display());
    let daemon = TestDaemon::start_in(dir, |_| vec!["--blockdev".into(), image_arg]);
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "block_resize",
        json!({"node-name": "f0", "size": 8 * MIB}),
    )
    .await;
    assert_eq!(std::fs::metadata(&image).expect("image").len(), 8 * MIB);
    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    assert_eq!(node(&nodes, "f0")["image"]["virtual-size"], 8 * MIB);
}

#[tokio::test]
async fn block_resize_errors() {
    let daemon = TestDaemon::start(&[
        "--blockdev",
        "null-co,node-name=n0,size=1048576",
        "--blockdev",
        "raw,node-name=r0,file=n0",
    ]);
    let mut client = daemon.connect().await;
    let cases = [
        (
            json!({"node-name": "r0", "size": 2 * MIB}),
            "Image format driver does not support resize",
        ),
        (
            json!({"node-name": "zz", "size": MIB}),
            "Cannot find device='' nor node-name='zz'",
        ),
        (
            json!({"device": "zz", "size": MIB}),
            "Cannot find device='zz' nor node-name=''",
        ),
        (
            json!({"node-name": "n0", "size": -1}),
            "Parameter 'size' expects a >0 size",
        ),
        (json!({"size": 1}), "Cannot find device='' nor node-name=''"),
        (json!({"node-name": "n0"}), "Parameter 'size' is missing"),
    ];
    for (arguments, desc) in cases {
        assert_eq!(
            error(&mut client, "block_resize", arguments.clone()).await,
            generic(desc),
            "{arguments}"
        );
    }
}

#[tokio::test]
async fn queries_reject_unknown_arguments() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    assert_eq!(
        error(&mut client, "x-debug-query-block-graph", json!({"x": 1})).await,
        generic("Parameter 'x' is unexpected")
    );
    assert_eq!(
        error(
            &mut client,
            "query-named-block-nodes",
            json!({"flat": "yes"})
        )
        .await,
        generic("Invalid parameter type for 'flat', expected: boolean")
    );
}

//! The node graph as QMP drives it: names, references, deletion refusals,
//! permission conflicts, resize, and the query results. Expected messages
//! and results are those of qemu-storage-daemon 10.0 for the same commands.

mod common;

use block::{BackendPerms, BlockGraph, Perm};
use common::{add, add_err, file_node, image, pattern, sparse_image};
use serde_json::json;

/// A graph with file node `f0` on `path` and raw node `r0` over it.
async fn raw_over_file(path: &std::path::Path) -> BlockGraph {
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", path)).await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "file": "f0"}),
    )
    .await;
    graph
}

#[tokio::test]
async fn names_are_checked_like_qemu() {
    let graph = BlockGraph::new();
    add(&graph, json!({"driver": "null-co", "node-name": "n0"})).await;
    let cases = [
        (
            json!({"driver": "null-co", "node-name": "n0"}),
            "Duplicate nodes with node-name='n0'",
        ),
        (
            json!({"driver": "null-co", "node-name": "1bad"}),
            "Invalid node-name: '1bad'",
        ),
        (
            json!({"driver": "null-co", "node-name": "#x"}),
            "Invalid node-name: '#x'",
        ),
        (
            json!({"driver": "null-co", "node-name": "abcdefghijabcdefghijabcdefghij12"}),
            "Node name too long",
        ),
        (
            json!({"driver": "null-co"}),
            "'node-name' must be specified for the root node",
        ),
        (
            json!({"driver": "raw", "node-name": "r", "file": "nonode"}),
            "Cannot find device='nonode' nor node-name='nonode'",
        ),
    ];
    for (options, message) in cases {
        assert_eq!(add_err(&graph, options).await, message);
    }
    add(
        &graph,
        json!({"driver": "null-co", "node-name": "abcdefghijabcdefghijabcdefghij1"}),
    )
    .await;
}

#[tokio::test]
async fn inline_children_get_automatic_names_and_die_with_their_parent() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 1 << 20);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "file": {"driver": "file", "filename": path}}),
    )
    .await;
    let names = graph.node_names();
    assert_eq!(names.len(), 2);
    assert_eq!(names[0], "r0", "the parent registers after its child");
    let auto = &names[1];
    assert!(
        auto.len() >= "#block000".len()
            && auto.starts_with("#block")
            && auto[6..].bytes().all(|b| b.is_ascii_digit()),
        "automatic name {auto}"
    );
    assert_eq!(
        graph.blockdev_del(auto).await.unwrap_err().message,
        format!("Node {auto} is not owned by the monitor")
    );
    graph.blockdev_del("r0").await.unwrap();
    assert!(graph.node_names().is_empty(), "the inline child closed too");
}

#[tokio::test]
async fn nodes_in_use_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 1 << 20);
    let graph = raw_over_file(&path).await;
    assert_eq!(
        graph.blockdev_del("f0").await.unwrap_err().message,
        "Block device f0 is in use"
    );
    assert_eq!(
        graph.blockdev_del("nope").await.unwrap_err().message,
        "Failed to find node with node-name='nope'"
    );
    let backend = graph.attach_backend("r0", true).unwrap();
    assert_eq!(
        graph.blockdev_del("r0").await.unwrap_err().message,
        "Node r0 is in use"
    );
    let clone = backend.clone();
    drop(backend);
    assert_eq!(
        graph.blockdev_del("r0").await.unwrap_err().message,
        "Node r0 is in use",
        "a clone still holds the node"
    );
    drop(clone);
    graph.blockdev_del("r0").await.unwrap();
    // The referenced child belongs to the monitor and stays.
    assert_eq!(graph.node_names(), ["f0"]);
    graph.blockdev_del("f0").await.unwrap();
}

#[tokio::test]
async fn conflicting_users_are_refused_with_qemus_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 1 << 20);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    let _export = graph.attach_backend("f0", true).unwrap();
    let exclusive = BackendPerms {
        perm: Perm::CONSISTENT_READ,
        shared: Perm::CONSISTENT_READ,
    };
    assert_eq!(
        graph.attach_backend_with("f0", exclusive).unwrap_err().message,
        "Permission conflict on node 'f0': permissions 'write' are both required by an unnamed block device (uses node 'f0' as 'root' child) and unshared by an unnamed block device (uses node 'f0' as 'root' child)."
    );
    // A reader that shares everything coexists with the writer.
    let reader = graph.attach_backend("f0", false).unwrap();
    assert!(reader.is_read_only());
}

#[tokio::test]
async fn resize_follows_block_resize() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let graph = raw_over_file(&path).await;
    add(&graph, json!({"driver": "null-co", "node-name": "n0"})).await;

    graph.resize(None, Some("r0"), 2 << 20).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
    assert_eq!(graph.node("f0").unwrap().size(), 2 << 20);
    assert_eq!(graph.node("r0").unwrap().size(), 2 << 20);

    let error = |r: block::BlockResult<()>| r.unwrap_err().message;
    assert_eq!(
        error(graph.resize(None, Some("f0"), -1).await),
        "Parameter 'size' expects a >0 size"
    );
    assert_eq!(
        error(graph.resize(None, Some("f0"), i64::MAX).await),
        "offset(9223372036854775807) exceeds maximum(9223372035781033984)"
    );
    assert_eq!(
        error(graph.resize(None, Some("zz"), 1).await),
        "Cannot find device='' nor node-name='zz'"
    );
    assert_eq!(
        error(graph.resize(Some("zz"), None, 1).await),
        "Cannot find device='zz' nor node-name=''"
    );
    assert_eq!(
        error(graph.resize(None, Some("n0"), 1 << 20).await),
        "Image format driver does not support resize"
    );

    // An export does not share resize.
    let _export = graph.attach_backend("r0", true).unwrap();
    assert_eq!(
        error(graph.resize(None, Some("r0"), 1 << 20).await),
        "Permission conflict on node 'r0': permissions 'resize' are both required by an unnamed block device (uses node 'r0' as 'root' child) and unshared by an unnamed block device (uses node 'r0' as 'root' child)."
    );
}

#[tokio::test]
async fn a_raw_window_unshares_resize_of_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 1 << 20);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "file": "f0", "offset": 512}),
    )
    .await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r5", "file": "f0", "size": 4096}),
    )
    .await;
    assert_eq!(
        graph.resize(None, Some("f0"), 2 << 20).await.unwrap_err().message,
        "Permission conflict on node 'f0': permissions 'resize' are both required by an unnamed block device (uses node 'f0' as 'root' child) and unshared by node 'r5' (uses node 'f0' as 'file' child)."
    );
    // Resizing r5 would resize f0 under r0 too.
    assert_eq!(
        graph.resize(None, Some("r5"), 8192).await.unwrap_err().message,
        "Permission conflict on node 'f0': permissions 'resize' are both required by node 'r5' (uses node 'f0' as 'file' child) and unshared by node 'r0' (uses node 'f0' as 'file' child)."
    );
    graph.blockdev_del("r0").await.unwrap();
    assert_eq!(
        graph
            .resize(None, Some("r5"), 8192)
            .await
            .unwrap_err()
            .message,
        "Cannot resize fixed-size raw disks"
    );
}

#[tokio::test]
async fn read_only_nodes_refuse_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "ro.img", 1 << 20);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "file", "node-name": "f2", "filename": path, "read-only": true}),
    )
    .await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r2", "file": "f2"}),
    )
    .await;
    assert_eq!(
        graph.attach_backend("f2", true).unwrap_err().message,
        "Cannot export read-only node as writable"
    );
    assert_eq!(
        graph.attach_backend("r2", true).unwrap_err().message,
        "Block node is read-only"
    );
    assert_eq!(
        graph
            .resize(None, Some("f2"), 2 << 20)
            .await
            .unwrap_err()
            .message,
        "Image is read-only"
    );
    graph.attach_backend("r2", false).unwrap();
}

#[tokio::test]
async fn generic_options_are_validated() {
    let graph = BlockGraph::new();
    assert_eq!(
        add_err(
            &graph,
            json!({"driver": "null-co", "node-name": "n1", "detect-zeroes": "unmap"})
        )
        .await,
        "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"
    );
    assert_eq!(
        add_err(
            &graph,
            json!({"driver": "null-co", "node-name": "n1", "force-share": true})
        )
        .await,
        "force-share=on can only be used with read-only images"
    );
    add(
        &graph,
        json!({"driver": "null-co", "node-name": "n9", "detect-zeroes": "unmap", "discard": "unmap"}),
    ).await;
    add(
        &graph,
        json!({"driver": "null-co", "node-name": "n2", "force-share": true, "read-only": true}),
    )
    .await;
}

#[tokio::test]
async fn named_block_nodes_match_qsd() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 64 << 20);
    let path_str = path.to_str().unwrap();
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "offset": 4096, "size": 1048576,
               "file": {"driver": "file", "filename": path, "cache": {"direct": true}}}),
    )
    .await;
    add(
        &graph,
        json!({"driver": "null-co", "node-name": "n0", "detect-zeroes": "on"}),
    )
    .await;
    add(
        &graph,
        json!({"driver": "null-co", "node-name": "n1", "size": 1048576, "read-zeroes": true, "latency-ns": 10}),
    ).await;
    let info = serde_json::to_value(graph.query_named_block_nodes(false)).unwrap();
    let nodes = info.as_array().unwrap();
    let names: Vec<&str> = nodes
        .iter()
        .map(|n| n["node-name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &names[..3],
        ["n1", "n0", "r0"],
        "newest first, children after parents"
    );

    let n1 = &nodes[0];
    assert_eq!(
        n1["file"],
        r#"json:{"read-zeroes": true, "driver": "null-co", "size": 1048576}"#
    );
    assert_eq!(
        n1["image"],
        json!({
            "virtual-size": 1048576,
            "filename": r#"json:{"read-zeroes": true, "driver": "null-co", "size": 1048576}"#,
            "format": "null-co",
            "actual-size": 0
        })
    );
    let n0 = &nodes[1];
    assert_eq!(
        *n0,
        json!({
            "file": "null-co://", "node-name": "n0", "ro": false, "drv": "null-co",
            "backing_file_depth": 0, "active": true, "encrypted": false,
            "detect_zeroes": "on", "bps": 0, "bps_rd": 0, "bps_wr": 0,
            "iops": 0, "iops_rd": 0, "iops_wr": 0,
            "image": {"virtual-size": 1073741824, "filename": "null-co://",
                      "format": "null-co", "actual-size": 0},
            "cache": {"writeback": true, "direct": false, "no-flush": false},
            "write_threshold": 0
        })
    );
    let raw_name = format!(
        r#"json:{{"offset": 4096, "driver": "raw", "size": 1048576, "file": {{"driver": "file", "filename": "{path_str}"}}}}"#
    );
    let r0 = &nodes[2];
    assert_eq!(r0["file"], raw_name);
    assert_eq!(r0["image"]["virtual-size"], 1048576);
    assert_eq!(r0["image"]["dirty-flag"], false);
    assert_eq!(r0["image"]["format"], "raw");
    assert!(r0["image"].get("format-specific").is_none());
    assert_eq!(r0["cache"]["direct"], false, "the parent's own cache mode");

    let file = &nodes[3];
    assert_eq!(file["file"], path_str);
    assert_eq!(file["drv"], "file");
    assert_eq!(file["cache"]["direct"], true);
    assert_eq!(
        file["image"]["format-specific"],
        json!({"type": "file", "data": {}})
    );
    assert_eq!(file["image"]["dirty-flag"], false);
    assert_eq!(file["image"]["virtual-size"], 64 << 20);
    assert!(file["image"]["actual-size"].is_u64());

    // A raw node without a window shows its file's name; one over a raw
    // node shows JSON.
    add(&graph, file_node("f0", &path)).await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "plain", "file": "f0"}),
    )
    .await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "nested", "file": "r0"}),
    )
    .await;
    let flat = serde_json::to_value(graph.query_named_block_nodes(true)).unwrap();
    assert_eq!(flat[1]["file"], path_str);
    assert_eq!(
        flat[0]["file"],
        format!(
            r#"json:{{"driver": "raw", "file": {}}}"#,
            &raw_name["json:".len()..]
        )
    );
}

#[tokio::test]
async fn debug_graph_matches_qsd() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 1 << 20);
    let graph = raw_over_file(&path).await;
    let _e0 = graph.attach_backend("r0", true).unwrap();
    let _e1 = graph.attach_backend("f0", true).unwrap();
    let writer = ["write", "consistent-read"];
    let shared = ["write-unchanged", "write", "consistent-read"];
    assert_eq!(
        serde_json::to_value(graph.debug_block_graph()).unwrap(),
        json!({
            "nodes": [
                {"id": 2, "type": "block-driver", "name": "r0"},
                {"id": 4, "type": "block-driver", "name": "f0"},
                {"id": 3, "type": "block-backend", "name": ""},
                {"id": 1, "type": "block-backend", "name": ""}
            ],
            "edges": [
                {"parent": 2, "child": 4, "name": "file", "perm": writer, "shared-perm": shared},
                {"parent": 3, "child": 4, "name": "root", "perm": writer, "shared-perm": shared},
                {"parent": 1, "child": 2, "name": "root", "perm": writer, "shared-perm": shared}
            ]
        })
    );
}

#[tokio::test]
async fn read_only_raw_shares_resize_and_takes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 1 << 20);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "file": "f0", "read-only": true}),
    )
    .await;
    let edges = serde_json::to_value(graph.debug_block_graph()).unwrap()["edges"].clone();
    assert_eq!(
        edges,
        json!([{"parent": 2, "child": 1, "name": "file", "perm": [],
                "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"]}])
    );
}

#[tokio::test]
async fn flush_all_reaches_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 1 << 20);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "cache": {"no-flush": true},
               "file": {"driver": "file", "filename": path}}),
    )
    .await;
    add(&graph, json!({"driver": "null-co", "node-name": "n0"})).await;
    graph.flush_all().await.unwrap();
    let info = graph.query_named_block_nodes(true);
    let no_flush: Vec<bool> = info.iter().map(|n| n.cache.no_flush).collect();
    assert_eq!(
        no_flush,
        [false, true, true],
        "the inline file inherits no-flush"
    );
}

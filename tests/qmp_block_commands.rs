//! The block node commands over QMP, with good and bad arguments:
//! `blockdev-add`, `blockdev-del`, `block_resize`,
//! `query-named-block-nodes`, `x-debug-query-block-graph`; and nodes
//! whose open and close wait for I/O, compared with qemu-storage-daemon.

mod common;

use std::process::Command;

use common::{error, ok, reply, sparse_file, storaged, TestDaemon};
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

/// A qcow2 image shrinks as in QSD: the clusters past the new end are
/// freed, and growing it again shows zeroes there, not the old data.
#[tokio::test]
async fn block_resize_shrinks_a_qcow2_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("disk.qcow2");
    let path = image.to_str().expect("UTF-8 path");
    common::tool("qemu-img", &["create", "-q", "-f", "qcow2", path, "4M"]);
    common::tool("qemu-io", &["-c", "write -P 7 0 4M", path]);
    let image_arg = format!(
        "driver=qcow2,node-name=q0,file.driver=file,file.filename={}",
        image.display()
    );
    let daemon = TestDaemon::start_in(dir, |_| vec!["--blockdev".into(), image_arg]);
    let mut client = daemon.connect().await;
    // 1 MiB and a half cluster: the cluster holding the new end stays.
    let small = MIB + 32 * 1024;
    ok(
        &mut client,
        "block_resize",
        json!({"node-name": "q0", "size": small}),
    )
    .await;
    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    assert_eq!(node(&nodes, "q0")["image"]["virtual-size"], small);
    ok(
        &mut client,
        "block_resize",
        json!({"node-name": "q0", "size": 8 * MIB}),
    )
    .await;
    ok(&mut client, "blockdev-del", json!({"node-name": "q0"})).await;

    let check = common::tool("qemu-img", &["check", path]);
    assert!(check.contains("No errors were found"), "{check}");
    // 1 MiB of data and its cluster past it: 17 data clusters.
    assert!(check.contains("17/128 = "), "{check}");
    common::tool(
        "qemu-io",
        &[
            "-c",
            "read -P 7 0 1M",
            "-c",
            &format!("read -P 0 {} {}", MIB + 64 * 1024, 7 * MIB - 64 * 1024),
            path,
        ],
    );
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

/// Adds, exports, reads and deletes nodes of a driver whose every request
/// waits (`null-co` with `latency-ns`), and opens a qcow2 whose header read
/// waits; returns the replies, and checks that `qemu-io` reads the export.
async fn waiting_nodes_session(daemon: &TestDaemon) -> Vec<Value> {
    let socket = daemon.path("nbd.sock");
    let mut client = daemon.connect().await;
    let steps = [
        (
            "blockdev-add",
            json!({"driver": "null-co", "node-name": "n", "latency-ns": 1_000_000, "read-zeroes": true}),
        ),
        (
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "q",
                   "file": {"driver": "null-co", "latency-ns": 1_000_000, "read-zeroes": true}}),
        ),
        (
            "nbd-server-start",
            json!({"addr": {"type": "unix", "data": {"path": socket}}}),
        ),
        (
            "block-export-add",
            json!({"type": "nbd", "id": "e", "node-name": "n"}),
        ),
    ];
    let mut replies = Vec::new();
    for (command, arguments) in steps {
        replies.push(reply(&mut client, command, arguments).await);
    }
    let uri = format!("nbd+unix:///n?socket={}", socket.display());
    let out = Command::new("qemu-io")
        .args([
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0 0 64k",
            "-c",
            "read -P 0 1M 4k",
            &uri,
        ])
        .output()
        .expect("qemu-io is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("fail") && text.contains("read 4096/4096"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client is gone, but the server may not have seen its socket
    // close yet: a safe delete refuses until it has.
    let in_use = json!({"error": {"class": "GenericError", "desc": "export 'e' still in use"}});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let deleted = reply(&mut client, "block-export-del", json!({"id": "e"})).await;
        if deleted != in_use || std::time::Instant::now() > deadline {
            replies.push(deleted);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let steps = [
        ("nbd-server-stop", json!({})),
        ("blockdev-del", json!({"node-name": "n"})),
        ("query-named-block-nodes", json!({})),
    ];
    for (command, arguments) in steps {
        replies.push(reply(&mut client, command, arguments).await);
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_wait_for_io_are_added_and_deleted_as_qemu_storage_daemon_does() {
    let qsd = TestDaemon::spawn(
        Command::new("qemu-storage-daemon"),
        tempfile::tempdir().expect("temp dir"),
        |_| Vec::new(),
    );
    let expected = waiting_nodes_session(&qsd).await;
    drop(qsd);
    let ours = TestDaemon::spawn(storaged(), tempfile::tempdir().expect("temp dir"), |_| {
        Vec::new()
    });
    let got = waiting_nodes_session(&ours).await;
    assert_eq!(got, expected);
    // The node was added, its header read failed as an image that is not
    // qcow2, and the node with latency was deleted, not left behind.
    assert_eq!(got[0], json!({"return": {}}));
    assert_eq!(
        got[1],
        json!({"error": {"class": "GenericError", "desc": "Image is not in qcow2 format"}})
    );
    assert_eq!(got[6], json!({"return": {}}));
    assert_eq!(got[7], json!({"return": []}));
}

/// `null-aio` nodes, added, reopened and listed.
async fn null_aio_session(daemon: &TestDaemon) -> Vec<Value> {
    let mut client = daemon.connect().await;
    let mut replies = Vec::new();
    for arguments in [
        json!({"driver": "null-aio", "node-name": "a"}),
        json!({"driver": "null-aio", "node-name": "b", "size": 4096, "read-zeroes": true,
               "latency-ns": 1000}),
    ] {
        replies.push(reply(&mut client, "blockdev-add", arguments).await);
    }
    replies.push(reply(&mut client, "query-named-block-nodes", json!({})).await);
    for options in [
        json!({"driver": "null-aio", "node-name": "a", "size": 4096}),
        json!({"driver": "null-co", "node-name": "a"}),
        json!({"driver": "null-aio", "node-name": "a", "read-only": true}),
    ] {
        let arguments = json!({"options": [options]});
        replies.push(reply(&mut client, "blockdev-reopen", arguments).await);
    }
    replies.push(
        reply(
            &mut client,
            "blockdev-add",
            json!({"driver": "null-aio",
        "node-name": "d", "read-zeroes": false, "latency-ns": 5}),
        )
        .await,
    );
    replies.push(reply(&mut client, "query-named-block-nodes", json!({})).await);
    replies
}

#[tokio::test]
async fn null_aio_nodes_are_what_qemu_storage_daemon_makes() {
    let qsd = TestDaemon::spawn(
        Command::new("qemu-storage-daemon"),
        tempfile::tempdir().expect("temp dir"),
        |_| Vec::new(),
    );
    let expected = null_aio_session(&qsd).await;
    drop(qsd);
    let ours = TestDaemon::start(&[]);
    let got = null_aio_session(&ours).await;
    assert_eq!(got, expected);
    assert_eq!(got[2]["return"][0]["drv"], "null-aio");
    assert_eq!(got[2]["return"][1]["file"], "null-aio://");
    // Reopened: its options stay (QSD's "Cannot change the option"), its
    // generic options change.
    assert_eq!(got[3]["error"]["desc"], "Cannot change the option 'size'");
    assert_eq!(got[5], json!({"return": {}}));
    assert_eq!(got[7]["return"][2]["ro"], true);
    // A given option shows in the file name even at its default value.
    assert_eq!(
        got[7]["return"][0]["file"],
        r#"json:{"read-zeroes": false, "driver": "null-aio"}"#
    );
    // QSD aborts on a negative size ("Unexpected error in
    // parse_option_size()"); storaged refuses it with the same words.
    let mut client = ours.connect().await;
    let refused = reply(
        &mut client,
        "blockdev-add",
        json!({"driver": "null-aio", "node-name": "c", "size": -1}),
    )
    .await;
    assert_eq!(
        refused["error"]["desc"],
        "Value '-1' is out of range for parameter 'size'"
    );
}

/// `x-blockdev-amend` (a qcow2 node amends nothing but its encryption's
/// keys; the job is not a block job) and `x-blockdev-change` (no driver
/// here takes children that way): every reply equal to QSD's.
#[tokio::test]
async fn amend_and_change_answer_as_qemu_storage_daemon() {
    let images = tempfile::tempdir().expect("temp dir");
    let image = images.path().join("a.qcow2");
    let path = image.to_str().expect("UTF-8").to_owned();
    let call =
        |command: &str, arguments: Value| json!({"execute": command, "arguments": arguments});
    let session = [
        call(
            "blockdev-add",
            json!({"driver": "file", "node-name": "qf", "filename": path}),
        ),
        call(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "q", "file": "qf"}),
        ),
        call(
            "x-blockdev-amend",
            json!({"job-id": "a", "node-name": "q", "options": {"driver": "qcow2"}}),
        ),
        call("query-block-jobs", json!({})),
        call(
            "x-blockdev-amend",
            json!({"job-id": "b", "node-name": "qf", "options": {"driver": "file"}}),
        ),
        call(
            "x-blockdev-amend",
            json!({"job-id": "b", "node-name": "q", "options": {"driver": "raw"}}),
        ),
        call(
            "x-blockdev-amend",
            json!({"job-id": "b", "node-name": "nope", "options": {"driver": "qcow2"}}),
        ),
        call("x-blockdev-change", json!({"parent": "q", "child": "file"})),
        call("x-blockdev-change", json!({"parent": "q", "node": "qf"})),
        call("x-blockdev-change", json!({"parent": "q"})),
        call(
            "x-blockdev-change",
            json!({"parent": "q", "child": "x", "node": "qf"}),
        ),
        call("x-blockdev-change", json!({"parent": "q", "child": "nope"})),
        call("x-blockdev-change", json!({"parent": "q", "node": "nope"})),
        call("x-blockdev-change", json!({"parent": "nope", "node": "qf"})),
    ];
    let mut replies = Vec::new();
    for program in [Command::new("qemu-storage-daemon"), storaged()] {
        common::tool("qemu-img", &["create", "-q", "-f", "qcow2", &path, "1M"]);
        replies.push(common::transcript(program, &session).await);
    }
    for ((request, theirs), mine) in session.iter().zip(&replies[0]).zip(&replies[1]) {
        assert_eq!(mine, theirs, "{request}");
    }
}

//! `block-commit` over a three-deep qcow2 chain (base <- mid <- top) with
//! real clients: the middle layer committed into the base while a libnbd
//! client writes and verifies through an export of the top, and the top
//! itself committed (an active commit that becomes ready and moves the
//! export to the base on `job-complete`). Afterwards the images read
//! exactly as the client's model (`qemu-img compare`), the headers name
//! the new backing files, and `qemu-img check` finds nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::jobs::{compare_raw, path, qcow2_chain, three_deep_chain, wait_event, Writer};
use common::{error, ok, tool, TestDaemon};
use serde_json::{json, Value};

/// The chain of [`three_deep_chain`], `top` exported as `disk`.
fn chain_daemon() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let options = three_deep_chain(dir.path());
    TestDaemon::start_in(dir, options)
}

fn header_backing(image: &Path) -> Option<String> {
    let info: Value = serde_json::from_str(&tool(
        "qemu-img",
        &["info", "-U", "--output=json", path(image)],
    ))
    .unwrap();
    info["backing-filename"].as_str().map(str::to_owned)
}

fn compare_with_model(daemon: &TestDaemon, image: &str) {
    compare_raw(&daemon.path("model.raw"), &daemon.path(image));
}

#[tokio::test]
async fn the_middle_layer_commits_into_the_base_under_writes() {
    let mut daemon = chain_daemon();
    let mut qmp = daemon.connect().await;
    let writer = Writer::start(&daemon).await;
    ok(
        &mut qmp,
        "block-commit",
        json!({"job-id": "c0", "device": "top", "top-node": "mid", "base-node": "base",
               "filter-node-name": "ctop"}),
    )
    .await;
    let completed = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    assert!(completed["data"].get("error").is_none(), "{completed}");
    assert_eq!(completed["data"]["type"], "commit");
    // The top now sits on the base; mid is nobody's child.
    ok(&mut qmp, "blockdev-del", json!({"node-name": "mid"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.stop(&daemon);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let top = daemon.path("top.qcow2");
    assert_eq!(
        header_backing(&top),
        Some(path(&daemon.path("base.qcow2")).to_owned())
    );
    // mid's file is no longer needed to read the top.
    std::fs::remove_file(daemon.path("mid.qcow2")).unwrap();
    compare_with_model(&daemon, "top.qcow2");
    tool("qemu-img", &["check", "-q", path(&top)]);
    tool(
        "qemu-img",
        &["check", "-q", path(&daemon.path("base.qcow2"))],
    );
}

#[tokio::test]
async fn an_active_commit_moves_the_export_to_the_base() {
    let mut daemon = chain_daemon();
    let mut qmp = daemon.connect().await;
    let writer = Writer::start(&daemon).await;
    ok(
        &mut qmp,
        "block-commit",
        json!({"job-id": "c1", "device": "top"}),
    )
    .await;
    let ready = wait_event(&mut qmp, "BLOCK_JOB_READY").await;
    assert_eq!(ready["data"]["type"], "commit");
    let jobs = ok(&mut qmp, "query-block-jobs", json!({})).await;
    assert!(jobs[0].get("actively-synced").is_none(), "{jobs}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    ok(&mut qmp, "job-complete", json!({"id": "c1"})).await;
    wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    let exports = ok(&mut qmp, "query-block-exports", json!({})).await;
    assert_eq!(exports[0]["node-name"], "base");
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.stop(&daemon);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    // Everything, the client's writes after the pivot included, is in
    // the base alone.
    compare_with_model(&daemon, "base.qcow2");
    tool(
        "qemu-img",
        &["check", "-q", path(&daemon.path("base.qcow2"))],
    );
}

#[tokio::test]
async fn refusals_are_qemus() {
    let daemon = chain_daemon();
    let mut qmp = daemon.connect().await;
    let cases = [
        (
            json!({"device": "top"}),
            "GenericError",
            "Invalid job ID ''",
        ),
        (
            json!({"job-id": "c", "device": "nosuch"}),
            "DeviceNotFound",
            "Device 'nosuch' not found",
        ),
        (
            json!({"job-id": "c", "device": "top", "top": "a", "top-node": "b"}),
            "GenericError",
            "'top-node' and 'top' are mutually exclusive",
        ),
        (
            json!({"job-id": "c", "device": "top", "base": "a", "base-node": "b"}),
            "GenericError",
            "'base-node' and 'base' are mutually exclusive",
        ),
        (
            json!({"job-id": "c", "device": "top", "top": "/nope"}),
            "GenericError",
            "Top image file /nope not found",
        ),
        (
            json!({"job-id": "c", "device": "top", "base": "/nope"}),
            "GenericError",
            "Can't find '/nope' in the backing chain",
        ),
        (
            json!({"job-id": "c", "device": "top", "base-node": "top"}),
            "GenericError",
            "cannot commit an image into itself",
        ),
        (
            json!({"job-id": "c", "device": "top", "top-node": "base", "base-node": "mid"}),
            "GenericError",
            "'mid' is not in this backing file chain",
        ),
        (
            json!({"job-id": "c", "device": "top", "backing-file": "x"}),
            "GenericError",
            "'backing-file' specified, but 'top' is the active layer",
        ),
        (
            json!({"job-id": "c", "device": "mid"}),
            "GenericError",
            "Need a root block node",
        ),
        (
            json!({"job-id": "c", "device": "top", "top-node": "mid", "speed": -1}),
            "GenericError",
            "Parameter 'speed' expects a non-negative value",
        ),
    ];
    for (arguments, class, message) in cases {
        let (got_class, desc) = error(&mut qmp, "block-commit", arguments).await;
        assert_eq!((got_class.as_str(), desc.as_str()), (class, message));
    }
    let nodes = ok(&mut qmp, "query-named-block-nodes", json!({"flat": true})).await;
    assert!(!nodes.to_string().contains("commit_top"), "{nodes}");
}

/// A chain opened the usual way (one `blockdev-add` with inline backing
/// images, which are read-only): a lower commit and then an active commit
/// write into the read-only base, which is read-write for the job's time
/// and read-only again after, as in QEMU.
#[tokio::test]
async fn commits_write_into_a_read_only_base_for_their_time() {
    let images = tempfile::tempdir().expect("temp dir");
    let (base, mid, top) = qcow2_chain(images.path(), "1M");
    tool("qemu-io", &["-c", "write -P 5 0 64k", path(&mid)]);
    tool("qemu-io", &["-c", "write -P 6 64k 64k", path(&top)]);
    let mut daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let file = |image: &Path| json!({"driver": "file", "filename": path(image)});
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "top", "file": file(&top),
               "backing": {"driver": "qcow2", "node-name": "mid", "file": file(&mid),
                           "backing": {"driver": "qcow2", "node-name": "base", "file": file(&base)}}}),
    )
    .await;
    let read_only = |nodes: &Value, name: &str| {
        nodes
            .as_array()
            .expect("a list")
            .iter()
            .find(|n| n["node-name"] == name)
            .map(|n| n["ro"].clone())
    };
    let nodes = ok(
        &mut client,
        "query-named-block-nodes",
        json!({"flat": true}),
    )
    .await;
    assert_eq!(read_only(&nodes, "base"), Some(json!(true)));

    ok(
        &mut client,
        "block-commit",
        json!({"job-id": "lower", "device": "top", "top-node": "mid", "base-node": "base"}),
    )
    .await;
    wait_event(&mut client, "BLOCK_JOB_COMPLETED").await;
    ok(
        &mut client,
        "block-commit",
        json!({"job-id": "active", "device": "top"}),
    )
    .await;
    wait_event(&mut client, "BLOCK_JOB_READY").await;
    ok(&mut client, "job-complete", json!({"id": "active"})).await;
    let completed = wait_event(&mut client, "BLOCK_JOB_COMPLETED").await;
    assert!(completed["data"].get("error").is_none(), "{completed}");
    let nodes = ok(
        &mut client,
        "query-named-block-nodes",
        json!({"flat": true}),
    )
    .await;
    assert_eq!(
        read_only(&nodes, "base"),
        Some(json!(false)),
        "the base is the active layer now"
    );
    ok(&mut client, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());

    let check = tool("qemu-img", &["check", path(&base)]);
    assert!(check.contains("No errors were found"), "{check}");
    tool(
        "qemu-io",
        &[
            "-c",
            "read -P 5 0 64k",
            "-c",
            "read -P 6 64k 64k",
            path(&base),
        ],
    );
}

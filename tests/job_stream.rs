//! `block-stream` over a three-deep qcow2 chain (base <- mid <- top) with
//! real clients: streamed down to the base while a libnbd client writes
//! and verifies through an export of the top, and streamed whole; the
//! top then reads exactly as before plus what the client wrote
//! (`qemu-img compare`), names its new backing file in its header, and
//! `qemu-img check` finds nothing.

mod common;

use std::path::Path;

use common::jobs::{compare_raw, path, three_deep_chain, wait_event, Writer};
use common::{error, ok, tool, TestDaemon};
use serde_json::{json, Value};

/// The chain of [`three_deep_chain`], with a raw copy of what it reads,
/// `before.raw`, made first.
fn chain_daemon() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let options = three_deep_chain(dir.path());
    let top = dir.path().join("top.qcow2");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            path(&top),
            path(&dir.path().join("before.raw")),
        ],
    );
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

#[tokio::test]
async fn a_stream_to_the_base_under_writes_keeps_every_byte() {
    let mut daemon = chain_daemon();
    let mut qmp = daemon.connect().await;
    let writer = Writer::start(&daemon).await;
    ok(
        &mut qmp,
        "block-stream",
        json!({"job-id": "s0", "device": "top", "base-node": "base", "speed": 8 << 20}),
    )
    .await;
    // The layers being streamed are busy.
    let (_, busy) = error(&mut qmp, "blockdev-del", json!({"node-name": "mid"})).await;
    assert!(
        busy.contains("is in use") || busy.contains("busy"),
        "{busy}"
    );
    let completed = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    assert!(completed["data"].get("error").is_none(), "{completed}");
    assert_eq!(completed["data"]["offset"], completed["data"]["len"]);
    // mid is no longer anyone's child.
    ok(&mut qmp, "blockdev-del", json!({"node-name": "mid"})).await;
    writer.stop(&daemon);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let top = daemon.path("top.qcow2");
    assert_eq!(
        header_backing(&top),
        Some(path(&daemon.path("base.qcow2")).to_owned())
    );
    compare_raw(&daemon.path("model.raw"), &top);
    tool("qemu-img", &["check", "-q", path(&top)]);
}

#[tokio::test]
async fn a_whole_chain_streamed_leaves_the_top_self_contained() {
    let mut daemon = chain_daemon();
    let mut qmp = daemon.connect().await;
    ok(
        &mut qmp,
        "block-stream",
        json!({"job-id": "s1", "device": "top", "auto-finalize": false}),
    )
    .await;
    let pending = wait_event(&mut qmp, "BLOCK_JOB_PENDING").await;
    assert_eq!(pending["data"], json!({"type": "stream", "id": "s1"}));
    ok(&mut qmp, "job-finalize", json!({"id": "s1"})).await;
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let top = daemon.path("top.qcow2");
    assert_eq!(header_backing(&top), None);
    // Without its chain the top alone reads as the chain did.
    std::fs::remove_file(daemon.path("mid.qcow2")).unwrap();
    compare_raw(&daemon.path("before.raw"), &top);
    tool("qemu-img", &["check", "-q", path(&top)]);
}

#[tokio::test]
async fn refusals_are_qemus() {
    let daemon = chain_daemon();
    let mut qmp = daemon.connect().await;
    let base_file = daemon.path("base.qcow2").display().to_string();
    let cases = [
        (json!({"device": "top"}), "Invalid job ID ''"),
        (
            json!({"job-id": "s", "device": "top", "base": "x", "base-node": "y"}),
            "'base' and 'base-node' cannot be specified at the same time",
        ),
        (
            json!({"job-id": "s", "device": "top", "base": "x", "bottom": "y"}),
            "'base' and 'bottom' cannot be specified at the same time",
        ),
        (
            json!({"job-id": "s", "device": "top", "base-node": "x", "bottom": "y"}),
            "'bottom' and 'base-node' cannot be specified at the same time",
        ),
        (
            json!({"job-id": "s", "device": "top", "base": "/nope.qcow2"}),
            "Can't find '/nope.qcow2' in the backing chain",
        ),
        (
            json!({"job-id": "s", "device": "top", "base-node": "top"}),
            "Node 'top' is not a backing image of 'top'",
        ),
        (
            json!({"job-id": "s", "device": "top", "backing-file": "foo"}),
            "backing file specified, but streaming the entire chain",
        ),
        (
            json!({"job-id": "s", "device": "top", "base": base_file, "speed": -1}),
            "Parameter 'speed' expects a non-negative value",
        ),
    ];
    for (arguments, message) in cases {
        let (class, desc) = error(&mut qmp, "block-stream", arguments).await;
        assert_eq!((class.as_str(), desc.as_str()), ("GenericError", message));
    }
    let nodes = ok(&mut qmp, "query-named-block-nodes", json!({"flat": true})).await;
    assert!(!nodes.to_string().contains("copy-on-read"), "{nodes}");
    assert!(ok(&mut qmp, "query-jobs", json!({}))
        .await
        .as_array()
        .unwrap()
        .is_empty());
}

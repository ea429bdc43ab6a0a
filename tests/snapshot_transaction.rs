//! External snapshots and transactions with real clients.
//!
//! `blockdev-snapshot` puts an overlay above an exported image while a
//! libnbd client writes and verifies: the image keeps exactly the
//! contents of the moment of the snapshot, the overlay over it what the
//! client wrote last. `blockdev-snapshot-sync` creates its overlay file
//! naming the image as backing file. A `transaction` starts two grouped
//! backups at one point in time; one with a failing action leaves nothing
//! behind (its bitmap and backup undone).

mod common;

use std::path::Path;

use common::jobs::{compare_raw, path, wait_event, Writer};
use common::{error, ok, tool, TestDaemon};
use serde_json::{json, Value};

fn qcow2(dir: &Path, name: &str, backing: Option<&str>) {
    let file = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    let backing = backing.map(|b| dir.join(b));
    if let Some(b) = &backing {
        args.extend(["-b", path(b), "-F", "qcow2"]);
    }
    args.extend([path(&file), "64M"]);
    tool("qemu-img", &args);
}

fn node(dir: &Path, name: &str, file: &str, extra: &str) -> String {
    format!(
        "qcow2,node-name={name}{extra},file.driver=file,file.filename={}",
        dir.join(file).display()
    )
}

#[tokio::test]
async fn a_snapshot_under_writes_freezes_the_image_at_that_moment() {
    let dir = tempfile::tempdir().unwrap();
    qcow2(dir.path(), "src.qcow2", None);
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 0x5a 0 8M",
            path(&dir.path().join("src.qcow2")),
        ],
    );
    qcow2(dir.path(), "ov.qcow2", Some("src.qcow2"));
    let mut daemon = TestDaemon::start_in(dir, |d| {
        vec![
            "--blockdev".into(),
            node(d, "src", "src.qcow2", ""),
            "--blockdev".into(),
            node(d, "ov", "ov.qcow2", ",backing="),
            "--nbd-server".into(),
            format!("addr.type=unix,addr.path={}", d.join("nbd.sock").display()),
            "--export".into(),
            "nbd,id=e0,node-name=src,name=disk,writable=on".into(),
        ]
    });
    let mut qmp = daemon.connect().await;
    let mut writer = Writer::start(&daemon).await;
    writer.pause(&daemon.path("at-snapshot.raw")).await;
    ok(
        &mut qmp,
        "blockdev-snapshot",
        json!({"node": "src", "overlay": "ov"}),
    )
    .await;
    writer.resume().await;
    let exports = ok(&mut qmp, "query-block-exports", json!({})).await;
    assert_eq!(exports[0]["node-name"], "ov");
    let (_, busy) = error(
        &mut qmp,
        "blockdev-snapshot",
        json!({"node": "src", "overlay": "ov"}),
    )
    .await;
    assert_eq!(
        busy,
        "Node 'src' is busy: node is used as backing hd of 'ov'"
    );
    writer.stop(&daemon);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    compare_raw(&daemon.path("at-snapshot.raw"), &daemon.path("src.qcow2"));
    compare_raw(&daemon.path("model.raw"), &daemon.path("ov.qcow2"));
    tool("qemu-img", &["check", "-q", path(&daemon.path("ov.qcow2"))]);
}

#[tokio::test]
async fn snapshot_sync_creates_an_overlay_naming_the_image() {
    let dir = tempfile::tempdir().unwrap();
    qcow2(dir.path(), "src.qcow2", None);
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 0x33 1M 1M",
            path(&dir.path().join("src.qcow2")),
        ],
    );
    let mut daemon = TestDaemon::start_in(dir, |d| {
        vec!["--blockdev".into(), node(d, "src", "src.qcow2", "")]
    });
    let mut qmp = daemon.connect().await;
    let snap = daemon.path("snap.qcow2");
    let (_, missing) = error(
        &mut qmp,
        "blockdev-snapshot-sync",
        json!({"node-name": "src", "snapshot-file": path(&snap)}),
    )
    .await;
    assert_eq!(missing, "New overlay node-name missing");
    ok(
        &mut qmp,
        "blockdev-snapshot-sync",
        json!({"node-name": "src", "snapshot-file": path(&snap), "snapshot-node-name": "snap"}),
    )
    .await;
    let nodes = ok(&mut qmp, "query-named-block-nodes", json!({"flat": true})).await;
    let snap_node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "snap")
        .unwrap();
    assert_eq!(snap_node["backing_file"], path(&daemon.path("src.qcow2")));
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let info: Value =
        serde_json::from_str(&tool("qemu-img", &["info", "--output=json", path(&snap)])).unwrap();
    assert_eq!(info["backing-filename"], path(&daemon.path("src.qcow2")));
    assert_eq!(info["backing-filename-format"], "qcow2");
    tool(
        "qemu-img",
        &[
            "compare",
            "-q",
            path(&daemon.path("src.qcow2")),
            path(&snap),
        ],
    );
}

#[tokio::test]
async fn a_transaction_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for image in ["a.qcow2", "b.qcow2", "a-copy.qcow2", "b-copy.qcow2"] {
        qcow2(dir.path(), image, None);
    }
    tool(
        "qemu-io",
        &["-c", "write -P 1 0 4M", path(&dir.path().join("a.qcow2"))],
    );
    tool(
        "qemu-io",
        &["-c", "write -P 2 0 4M", path(&dir.path().join("b.qcow2"))],
    );
    let mut daemon = TestDaemon::start_in(dir, |d| {
        ["a", "b", "a-copy", "b-copy"]
            .iter()
            .flat_map(|n| {
                [
                    "--blockdev".to_owned(),
                    node(d, n, &format!("{n}.qcow2"), ""),
                ]
            })
            .collect()
    });
    let mut qmp = daemon.connect().await;
    // A failing action undoes the ones before it.
    let (_, message) = error(
        &mut qmp,
        "transaction",
        json!({"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "a", "name": "b0"}},
            {"type": "blockdev-backup", "data": {"job-id": "ja", "device": "a", "target": "a-copy", "sync": "full"}},
            {"type": "abort", "data": {}},
        ]}),
    )
    .await;
    assert_eq!(message, "Transaction aborted using Abort action");
    assert!(ok(&mut qmp, "query-jobs", json!({}))
        .await
        .as_array()
        .unwrap()
        .is_empty());
    let nodes = ok(&mut qmp, "query-named-block-nodes", json!({"flat": true})).await;
    let text = nodes.to_string();
    assert!(
        !text.contains("dirty-bitmaps") && !text.contains("copy-before-write"),
        "{text}"
    );

    let (_, message) = error(
        &mut qmp,
        "transaction",
        json!({"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "a", "name": "b0"}}],
               "properties": {"completion-mode": "grouped"}}),
    )
    .await;
    assert_eq!(
        message,
        "Action 'block-dirty-bitmap-add' does not support transaction property completion-mode = grouped"
    );

    // Two grouped backups at one point in time.
    ok(
        &mut qmp,
        "transaction",
        json!({"actions": [
            {"type": "blockdev-backup", "data": {"job-id": "ja", "device": "a", "target": "a-copy", "sync": "full"}},
            {"type": "blockdev-backup", "data": {"job-id": "jb", "device": "b", "target": "b-copy", "sync": "full"}},
        ], "properties": {"completion-mode": "grouped"}}),
    )
    .await;
    let mut completed = 0;
    while completed < 2 {
        let event = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
        assert!(event["data"].get("error").is_none(), "{event}");
        completed += 1;
    }
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    for (source, copy) in [("a.qcow2", "a-copy.qcow2"), ("b.qcow2", "b-copy.qcow2")] {
        tool(
            "qemu-img",
            &[
                "compare",
                "-q",
                path(&daemon.path(source)),
                path(&daemon.path(copy)),
            ],
        );
    }
}

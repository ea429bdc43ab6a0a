//! `drive-backup` and `drive-mirror`, which create their target image:
//! qcow2 (the source's format) and raw backups equal the source, a
//! drive-mirror moves an NBD export to the image it made (copying only
//! data, as QEMU does for a new image), a transaction takes a
//! drive-backup, and the job's own target node is gone afterwards.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{error, ok, tool, TestDaemon};
use qmp::client::Client;
use serde_json::{json, Value};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn wait_event(client: &mut Client, name: &str) -> Value {
    for _ in 0..600 {
        if let Some(event) = client.next_event(Duration::from_millis(500)).await.unwrap() {
            if event["event"] == name {
                return event;
            }
        }
    }
    panic!("no {name} event");
}

async fn node_names(qmp: &mut Client) -> Vec<String> {
    let nodes = ok(qmp, "query-named-block-nodes", json!({"flat": true})).await;
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node-name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn drive_jobs_create_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.qcow2");
    common::create_qcow2(path(&src), "32M");
    tool("qemu-io", &["-c", "write -P 0x44 1M 3M", path(&src)]);
    let mut daemon = TestDaemon::start_in(dir, |d| {
        vec![
            "--blockdev".into(),
            format!(
                "qcow2,node-name=src,file.driver=file,file.filename={}",
                d.join("src.qcow2").display()
            ),
            "--nbd-server".into(),
            format!("addr.type=unix,addr.path={}", d.join("nbd.sock").display()),
            "--export".into(),
            "nbd,id=e0,node-name=src,name=disk,writable=on".into(),
        ]
    });
    let mut qmp = daemon.connect().await;
    let before = node_names(&mut qmp).await;
    let (_, message) = error(
        &mut qmp,
        "drive-backup",
        json!({"job-id": "x", "device": "src", "target": path(&daemon.path("x.img")), "sync": "full", "format": "nosuch"}),
    )
    .await;
    assert_eq!(message, "Unknown file format 'nosuch'");

    ok(
        &mut qmp,
        "drive-backup",
        json!({"job-id": "b1", "device": "src", "target": path(&daemon.path("b1.qcow2")), "sync": "full"}),
    )
    .await;
    wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    ok(
        &mut qmp,
        "transaction",
        json!({"actions": [{"type": "drive-backup", "data": {"job-id": "b2", "device": "src",
               "target": path(&daemon.path("b2.raw")), "sync": "full", "format": "raw"}}]}),
    )
    .await;
    wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The jobs' own target nodes closed with them.
    assert_eq!(node_names(&mut qmp).await, before);

    ok(
        &mut qmp,
        "drive-mirror",
        json!({"job-id": "m", "device": "src", "target": path(&daemon.path("m.qcow2")), "sync": "full"}),
    )
    .await;
    let ready = wait_event(&mut qmp, "BLOCK_JOB_READY").await;
    // Only the data: the new image reads as zeroes already.
    assert_eq!(ready["data"]["len"], 3 << 20);
    ok(&mut qmp, "job-complete", json!({"id": "m"})).await;
    wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    let exports = ok(&mut qmp, "query-block-exports", json!({})).await;
    let target_node = exports[0]["node-name"].as_str().unwrap().to_owned();
    assert_ne!(target_node, "src");
    let uri = format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    );
    tool("qemu-io", &["-f", "raw", "-c", "write -P 0x55 8M 1M", &uri]);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());

    let src = daemon.path("src.qcow2");
    tool(
        "qemu-img",
        &["compare", "-q", path(&src), path(&daemon.path("b1.qcow2"))],
    );
    tool(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-F",
            "raw",
            path(&src),
            path(&daemon.path("b2.raw")),
        ],
    );
    // The mirror's image has the write made after the pivot; the source not.
    tool(
        "qemu-io",
        &["-c", "read -P 0x55 8M 1M", path(&daemon.path("m.qcow2"))],
    );
    tool(
        "qemu-io",
        &["-c", "read -P 0x44 1M 3M", path(&daemon.path("m.qcow2"))],
    );
    tool("qemu-io", &["-c", "read -P 0 8M 1M", path(&src)]);
    tool("qemu-img", &["check", "-q", path(&daemon.path("m.qcow2"))]);
}

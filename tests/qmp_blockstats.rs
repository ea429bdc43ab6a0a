//! `query-blockstats`, `query-block` and `block-set-write-threshold`
//! against qemu-storage-daemon's: both daemons serve a qcow2 image (a
//! `file` node under a `qcow2` node) over NBD, `qemu-io` does the same
//! I/O through each, and the replies must match. QSD counts no I/O at
//! node level (only guest devices account, and it has none), so its
//! counters stay 0 but for `wr_highest_offset`: storaged's reply with its
//! counters and times blanked must equal QSD's exactly, and storaged's
//! counters of the exported node must be what `qemu-io` did. The write
//! threshold's event, the threshold left afterwards and the refusals are
//! compared with QSD's as they are.

mod common;

use std::path::Path;
use std::process::Command;

use common::{reply, tool, TestDaemon};
use qmp::client::Client;
use serde_json::{json, Value};

/// A daemon (`program`: storaged or QSD) serving a fresh 64 MiB qcow2
/// image as export `disk` on `nbd.sock`.
fn serve_qcow2(program: Command) -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.qcow2");
    common::create_qcow2(image.to_str().unwrap(), "64M");
    TestDaemon::spawn(program, dir, |dir: &Path| {
        [
            format!(
                "--blockdev=driver=file,node-name=file0,filename={}",
                dir.join("disk.qcow2").display()
            ),
            "--blockdev=driver=qcow2,node-name=disk,file=file0".into(),
            format!(
                "--nbd-server=addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export=type=nbd,id=e0,node-name=disk,writable=on".into(),
        ]
        .into()
    })
}

fn nbd_uri(daemon: &TestDaemon) -> String {
    format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    )
}

/// `qemu-io` commands run over NBD against the export.
fn qemu_io(daemon: &TestDaemon, commands: &[&str]) {
    let uri = nbd_uri(daemon);
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(&uri);
    tool("qemu-io", &args);
}

/// The I/O both daemons get: a 64 KiB write, a 4 KiB read, a flush, a
/// 4 KiB discard and a 64 KiB write-zeroes.
const IO: &[&str] = &[
    "write -P 1 0 64k",
    "read -P 1 0 4k",
    "flush",
    "discard 0 4k",
    "write -z 64k 64k",
];

/// `stats` of every entry (and its `parent`) with the counters and times
/// zeroed and `idle_time_ns` left out; `wr_highest_offset` is kept.
fn blank_counters(entry: &mut Value) {
    if let Some(stats) = entry.get_mut("stats").and_then(Value::as_object_mut) {
        stats.remove("idle_time_ns");
        for (name, value) in stats.iter_mut() {
            if value.is_i64() && name != "wr_highest_offset" {
                *value = json!(0);
            }
        }
    }
    if let Some(parent) = entry.get_mut("parent") {
        blank_counters(parent);
    }
}

async fn connect(daemon: &TestDaemon) -> Client {
    daemon.connect().await
}

async fn node_stats(client: &mut Client) -> Value {
    reply(client, "query-blockstats", json!({"query-nodes": true})).await
}

/// A `query-blockstats` reply with [`blank_counters`] applied.
fn blanked(mut reply: Value) -> Value {
    for entry in reply["return"].as_array_mut().unwrap() {
        blank_counters(entry);
    }
    reply
}

/// The replies of the scenario, storaged's counters blanked.
async fn statistics_session(daemon: &TestDaemon) -> (Vec<Value>, Value) {
    let mut client = connect(daemon).await;
    let mut replies = vec![
        reply(&mut client, "query-blockstats", json!({})).await,
        reply(&mut client, "query-block", json!({})).await,
        blanked(node_stats(&mut client).await),
    ];
    qemu_io(daemon, IO);
    let raw = node_stats(&mut client).await;
    replies.push(blanked(raw.clone()));
    replies.push(
        reply(
            &mut client,
            "query-blockstats",
            json!({"query-nodes": false}),
        )
        .await,
    );
    replies.push(reply(&mut client, "query-blockstats", json!({"query-nodes": 1})).await);
    replies.push(reply(&mut client, "query-block", json!({"flat": true})).await);
    (replies, raw)
}

#[tokio::test]
async fn blockstats_match_qsd_and_count_what_the_client_did() {
    let qsd = serve_qcow2(Command::new("qemu-storage-daemon"));
    let (qsd_replies, _) = statistics_session(&qsd).await;
    drop(qsd);
    let storaged = serve_qcow2(common::storaged());
    let (replies, raw) = statistics_session(&storaged).await;
    for (ours, theirs) in replies.iter().zip(&qsd_replies) {
        assert_eq!(ours, theirs);
    }
    assert_eq!(replies.len(), qsd_replies.len());

    // The exported node saw exactly qemu-io's requests.
    let nodes = raw["return"].as_array().unwrap();
    let disk = nodes.iter().find(|n| n["node-name"] == "disk").unwrap();
    let stats = &disk["stats"];
    let count = |name: &str| stats[name].as_i64().unwrap();
    assert_eq!((count("wr_operations"), count("wr_bytes")), (2, 128 << 10));
    assert_eq!((count("rd_operations"), count("rd_bytes")), (1, 4 << 10));
    assert_eq!(
        (count("unmap_operations"), count("unmap_bytes")),
        (1, 4 << 10)
    );
    assert!(count("flush_operations") >= 1);
    assert!(count("wr_total_time_ns") > 0 && count("rd_total_time_ns") > 0);
    assert!(stats["idle_time_ns"].is_i64());
    for kind in ["rd", "wr", "flush", "unmap"] {
        assert_eq!(count(&format!("failed_{kind}_operations")), 0);
        assert_eq!(count(&format!("invalid_{kind}_operations")), 0);
    }
    // Its image file got the qcow2 driver's own requests, metadata too.
    let file = &disk["parent"]["stats"];
    assert_eq!(disk["parent"]["node-name"], "file0");
    assert!(file["wr_bytes"].as_i64().unwrap() > 128 << 10);
    assert!(file["rd_operations"].as_i64().unwrap() >= 1);
}

/// The threshold scenario: refusals, thresholds as `query-named-block-nodes`
/// shows them (-1 included), a threshold set on the exported node, two
/// writes past it (only the first reports), what is left.
async fn threshold_session(daemon: &TestDaemon) -> (Vec<Value>, Vec<Value>) {
    let mut client = connect(daemon).await;
    let mut replies = Vec::new();
    for arguments in [
        json!({"node-name": "nope", "write-threshold": 1}),
        json!({"node-name": "disk"}),
        json!({"node-name": "disk", "write-threshold": "x"}),
        json!({"node-name": "disk", "write-threshold": 1.5}),
        json!({"node-name": "disk", "write-threshold": 1 << 20, "x": 1}),
        // Accepted, as QEMU's uint64 parameters take negative numbers.
        json!({"node-name": "disk", "write-threshold": -1}),
        json!({"node-name": "file0", "write-threshold": 48 << 20}),
    ] {
        replies.push(reply(&mut client, "block-set-write-threshold", arguments).await);
    }
    let thresholds = |reply: Value| -> Value {
        let nodes = reply["return"].as_array().unwrap().iter();
        nodes
            .map(|n| json!([n["node-name"], n["write_threshold"]]))
            .collect()
    };
    let nodes = reply(&mut client, "query-named-block-nodes", json!({})).await;
    replies.push(thresholds(nodes));
    replies.push(
        reply(
            &mut client,
            "block-set-write-threshold",
            json!({"node-name": "disk", "write-threshold": 1 << 20}),
        )
        .await,
    );
    // Below the threshold, then past it twice.
    qemu_io(daemon, &["write 0 64k", "write 1020k 64k", "write 2M 4k"]);
    let nodes = reply(&mut client, "query-named-block-nodes", json!({})).await;
    replies.push(thresholds(nodes));
    let mut events = Vec::new();
    while let Some(mut event) = client
        .next_event(std::time::Duration::from_millis(200))
        .await
        .unwrap()
    {
        if event["event"] == "BLOCK_WRITE_THRESHOLD" {
            event.as_object_mut().unwrap().remove("timestamp");
            events.push(event);
        }
    }
    (replies, events)
}

#[tokio::test]
async fn write_threshold_reports_once_as_qsd_does() {
    let qsd = serve_qcow2(Command::new("qemu-storage-daemon"));
    let (qsd_replies, qsd_events) = threshold_session(&qsd).await;
    drop(qsd);
    let storaged = serve_qcow2(common::storaged());
    let (replies, events) = threshold_session(&storaged).await;
    for (ours, theirs) in replies.iter().zip(&qsd_replies) {
        assert_eq!(ours, theirs);
    }
    assert_eq!(events, qsd_events);
    assert_eq!(
        events,
        [json!({
            "event": "BLOCK_WRITE_THRESHOLD",
            "data": {"node-name": "disk", "amount-exceeded": 60 << 10, "write-threshold": 1 << 20}
        })]
    );
}

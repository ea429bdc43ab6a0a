//! Events reach every negotiated client of every monitor at once, with
//! QEMU's timestamp, and none reach a client still negotiating. The event
//! is `BLOCK_EXPORT_DELETED`, which `block-export-del` emits. The block
//! layer's events reach the monitors too: `BLOCK_IMAGE_CORRUPTED` when a
//! corrupt qcow2 is written, with the data qemu-storage-daemon sends.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ok, storaged, TestDaemon};
use qmp::client::Client;
use serde_json::{json, Value};

/// How long to wait for an event that must come.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// How long to watch for an event that must not come.
const QUIET_WAIT: Duration = Duration::from_millis(300);

fn monitor_args(dir: &std::path::Path, id: &str) -> Vec<String> {
    vec![
        "--chardev".into(),
        format!(
            "socket,id={id},path={},server=on,wait=off",
            dir.join(format!("{id}.sock")).display()
        ),
        "--monitor".into(),
        id.into(),
    ]
}

fn assert_export_deleted(event: &Value, id: &str) {
    assert_eq!(event["event"], "BLOCK_EXPORT_DELETED", "{event}");
    assert_eq!(event["data"], json!({ "id": id }), "{event}");
    assert_timestamp_is_now(event);
}

fn assert_timestamp_is_now(event: &Value) {
    let seconds = event["timestamp"]["seconds"].as_u64().expect("seconds");
    let micros = event["timestamp"]["microseconds"]
        .as_u64()
        .expect("microseconds");
    assert!(micros < 1_000_000);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        seconds.abs_diff(now) < 60,
        "timestamp {seconds} vs now {now}"
    );
}

#[tokio::test]
async fn an_event_reaches_two_monitors_at_once() {
    let daemon = TestDaemon::start_in(tempfile::tempdir().expect("temp dir"), |dir| {
        let mut args = vec![
            "--blockdev".to_owned(),
            "null-co,node-name=n0".to_owned(),
            "--nbd-server".to_owned(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".to_owned(),
            "nbd,id=e0,node-name=n0".to_owned(),
            "--export".to_owned(),
            "nbd,id=e1,node-name=n0,name=other".to_owned(),
        ];
        args.extend(monitor_args(dir, "second"));
        args.extend(monitor_args(dir, "third"));
        args
    });
    let mut first = daemon.connect().await;
    let mut second = Client::connect_unix(daemon.path("second.sock"))
        .await
        .expect("second monitor");
    second.negotiate().await.expect("negotiate");
    // Connected, greeted, but not negotiated: gets no events.
    let mut pending = Client::connect_unix(daemon.path("third.sock"))
        .await
        .expect("third monitor");

    ok(&mut first, "block-export-del", json!({"id": "e0"})).await;
    let on_first = first
        .next_event(EVENT_WAIT)
        .await
        .expect("read")
        .expect("event on first");
    let on_second = second
        .next_event(EVENT_WAIT)
        .await
        .expect("read")
        .expect("event on second");
    assert_export_deleted(&on_first, "e0");
    assert_eq!(on_first, on_second, "the same event, the same timestamp");
    assert_eq!(
        pending.next_event(QUIET_WAIT).await.expect("read"),
        None,
        "no events before negotiation"
    );

    // Once negotiated, that client gets the next one too.
    pending.negotiate().await.expect("negotiate");
    ok(&mut second, "block-export-del", json!({"id": "e1"})).await;
    for client in [&mut first, &mut second, &mut pending] {
        let event = client
            .next_event(EVENT_WAIT)
            .await
            .expect("read")
            .expect("event");
        assert_export_deleted(&event, "e1");
    }
    let exports = ok(&mut first, "query-block-exports", json!({})).await;
    assert_eq!(exports, json!([]));
}

/// A qcow2 image whose first L1 entry points at an unaligned L2 table
/// (after one cluster was written, so that the entry was in use).
fn corrupt_qcow2(image: &Path) {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().expect(program);
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let path = image.to_str().expect("UTF-8 path");
    run("qemu-img", &["create", "-q", "-f", "qcow2", path, "1M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 5 0 4k", path]);
    let mut bytes = std::fs::read(image).expect("image");
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().expect("8 bytes")) as usize;
    bytes[l1..l1 + 8].copy_from_slice(&0x8000_0000_0001_0200u64.to_be_bytes());
    std::fs::write(image, bytes).expect("write image");
}

/// Opens a corrupt qcow2 over QMP, exports it writable over NBD, writes
/// to it twice with `qemu-io` and returns the events the monitor got,
/// without their timestamps (checked here).
async fn corruption_events(program: Command) -> Vec<Value> {
    let daemon = TestDaemon::spawn(program, tempfile::tempdir().expect("temp dir"), |dir| {
        vec![
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
        ]
    });
    let image = daemon.path("bad.qcow2");
    corrupt_qcow2(&image);
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "disk",
               "file": {"driver": "file", "filename": image}}),
    )
    .await;
    ok(
        &mut client,
        "block-export-add",
        json!({"type": "nbd", "id": "e0", "node-name": "disk", "writable": true}),
    )
    .await;
    let uri = format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    );
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 9 0 4k",
            "-c",
            "write -P 9 4k 4k",
            &uri,
        ])
        .output()
        .expect("qemu-io is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("write failed"), "the write must fail: {text}");
    let mut events = Vec::new();
    let mut wait = EVENT_WAIT;
    while let Some(mut event) = client.next_event(wait).await.expect("read") {
        assert_timestamp_is_now(&event);
        event
            .as_object_mut()
            .expect("an object")
            .remove("timestamp");
        events.push(event);
        wait = QUIET_WAIT;
    }
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&image)
        .output()
        .expect("qemu-img is installed");
    let info: Value = serde_json::from_slice(&info.stdout).expect("qemu-img info JSON");
    assert_eq!(
        info["format-specific"]["data"]["corrupt"], true,
        "the image is marked corrupt: {info}"
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_qcow2_written_over_nbd_reports_block_image_corrupted() {
    let expected = corruption_events(Command::new("qemu-storage-daemon")).await;
    let got = corruption_events(storaged()).await;
    assert_eq!(got, expected);
    assert_eq!(
        got,
        [json!({
            "event": "BLOCK_IMAGE_CORRUPTED",
            "data": {
                "device": "",
                "node-name": "disk",
                "msg": "L2 table offset 0x10200 unaligned (L1 index: 0)",
                "fatal": true
            }
        })],
        "reported once"
    );
}

/// `quit` closes the exports before it answers, as QSD: one
/// `BLOCK_EXPORT_DELETED` per export, newest first, then the reply.
#[tokio::test]
async fn quit_announces_every_export_before_its_reply() {
    let mut daemon = TestDaemon::start_in(tempfile::tempdir().expect("temp dir"), |dir| {
        vec![
            "--blockdev".into(),
            "null-co,node-name=n0".into(),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "nbd,id=e0,node-name=n0".into(),
            "--export".into(),
            "nbd,id=e1,node-name=n0,name=second".into(),
        ]
    });
    let mut client = daemon.connect().await;
    client
        .send_raw(b"{\"execute\": \"quit\"}\n")
        .await
        .expect("send");
    let first = client.receive().await.expect("first message");
    let second = client.receive().await.expect("second message");
    let third = client.receive().await.expect("third message");
    assert_export_deleted(&first, "e1");
    assert_export_deleted(&second, "e0");
    assert_eq!(third, json!({"return": {}}));
    assert!(daemon.wait_exit().success());
}

//! The character device commands against qemu-storage-daemon: the same
//! chardevs (the test's monitor socket and a listening socket no monitor
//! uses) are listed alike, paths aside; the backends storaged lists are
//! among QSD's; chardevs added at run time and the ring buffer commands
//! answer as QSD's.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{ok, storaged, transcript, TestDaemon};
use serde_json::{json, Value};

/// `query-chardev` of a daemon with a spare chardev, with its directory
/// written as `DIR`.
async fn chardevs(program: Command) -> (Value, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = TestDaemon::spawn(program, dir, |dir| {
        vec![
            "--chardev".into(),
            format!(
                "socket,id=spare,path={},server=on,wait=off",
                dir.join("spare.sock").display()
            ),
        ]
    });
    let mut client = daemon.connect().await;
    let rows = ok(&mut client, "query-chardev", json!({})).await;
    let mut rows: Vec<Value> = serde_json::from_str(
        &rows
            .to_string()
            .replace(&daemon.dir.path().display().to_string(), "DIR"),
    )
    .expect("JSON");
    rows.sort_by(|a, b| a["label"].as_str().cmp(&b["label"].as_str()));
    let backends = ok(&mut client, "query-chardev-backends", json!({})).await;
    (Value::Array(rows), backends)
}

#[tokio::test]
async fn chardevs_are_listed_as_qemu_storage_daemon_lists_them() {
    let (qsd_rows, qsd_backends) = chardevs(Command::new("qemu-storage-daemon")).await;
    let (rows, backends) = chardevs(storaged()).await;
    assert_eq!(rows, qsd_rows);
    assert_eq!(
        rows,
        json!([
            {"label": "qmp0", "filename": "unix:DIR/qmp.sock,server=on", "frontend-open": true},
            {"label": "spare", "filename": "disconnected:unix:DIR/spare.sock,server=on", "frontend-open": false},
        ])
    );
    let names = |list: &Value| -> BTreeSet<String> {
        list.as_array()
            .expect("a list")
            .iter()
            .map(|b| b["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let offered = ["socket", "stdio", "ringbuf", "memory", "null", "file", "pipe"];
    assert_eq!(
        names(&backends),
        offered.iter().map(|n| n.to_string()).collect()
    );
    assert!(names(&backends).is_subset(&names(&qsd_backends)));
}

/// Chardevs added at run time (ringbuf, memory, null, file) and the ring
/// buffer commands: every reply equal to QSD's.
#[tokio::test]
async fn chardevs_added_at_run_time_answer_as_qemu_storage_daemon() {
    let add = |id: &str, kind: &str, data: Value| json!({"execute": "chardev-add", "arguments": {"id": id, "backend": {"type": kind, "data": data}}});
    let call =
        |command: &str, arguments: Value| json!({"execute": command, "arguments": arguments});
    let session = [
        add("r0", "ringbuf", json!({"size": 8})),
        add("r0", "null", json!({})),
        add("r1", "ringbuf", json!({"size": 6})),
        add("n0", "null", json!({})),
        add("f0", "file", json!({"out": "@DIR@/out.txt"})),
        add("m0", "memory", json!({})),
        call("query-chardev", json!({})),
        call(
            "ringbuf-write",
            json!({"device": "r0", "data": "hello world"}),
        ),
        call("ringbuf-read", json!({"device": "r0", "size": 4})),
        call("ringbuf-read", json!({"device": "r0", "size": 100})),
        call(
            "ringbuf-write",
            json!({"device": "r0", "data": "aGk=", "format": "base64"}),
        ),
        call(
            "ringbuf-read",
            json!({"device": "r0", "size": 10, "format": "base64"}),
        ),
        call(
            "ringbuf-write",
            json!({"device": "r0", "data": "!!!", "format": "base64"}),
        ),
        call("ringbuf-read", json!({"device": "r0", "size": -1})),
        call("ringbuf-write", json!({"device": "n0", "data": "x"})),
        call("ringbuf-read", json!({"device": "nope", "size": 1})),
        call("ringbuf-write", json!({"device": "qmp0", "data": "x"})),
        call("chardev-send-break", json!({"id": "r0"})),
        call("chardev-send-break", json!({"id": "nope"})),
        call(
            "chardev-change",
            json!({"id": "r0", "backend": {"type": "null", "data": {}}}),
        ),
        call(
            "chardev-change",
            json!({"id": "qmp0", "backend": {"type": "null", "data": {}}}),
        ),
        call(
            "chardev-change",
            json!({"id": "nope", "backend": {"type": "null", "data": {}}}),
        ),
        call("chardev-remove", json!({"id": "qmp0"})),
        call("chardev-remove", json!({"id": "r0"})),
        call("chardev-remove", json!({"id": "r0"})),
        call("query-chardev", json!({})),
    ];
    let qsd = transcript(Command::new("qemu-storage-daemon"), &session).await;
    let ours = transcript(storaged(), &session).await;
    for ((request, theirs), mine) in session.iter().zip(&qsd).zip(&ours) {
        assert_eq!(mine, theirs, "{request}");
    }
}

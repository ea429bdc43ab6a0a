//! `block-stream` over a three-deep qcow2 chain (base <- mid <- top) with
//! real clients: streamed down to the base while a libnbd client writes
//! and verifies through an export of the top, and streamed whole; the
//! top then reads exactly as before plus what the client wrote
//! (`qemu-img compare`), names its new backing file in its header, and
//! `qemu-img check` finds nothing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{error, ok, tool, TestDaemon};
use qmp::client::Client;
use serde_json::{json, Value};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// base (0x11 in 0..4M), mid (0x22 in 4M..8M, zeroes over the base's
/// first MiB), top (0x33 in 8M..12M); `top` opened with its chain and
/// exported writable as `disk`. A raw copy of what the chain reads,
/// `before.raw`, is made first.
fn chain_daemon() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (base, mid, top) = (
        d.join("base.qcow2"),
        d.join("mid.qcow2"),
        d.join("top.qcow2"),
    );
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path(&base), "16M"],
    );
    tool("qemu-io", &["-c", "write -P 0x11 0 4M", path(&base)]);
    for (image, backing) in [(&mid, &base), (&top, &mid)] {
        tool(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                path(backing),
                "-F",
                "qcow2",
                path(image),
            ],
        );
    }
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 0x22 4M 4M",
            "-c",
            "write -z 0 1M",
            path(&mid),
        ],
    );
    tool("qemu-io", &["-c", "write -P 0x33 8M 4M", path(&top)]);
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            path(&top),
            path(&d.join("before.raw")),
        ],
    );
    TestDaemon::start_in(dir, |dir| {
        vec![
            "--blockdev".into(),
            format!(
                "qcow2,node-name=base,file.driver=file,file.filename={}",
                dir.join("base.qcow2").display()
            ),
            "--blockdev".into(),
            format!(
                "qcow2,node-name=mid,backing=base,file.driver=file,file.filename={}",
                dir.join("mid.qcow2").display()
            ),
            "--blockdev".into(),
            format!(
                "qcow2,node-name=top,backing=mid,file.driver=file,file.filename={}",
                dir.join("top.qcow2").display()
            ),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "nbd,id=e0,node-name=top,name=disk,writable=on".into(),
        ]
    })
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

fn header_backing(image: &Path) -> Option<String> {
    let info: Value = serde_json::from_str(&tool(
        "qemu-img",
        &["info", "-U", "--output=json", path(image)],
    ))
    .unwrap();
    info["backing-filename"].as_str().map(str::to_owned)
}

fn compare(a: &Path, a_format: &str, b: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", a_format, "-F", "qcow2", path(a), path(b)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_stream_to_the_base_under_writes_keeps_every_byte() {
    let mut daemon = chain_daemon();
    let mut qmp = daemon.connect().await;
    let mut writer = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/nbd_pattern_writer.py"
        ))
        .args([
            path(&daemon.path("nbd.sock")),
            "disk",
            "65536",
            path(&daemon.path("stop")),
            path(&daemon.path("model.raw")),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with libnbd");
    while !daemon.path("stop.started").exists() {
        if let Some(status) = writer.try_wait().unwrap() {
            panic!("writer ended early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    std::fs::write(daemon.path("stop"), b"").unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let top = daemon.path("top.qcow2");
    assert_eq!(
        header_backing(&top),
        Some(path(&daemon.path("base.qcow2")).to_owned())
    );
    compare(&daemon.path("model.raw"), "raw", &top);
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
    compare(&daemon.path("before.raw"), "raw", &top);
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

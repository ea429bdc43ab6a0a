//! `blockdev-mirror` with real clients: a qcow2 image exported over NBD
//! is mirrored to a new qcow2 while a libnbd client writes and verifies
//! continuously; `job-complete` moves the export to the target, the
//! client never sees an error, and the target holds exactly what the
//! client wrote (`qemu-img compare`); the same to a remote export of
//! qemu-nbd through an `nbd` node. Also: the job's life cycle over QMP
//! (pause, resume, speed, cancel before and after ready), the source back
//! in place after a cancel, and QEMU's refusals.

mod common;

use std::process::Command;
use std::time::Duration;

use common::jobs::{path, pause_holds_the_copy, wait_event, wait_status, Writer};
use common::{error, ok, tool, TestDaemon};
use qmp::client::Client;
use serde_json::json;

const SIZE: &str = "64M";

/// A source qcow2 with data in its first 8 MiB and an empty target qcow2
/// of the same size, opened as `src` and `dst`; `src` exported writable
/// over NBD as `disk`.
fn mirror_daemon() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.qcow2");
    let dst = dir.path().join("dst.qcow2");
    for image in [&src, &dst] {
        tool(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", path(image), SIZE],
        );
    }
    tool("qemu-io", &["-c", "write -P 0x5a 0 8M", path(&src)]);
    TestDaemon::start_in(dir, |dir| {
        vec![
            "--blockdev".into(),
            format!(
                "qcow2,node-name=src,file.driver=file,file.filename={}",
                dir.join("src.qcow2").display()
            ),
            "--blockdev".into(),
            format!(
                "qcow2,node-name=dst,file.driver=file,file.filename={}",
                dir.join("dst.qcow2").display()
            ),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "nbd,id=e0,node-name=src,name=disk,writable=on".into(),
        ]
    })
}

async fn export_node(client: &mut Client) -> String {
    let exports = ok(client, "query-block-exports", json!({})).await;
    exports[0]["node-name"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_mirror_under_writes_pivots_the_export_without_losing_one() {
    let mut daemon = mirror_daemon();
    let mut qmp = daemon.connect().await;
    let writer = Writer::start(&daemon).await;
    // Slow enough that the writer works while the bulk copy runs.
    ok(
        &mut qmp,
        "blockdev-mirror",
        json!({"job-id": "m0", "device": "src", "target": "dst", "sync": "full",
               "speed": 16 << 20, "filter-node-name": "mtop"}),
    )
    .await;
    // The filter is above the source, and the export goes through it.
    assert_eq!(export_node(&mut qmp).await, "mtop");
    let (_, busy) = error(&mut qmp, "blockdev-del", json!({"node-name": "src"})).await;
    assert_eq!(
        busy,
        "Node 'src' is busy: block device is in use by block job: mirror"
    );
    ok(
        &mut qmp,
        "block-job-set-speed",
        json!({"device": "m0", "speed": 0}),
    )
    .await;
    let ready = wait_event(&mut qmp, "BLOCK_JOB_READY").await;
    assert_eq!(ready["data"]["len"], ready["data"]["offset"]);
    // Writes go on while ready; then the pivot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(&mut qmp, "job-complete", json!({"id": "m0"})).await;
    let completed = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    assert!(completed["data"].get("error").is_none(), "{completed}");
    assert_eq!(export_node(&mut qmp).await, "dst");
    // More writes land on the target only.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = writer.stop(&daemon);
    assert!(writes > 0);
    let nodes = ok(&mut qmp, "query-named-block-nodes", json!({"flat": true})).await;
    assert!(!nodes.to_string().contains("mirror_top"), "{nodes}");
    // The source can go now; the target holds what the client wrote.
    ok(&mut qmp, "blockdev-del", json!({"node-name": "src"})).await;
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .args([daemon.path("model.raw"), daemon.path("dst.qcow2")])
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
    tool(
        "qemu-img",
        &["check", "-q", path(&daemon.path("dst.qcow2"))],
    );
}

#[tokio::test]
async fn cancel_puts_the_source_back_and_keeps_it_whole() {
    let mut daemon = mirror_daemon();
    let mut qmp = daemon.connect().await;
    let writer = Writer::start(&daemon).await;
    ok(
        &mut qmp,
        "blockdev-mirror",
        json!({"job-id": "m1", "device": "src", "target": "dst", "sync": "full",
               "speed": 1 << 20}),
    )
    .await;
    ok(&mut qmp, "job-pause", json!({"id": "m1"})).await;
    wait_status(&mut qmp, "m1", "paused").await;
    let jobs = ok(&mut qmp, "query-block-jobs", json!({})).await;
    assert_eq!(jobs[0]["paused"], true);
    assert_eq!(jobs[0]["status"], "paused");
    ok(&mut qmp, "job-resume", json!({"id": "m1"})).await;
    let (_, message) = error(&mut qmp, "job-complete", json!({"id": "m1"})).await;
    assert_eq!(
        message,
        "Job 'm1' in state 'running' cannot accept command verb 'complete'"
    );
    // Cancelled before it is ready: a forced cancel, whatever `force` says.
    ok(&mut qmp, "block-job-cancel", json!({"device": "m1"})).await;
    let cancelled = wait_event(&mut qmp, "BLOCK_JOB_CANCELLED").await;
    assert_eq!(cancelled["data"]["device"], "m1");
    wait_event(&mut qmp, "JOB_STATUS_CHANGE").await;
    assert_eq!(export_node(&mut qmp).await, "src");
    let writes = writer.stop(&daemon);
    assert!(writes > 0);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .args([daemon.path("model.raw"), daemon.path("src.qcow2")])
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
}

#[tokio::test]
async fn a_soft_cancel_when_ready_leaves_a_synced_copy_and_the_source_in_use() {
    let mut daemon = mirror_daemon();
    let mut qmp = daemon.connect().await;
    ok(
        &mut qmp,
        "blockdev-mirror",
        json!({"job-id": "m2", "device": "src", "target": "dst", "sync": "full",
               "auto-dismiss": false}),
    )
    .await;
    wait_event(&mut qmp, "BLOCK_JOB_READY").await;
    ok(&mut qmp, "block-job-cancel", json!({"device": "m2"})).await;
    let completed = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    assert!(completed["data"].get("error").is_none(), "{completed}");
    wait_status(&mut qmp, "m2", "concluded").await;
    ok(&mut qmp, "job-dismiss", json!({"id": "m2"})).await;
    assert_eq!(export_node(&mut qmp).await, "src");
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    tool(
        "qemu-img",
        &[
            "compare",
            "-q",
            path(&daemon.path("src.qcow2")),
            path(&daemon.path("dst.qcow2")),
        ],
    );
}

#[tokio::test]
async fn refusals_are_qemus() {
    let daemon = mirror_daemon();
    let mut qmp = daemon.connect().await;
    let cases = [
        (
            json!({"device": "src", "target": "dst", "sync": "full"}),
            "Invalid job ID ''",
        ),
        (
            json!({"job-id": "j", "device": "nosuch", "target": "dst", "sync": "full"}),
            "Cannot find device='nosuch' nor node-name='nosuch'",
        ),
        (
            json!({"job-id": "j", "device": "src", "target": "src", "sync": "full"}),
            "Can't mirror node into itself",
        ),
        (
            json!({"job-id": "j", "device": "src", "target": "dst", "sync": "full", "granularity": 1000}),
            "Parameter 'granularity' expects a power of 2",
        ),
        (
            json!({"job-id": "j", "device": "src", "target": "dst", "sync": "full", "granularity": 256}),
            "Parameter 'granularity' expects a value in range [512B, 64MB]",
        ),
        (
            json!({"job-id": "j", "device": "src", "target": "dst", "sync": "full", "buf-size": -5}),
            "Invalid parameter 'buf-size'",
        ),
        (
            json!({"job-id": "j", "device": "src", "target": "dst", "sync": "bitmap"}),
            "Sync mode 'bitmap' not supported",
        ),
        (
            json!({"job-id": "j", "device": "src", "target": "dst", "sync": "full", "speed": -1}),
            "Parameter 'speed' expects a non-negative value",
        ),
        (
            json!({"job-id": "j", "device": "src", "target": "dst", "sync": "full", "filter-node-name": "src"}),
            "Duplicate nodes with node-name='src'",
        ),
    ];
    for (arguments, message) in cases {
        let (class, desc) = error(&mut qmp, "blockdev-mirror", arguments).await;
        assert_eq!((class.as_str(), desc.as_str()), ("GenericError", message));
    }
    // Nothing was left behind.
    assert!(ok(&mut qmp, "query-jobs", json!({}))
        .await
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(export_node(&mut qmp).await, "src");
    let (class, desc) = error(&mut qmp, "block-job-pause", json!({"device": "j"})).await;
    assert_eq!(
        (class.as_str(), desc.as_str()),
        ("DeviceNotActive", "Block job 'j' not found")
    );
}

#[tokio::test]
async fn job_pause_stops_a_mirror_that_copies_at_full_speed() {
    pause_holds_the_copy("blockdev-mirror").await;
}

#[tokio::test]
async fn speed_holds_the_copy_back() {
    // 64 MiB at 32 MiB/s: after the first 16 MiB in flight, at least
    // 1.5 s (a loaded machine only makes it slower).
    let daemon = mirror_daemon();
    let mut qmp = daemon.connect().await;
    let started = std::time::Instant::now();
    ok(
        &mut qmp,
        "blockdev-mirror",
        json!({"job-id": "s", "device": "src", "target": "dst", "sync": "full", "speed": 32 << 20}),
    )
    .await;
    let jobs = ok(&mut qmp, "query-block-jobs", json!({})).await;
    assert_eq!(jobs[0]["speed"], 32 << 20);
    wait_event(&mut qmp, "BLOCK_JOB_READY").await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1400), "ready after {took:?}");
    // Speed 0 lifts the limit; a negative one is refused.
    ok(
        &mut qmp,
        "block-job-set-speed",
        json!({"device": "s", "speed": 0}),
    )
    .await;
    let (_, message) = error(
        &mut qmp,
        "block-job-set-speed",
        json!({"device": "s", "speed": -1}),
    )
    .await;
    assert_eq!(message, "Parameter 'speed' expects a non-negative value");
    ok(&mut qmp, "job-cancel", json!({"id": "s"})).await;
    wait_event(&mut qmp, "BLOCK_JOB_CANCELLED").await;
}

#[tokio::test]
async fn a_mirror_to_a_remote_nbd_export_holds_what_the_client_wrote() {
    let mut daemon = mirror_daemon();
    let remote_image = daemon.path("remote.raw");
    std::fs::File::create(&remote_image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let socket = daemon.path("remote.sock");
    let mut server = common::KillOnDrop(
        Command::new("qemu-nbd")
            .args(["-t", "-e", "0", "-f", "raw", "-x", "disk", "-k"])
            .arg(&socket)
            .arg(&remote_image)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut qmp = daemon.connect().await;
    // The server may take a moment to listen.
    ok(
        &mut qmp,
        "blockdev-add",
        json!({"driver": "nbd", "node-name": "remote", "export": "disk", "open-timeout": 20,
               "server": {"type": "unix", "path": socket}}),
    )
    .await;
    let writer = Writer::start(&daemon).await;
    ok(
        &mut qmp,
        "blockdev-mirror",
        json!({"job-id": "m0", "device": "src", "target": "remote", "sync": "full"}),
    )
    .await;
    wait_event(&mut qmp, "BLOCK_JOB_READY").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(&mut qmp, "job-complete", json!({"id": "m0"})).await;
    let completed = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    assert!(completed["data"].get("error").is_none(), "{completed}");
    assert_eq!(export_node(&mut qmp).await, "remote");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(writer.stop(&daemon) > 0);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let _ = server.0.kill();
    let _ = server.0.wait();
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .args([daemon.path("model.raw"), remote_image])
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
}

//! `blockdev-backup` with real clients: a full backup, then an
//! incremental one (`sync=incremental` with a dirty bitmap), of a qcow2
//! image that a libnbd client writes and verifies throughout. The writer
//! pauses at the moment each backup starts and records the disk's exact
//! contents then; each target (the incremental one over the full one)
//! must equal those contents (`qemu-img compare`), the source must equal
//! what the client wrote last, and the bitmap must hold only what was
//! written after the last backup began. Also: QEMU's refusals, and a
//! cancelled backup gives its bitmap back.

mod common;

use common::jobs::{compare_raw, path, pause_holds_the_copy, wait_event, Writer};
use common::{error, ok, tool, TestDaemon};
use qmp::client::Client;
use serde_json::json;

/// src.qcow2 (64 MiB, data in its first 8 MiB) exported writable as
/// `disk`; full.qcow2 (node `full`) and inc.qcow2 (node `inc`, whose
/// header names full.qcow2 as backing, opened without it) as targets.
fn backup_daemon() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, full, inc) = (
        d.join("src.qcow2"),
        d.join("full.qcow2"),
        d.join("inc.qcow2"),
    );
    for image in [&src, &full] {
        common::create_qcow2(path(image), "64M");
    }
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            path(&full),
            "-F",
            "qcow2",
            path(&inc),
        ],
    );
    tool("qemu-io", &["-c", "write -P 0x5a 0 8M", path(&src)]);
    TestDaemon::start_in(dir, |dir| {
        let node = |name: &str, file: &str, extra: &str| {
            format!(
                "qcow2,node-name={name}{extra},file.driver=file,file.filename={}",
                dir.join(file).display()
            )
        };
        vec![
            "--blockdev".into(),
            node("src", "src.qcow2", ""),
            "--blockdev".into(),
            node("full", "full.qcow2", ""),
            "--blockdev".into(),
            node("inc", "inc.qcow2", ",backing="),
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

async fn bitmap_count(qmp: &mut Client) -> u64 {
    let nodes = ok(qmp, "query-named-block-nodes", json!({"flat": true})).await;
    let src = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "src")
        .unwrap();
    src["dirty-bitmaps"][0]["count"].as_u64().unwrap()
}

#[tokio::test]
async fn full_then_incremental_backups_are_points_in_time() {
    let mut daemon = backup_daemon();
    let mut qmp = daemon.connect().await;
    let mut writer = Writer::start(&daemon).await;

    writer.pause(&daemon.path("at-full.raw")).await;
    ok(
        &mut qmp,
        "block-dirty-bitmap-add",
        json!({"node": "src", "name": "b0"}),
    )
    .await;
    ok(
        &mut qmp,
        "blockdev-backup",
        json!({"job-id": "full", "device": "src", "target": "full", "sync": "full",
               "speed": 32 << 20, "filter-node-name": "cbw"}),
    )
    .await;
    let nodes = ok(&mut qmp, "query-named-block-nodes", json!({"flat": true})).await;
    assert!(nodes.to_string().contains("copy-before-write"), "{nodes}");
    let (_, busy) = error(&mut qmp, "blockdev-del", json!({"node-name": "full"})).await;
    assert_eq!(busy, "Node full is in use");
    writer.resume().await;
    let done = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    assert!(done["data"].get("error").is_none(), "{done}");
    assert!(bitmap_count(&mut qmp).await > 0);

    writer.pause(&daemon.path("at-inc.raw")).await;
    ok(
        &mut qmp,
        "blockdev-backup",
        json!({"job-id": "inc", "device": "src", "target": "inc", "sync": "incremental",
               "bitmap": "b0", "x-perf": {"max-workers": 1, "max-chunk": 65536}}),
    )
    .await;
    let nodes = ok(&mut qmp, "query-named-block-nodes", json!({"flat": true})).await;
    let src = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "src")
        .unwrap()
        .clone();
    writer.resume().await;
    let done = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    assert!(done["data"].get("error").is_none(), "{done}");
    // While it ran, the bitmap was busy.
    assert!(src.to_string().contains("\"busy\":true"), "{src}");
    writer.stop(&daemon);
    // After success the bitmap holds what was written since the second
    // backup began: the writer wrote after it.
    assert!(bitmap_count(&mut qmp).await > 0);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());

    compare_raw(&daemon.path("at-full.raw"), &daemon.path("full.qcow2"));
    // The incremental image over the full one is the second point in time.
    compare_raw(&daemon.path("at-inc.raw"), &daemon.path("inc.qcow2"));
    compare_raw(&daemon.path("model.raw"), &daemon.path("src.qcow2"));
    for image in ["src.qcow2", "full.qcow2", "inc.qcow2"] {
        tool("qemu-img", &["check", "-q", path(&daemon.path(image))]);
    }
}

#[tokio::test]
async fn a_cancelled_backup_gives_its_bitmap_back() {
    let daemon = backup_daemon();
    let mut qmp = daemon.connect().await;
    ok(
        &mut qmp,
        "block-dirty-bitmap-add",
        json!({"node": "src", "name": "b0"}),
    )
    .await;
    let uri = format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    );
    tool("qemu-io", &["-f", "raw", "-c", "write -P 7 0 16M", &uri]);
    let before = bitmap_count(&mut qmp).await;
    assert_eq!(before, 16 << 20);
    ok(
        &mut qmp,
        "blockdev-backup",
        json!({"job-id": "b", "device": "src", "target": "full", "sync": "bitmap",
               "bitmap": "b0", "bitmap-mode": "on-success", "speed": 1}),
    )
    .await;
    let (_, message) = error(
        &mut qmp,
        "block-dirty-bitmap-remove",
        json!({"node": "src", "name": "b0"}),
    )
    .await;
    assert_eq!(
        message,
        "Bitmap 'b0' is currently in use by another operation and cannot be used"
    );
    // Written while the backup runs: goes to the bitmap's successor.
    tool("qemu-io", &["-f", "raw", "-c", "write -P 8 32M 1M", &uri]);
    ok(&mut qmp, "job-cancel", json!({"id": "b"})).await;
    wait_event(&mut qmp, "BLOCK_JOB_CANCELLED").await;
    // Nothing lost: the old bits and the new ones.
    assert_eq!(bitmap_count(&mut qmp).await, (16 << 20) + (1 << 20));
    let nodes = ok(&mut qmp, "query-named-block-nodes", json!({"flat": true})).await;
    assert!(!nodes.to_string().contains("copy-before-write"), "{nodes}");
}

#[tokio::test]
async fn refusals_are_qemus() {
    let daemon = backup_daemon();
    let mut qmp = daemon.connect().await;
    ok(
        &mut qmp,
        "block-dirty-bitmap-add",
        json!({"node": "src", "name": "b0"}),
    )
    .await;
    let cases = [
        (
            json!({"device": "src", "target": "full", "sync": "full"}),
            "Invalid job ID ''",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "src", "sync": "full"}),
            "Source and target cannot be the same",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "bitmap"}),
            "must provide a valid bitmap name for 'bitmap' sync mode",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "bitmap", "bitmap": "nosuch"}),
            "Bitmap 'nosuch' could not be found",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "incremental", "bitmap": "b0",
                "bitmap-mode": "never"}),
            "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "full", "bitmap-mode": "never"}),
            "Cannot specify bitmap sync mode without a bitmap",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "full", "bitmap": "b0"}),
            "Bitmap sync mode must be given when providing a bitmap",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "full", "speed": -1}),
            "Parameter 'speed' expects a non-negative value",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "full",
                   "x-perf": {"max-workers": 0}}),
            "max-workers must be between 1 and 2147483647",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "full",
                   "x-perf": {"max-chunk": -1}}),
            "max-chunk must be zero (which means no limit) or positive",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "full",
                   "x-perf": {"max-chunk": 4096}}),
            "Required max-chunk (4096) is less than backup cluster size (65536)",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "full",
                   "x-perf": {"min-cluster-size": 1000}}),
            "Could not create node: Cannot create block-copy-state: \
             min-cluster-size needs to be a power of 2",
        ),
        (
            json!({"job-id": "b", "device": "src", "target": "full", "sync": "full",
                   "x-perf": {"min-cluster-size": 1 << 20, "max-chunk": 65536}}),
            "Required max-chunk (65536) is less than backup cluster size (1048576)",
        ),
    ];
    for (arguments, message) in cases {
        let (class, desc) = error(&mut qmp, "blockdev-backup", arguments).await;
        assert_eq!((class.as_str(), desc.as_str()), ("GenericError", message));
    }
    assert!(ok(&mut qmp, "query-jobs", json!({}))
        .await
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_compressed_backup_under_writes_is_its_point_in_time() {
    let mut daemon = backup_daemon();
    let mut qmp = daemon.connect().await;
    let mut writer = Writer::start(&daemon).await;
    writer.pause(&daemon.path("at-start.raw")).await;
    ok(
        &mut qmp,
        "blockdev-backup",
        json!({"job-id": "c", "device": "src", "target": "full", "sync": "full",
               "compress": true, "speed": 32 << 20}),
    )
    .await;
    writer.resume().await;
    let done = wait_event(&mut qmp, "BLOCK_JOB_COMPLETED").await;
    assert!(done["data"].get("error").is_none(), "{done}");
    writer.stop(&daemon);
    ok(&mut qmp, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let target = daemon.path("full.qcow2");
    compare_raw(&daemon.path("at-start.raw"), &target);
    tool("qemu-img", &["check", "-q", path(&target)]);
    let map: serde_json::Value =
        serde_json::from_str(&tool("qemu-img", &["map", "--output=json", path(&target)])).unwrap();
    let compressed = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|extent| extent["compressed"] == true)
        .count();
    assert!(compressed > 0, "{map}");
}

#[tokio::test]
async fn job_pause_stops_a_backup_that_copies_at_full_speed() {
    pause_holds_the_copy("blockdev-backup").await;
}

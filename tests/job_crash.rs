//! Jobs killed half way: `kill -9` in the middle of a mirror, a backup, a
//! stream and a commit leaves every image passing `qemu-img check`, and
//! the source still reads exactly as before the job. SIGTERM during a
//! mirror cancels it cleanly: the daemon exits 0.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ok, tool, TestDaemon};
use serde_json::{json, Value};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// base (data) <- mid (data) <- top (data), and an empty `target` of the
/// same size; a raw copy of what `top` reads is `before.raw`.
fn images(dir: &Path) {
    let img = |name: &str| dir.join(name);
    common::create_qcow2(path(&img("base.qcow2")), "32M");
    tool(
        "qemu-io",
        &["-c", "write -P 0x11 0 24M", path(&img("base.qcow2"))],
    );
    for (image, backing) in [("mid.qcow2", "base.qcow2"), ("top.qcow2", "mid.qcow2")] {
        tool(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                path(&img(backing)),
                "-F",
                "qcow2",
                path(&img(image)),
            ],
        );
    }
    tool(
        "qemu-io",
        &["-c", "write -P 0x22 8M 8M", path(&img("mid.qcow2"))],
    );
    tool(
        "qemu-io",
        &["-c", "write -P 0x33 20M 4M", path(&img("top.qcow2"))],
    );
    common::create_qcow2(path(&img("target.qcow2")), "32M");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            path(&img("top.qcow2")),
            path(&img("before.raw")),
        ],
    );
}

fn start() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    TestDaemon::start_in(dir, |d| {
        let node = |name: &str, extra: &str| {
            format!(
                "qcow2,node-name={name}{extra},file.driver=file,file.filename={}",
                d.join(format!("{name}.qcow2")).display()
            )
        };
        vec![
            "--blockdev".into(),
            node("base", ""),
            "--blockdev".into(),
            node("mid", ",backing=base"),
            "--blockdev".into(),
            node("top", ",backing=mid"),
            "--blockdev".into(),
            node("target", ""),
        ]
    })
}

/// Starts `command`, lets it copy a while (slowly), and kills the daemon.
async fn kill_during(command: &str, arguments: Value) -> TestDaemon {
    let mut daemon = start();
    let mut qmp = daemon.connect().await;
    ok(&mut qmp, command, arguments).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let jobs = ok(&mut qmp, "query-jobs", json!({})).await;
    assert_eq!(jobs[0]["status"], "running", "{jobs}");
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    daemon
}

fn check_all(daemon: &TestDaemon) {
    for image in ["base.qcow2", "mid.qcow2", "top.qcow2", "target.qcow2"] {
        tool("qemu-img", &["check", "-q", path(&daemon.path(image))]);
    }
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .args([daemon.path("before.raw"), daemon.path("top.qcow2")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

const SLOW: i64 = 4 << 20;

#[tokio::test]
async fn kill_during_a_mirror() {
    let daemon = kill_during(
        "blockdev-mirror",
        json!({"job-id": "j", "device": "top", "target": "target", "sync": "full", "speed": SLOW}),
    )
    .await;
    check_all(&daemon);
}

#[tokio::test]
async fn kill_during_a_backup() {
    let daemon = kill_during(
        "blockdev-backup",
        json!({"job-id": "j", "device": "top", "target": "target", "sync": "full", "speed": SLOW}),
    )
    .await;
    check_all(&daemon);
}

#[tokio::test]
async fn kill_during_a_stream() {
    let daemon = kill_during(
        "block-stream",
        json!({"job-id": "j", "device": "top", "speed": SLOW}),
    )
    .await;
    check_all(&daemon);
}

#[tokio::test]
async fn kill_during_a_commit() {
    let daemon = kill_during(
        "block-commit",
        json!({"job-id": "j", "device": "top", "top-node": "mid", "base-node": "base", "speed": SLOW}),
    )
    .await;
    check_all(&daemon);
}

#[tokio::test]
async fn sigterm_cancels_a_running_mirror_and_exits_cleanly() {
    let mut daemon = start();
    let mut qmp = daemon.connect().await;
    ok(
        &mut qmp,
        "blockdev-mirror",
        json!({"job-id": "j", "device": "top", "target": "target", "sync": "full", "speed": SLOW}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().success(), "{}", daemon.stderr());
    check_all(&daemon);
}

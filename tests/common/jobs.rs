//! What the job tests share: waiting for an event or a job status, a path
//! as text, the libnbd client of tests/python/nbd_pattern_writer.py that
//! writes and verifies while a job runs (and pauses at the instants a
//! test chooses), comparing an image with a raw copy, and a copy slow
//! enough to be paused in the middle.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qmp::client::Client;
use serde_json::{json, Value};

use super::{ok, TestDaemon};

/// Bytes of [`slow_copy_daemon`]'s source.
const SLOW_SOURCE_LEN: u64 = 64 << 20;

/// Waits for the event `name`; other events are skipped.
pub async fn wait_event(client: &mut Client, name: &str) -> Value {
    for _ in 0..600 {
        if let Some(event) = client.next_event(Duration::from_millis(500)).await.unwrap() {
            if event["event"] == name {
                return event;
            }
        }
    }
    panic!("no {name} event");
}

async fn job_status(client: &mut Client, id: &str) -> Option<String> {
    let jobs = ok(client, "query-jobs", json!({})).await;
    jobs.as_array()
        .unwrap()
        .iter()
        .find(|job| job["id"] == id)
        .map(|job| job["status"].as_str().unwrap().to_owned())
}

/// Waits until job `id` has `status` (for up to 30 s).
pub async fn wait_status(client: &mut Client, id: &str, status: &str) {
    for _ in 0..3000 {
        if job_status(client, id).await.as_deref() == Some(status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never {status}");
}

/// A daemon with `slow`, 64 MiB of data behind a throttle filter that
/// reads 8 MiB/s, and `sink`, a `null-co` node of the same size: a job
/// copying one to the other without a speed limit never sleeps, and
/// takes seconds.
fn slow_copy_daemon() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0x5a; SLOW_SOURCE_LEN as usize];
    std::fs::write(dir.path().join("data.raw"), data).unwrap();
    TestDaemon::start_in(dir, |dir| {
        vec![
            "--object".into(),
            "throttle-group,id=tg,x-bps-read=8388608".into(),
            "--blockdev".into(),
            format!(
                "file,node-name=lo,filename={}",
                dir.join("data.raw").display()
            ),
            "--blockdev".into(),
            "throttle,node-name=slow,throttle-group=tg,file=lo".into(),
            "--blockdev".into(),
            format!("null-co,node-name=sink,size={SLOW_SOURCE_LEN}"),
        ]
    })
}

/// Starts `command` (`blockdev-mirror` or `blockdev-backup`, `sync=full`)
/// copying [`slow_copy_daemon`]'s source at full speed, and pauses it: it
/// must pause once the copies in flight end, long before the whole source
/// is copied (QEMU pauses at its next iteration too), and copy nothing
/// while paused; then it resumes and is cancelled.
pub async fn pause_holds_the_copy(command: &str) {
    let daemon = slow_copy_daemon();
    let client = &mut daemon.connect().await;
    let id = "p";
    let args = json!({"job-id": id, "device": "slow", "target": "sink", "sync": "full"});
    ok(client, command, args).await;
    ok(client, "job-pause", json!({"id": id})).await;
    wait_status(client, id, "paused").await;
    let progress = |jobs: &Value| jobs[0]["current-progress"].as_u64().unwrap();
    let paused = ok(client, "query-jobs", json!({})).await;
    assert!(
        progress(&paused) < SLOW_SOURCE_LEN,
        "paused only when done: {paused}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = ok(client, "query-jobs", json!({})).await;
    assert_eq!(
        progress(&later),
        progress(&paused),
        "a paused job copied: {later}"
    );
    ok(client, "job-resume", json!({"id": id})).await;
    wait_status(client, id, "running").await;
    ok(client, "job-cancel", json!({"id": id})).await;
    wait_event(client, "BLOCK_JOB_CANCELLED").await;
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts that the raw file `raw` and the qcow2 image `image` read the
/// same (`qemu-img compare`).
pub fn compare_raw(raw: &Path, image: &Path) {
    let out = Command::new("qemu-img")
        .args([
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            path(raw),
            path(image),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The writer on the export `disk` of the daemon's `nbd.sock`. Its model
/// of the disk goes to `model.raw` when it stops.
pub struct Writer {
    child: Child,
    pause: PathBuf,
}

impl Writer {
    /// Starts it and returns once it writes.
    pub async fn start(daemon: &TestDaemon) -> Writer {
        let pause = daemon.path("pause");
        let mut child = Command::new("/usr/bin/python3")
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
                path(&pause),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 with libnbd");
        while !daemon.path("stop.started").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the writer ended early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let it write a while before the test goes on.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Writer { child, pause }
    }

    /// Pauses it; the disk's contents at that instant are saved as `saved`.
    pub async fn pause(&mut self, saved: &Path) {
        std::fs::write(&self.pause, b"").unwrap();
        let acked = self.pause.with_extension("acked");
        while !acked.exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the writer ended early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::rename(self.pause.with_extension("model"), saved).unwrap();
    }

    /// Lets it go on, and write a while.
    pub async fn resume(&mut self) {
        std::fs::remove_file(&self.pause).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Stops it; it checks the whole disk first, and must have seen no
    /// failed request and no wrong data. Returns how many writes it made.
    pub fn stop(self, daemon: &TestDaemon) -> u64 {
        std::fs::write(daemon.path("stop"), b"").unwrap();
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the NBD writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

/// Empty qcow2 images base.qcow2 <- mid.qcow2 <- top.qcow2 of `size`
/// in `dir`, each naming the one below as its backing file.
pub fn qcow2_chain(dir: &Path, size: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (base, mid, top) = (
        dir.join("base.qcow2"),
        dir.join("mid.qcow2"),
        dir.join("top.qcow2"),
    );
    super::tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path(&base), size],
    );
    for (image, backing) in [(&mid, &base), (&top, &mid)] {
        super::tool(
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
                size,
            ],
        );
    }
    (base, mid, top)
}

/// base.qcow2 (16 MiB; 0x11 in 0..4M) <- mid.qcow2 (0x22 in 4M..8M,
/// zeroes over the base's first MiB) <- top.qcow2 (0x33 in 8M..12M) in
/// `dir`, and the options that open them as `base`, `mid` and `top` with
/// `top` exported writable as `disk`.
pub fn three_deep_chain(dir: &Path) -> impl FnOnce(&Path) -> Vec<String> {
    let (base, mid, top) = qcow2_chain(dir, "16M");
    super::tool("qemu-io", &["-c", "write -P 0x11 0 4M", path(&base)]);
    super::tool(
        "qemu-io",
        &[
            "-c",
            "write -P 0x22 4M 4M",
            "-c",
            "write -z 0 1M",
            path(&mid),
        ],
    );
    super::tool("qemu-io", &["-c", "write -P 0x33 8M 4M", path(&top)]);
    |dir: &Path| {
        let node = |name: &str, extra: &str| {
            format!(
                "qcow2,node-name={name}{extra},file.driver=file,file.filename={}",
                dir.join(format!("{name}.qcow2")).display()
            )
        };
        vec![
            "--blockdev".into(),
            node("base", ""),
            "--blockdev".into(),
            node("mid", ",backing=base"),
            "--blockdev".into(),
            node("top", ",backing=mid"),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "nbd,id=e0,node-name=top,name=disk,writable=on".into(),
        ]
    }
}

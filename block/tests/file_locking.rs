//! Image locks seen from QEMU's own tools: storaged, qemu-io, qemu-img and
//! qemu-storage-daemon must refuse and allow each other exactly as two
//! QEMU processes do.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use block::{BackendPerms, BlockGraph, Perm};
use common::{add, file_node, image, pattern};
use serde_json::json;

/// What a guest device takes: it writes and lets others only read.
fn device() -> BackendPerms {
    BackendPerms {
        perm: Perm::CONSISTENT_READ | Perm::WRITE,
        shared: Perm::CONSISTENT_READ | Perm::WRITE_UNCHANGED,
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn qemu_io(path: &Path, extra: &[&str], command: &str) -> Output {
    let path = path.to_str().unwrap();
    let mut args = vec!["-f", "raw"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-c", command, path]);
    run("qemu-io", &args)
}

/// An interactive qemu-io holding `path` open (read-write) until dropped.
struct QemuIoSession(Child);

impl QemuIoSession {
    fn open(path: &Path) -> Self {
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", path.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-io");
        // Once it answers a read, it has the image open and locked.
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"read 0 512\n").unwrap();
        stdin.flush().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let answered = lines.any(|l| l.map(|l| l.contains("read 512/512")).unwrap_or(false));
        assert!(answered, "qemu-io did not open the image");
        QemuIoSession(child)
    }
}

impl Drop for QemuIoSession {
    fn drop(&mut self) {
        if let Some(stdin) = self.0.stdin.as_mut() {
            let _ = stdin.write_all(b"quit\n");
        }
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_exclusive_writer_keeps_qemu_tools_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let before = std::fs::read(&path).unwrap();
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    let device = graph.attach_backend_with("f0", device()).unwrap();

    let write = qemu_io(&path, &[], "write -P 0x11 0 512");
    assert!(!write.status.success());
    assert!(
        text(&write).contains("Failed to get \"write\" lock"),
        "{}",
        text(&write)
    );
    let resize = run(
        "qemu-img",
        &["resize", "-f", "raw", path.to_str().unwrap(), "2M"],
    );
    assert!(!resize.status.success());
    assert!(text(&resize).contains("lock"), "{}", text(&resize));
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");

    // Readers that share writing are welcome.
    let read = qemu_io(&path, &["-r"], "read -P 0 0 1");
    assert!(read.status.success(), "{}", text(&read));

    drop(device);
    let write = qemu_io(&path, &[], "write -P 0x11 0 512");
    assert!(write.status.success(), "{}", text(&write));
    assert!(std::fs::read(&path).unwrap()[..512]
        .iter()
        .all(|&b| b == 0x11));
}

#[tokio::test]
async fn an_export_shares_like_qsds() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    let _export = graph.attach_backend("f0", true).unwrap();
    // As with QSD's writable export: others may write, nobody may resize.
    let write = qemu_io(&path, &[], "write -P 0x22 4096 512");
    assert!(write.status.success(), "{}", text(&write));
    let resize = run(
        "qemu-img",
        &["resize", "-f", "raw", path.to_str().unwrap(), "2M"],
    );
    assert!(
        text(&resize).contains("Failed to get \"resize\" lock"),
        "{}",
        text(&resize)
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn qemu_io_holding_the_image_refuses_an_exclusive_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    add(
        &graph,
        json!({"driver": "file", "node-name": "unlocked", "filename": path, "locking": "off"}),
    )
    .await;
    let session = QemuIoSession::open(&path);
    assert_eq!(
        graph
            .attach_backend_with("f0", device())
            .unwrap_err()
            .message,
        "Failed to get shared \"write\" lock"
    );
    // A failed attach leaves no lock behind: qemu-io's own writes go on,
    // and users that share writing attach.
    let export = graph.attach_backend("f0", true).unwrap();
    drop(export);
    let _ignoring = graph.attach_backend_with("unlocked", device()).unwrap();
    drop(session);
    let _device = graph.attach_backend_with("f0", device()).unwrap();
}

#[tokio::test]
async fn permission_changes_move_the_lock_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "file": "f0"}),
    )
    .await;
    let resize_ok = || {
        let out = run(
            "qemu-img",
            &["resize", "-f", "raw", path.to_str().unwrap(), "1M"],
        );
        out.status.success()
    };
    assert!(resize_ok(), "no user, no lock");
    let reader = graph.attach_backend("r0", false).unwrap();
    assert!(!resize_ok(), "the reader unshares resize through raw");
    let device = graph
        .attach_backend_with(
            "r0",
            BackendPerms {
                perm: Perm::CONSISTENT_READ | Perm::WRITE,
                shared: Perm::ALL,
            },
        )
        .unwrap();
    assert!(!resize_ok());
    drop(reader);
    assert!(resize_ok(), "the remaining writer shares resize");
    drop(device);
    assert!(resize_ok());
}

/// Waits until some process holds a lock on `path` (QSD locks the image
/// when it creates the export, after opening the node and the socket).
fn wait_locked(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let inode = format!(":{} ", std::fs::metadata(path).unwrap().ino());
    let start = Instant::now();
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains(&inode))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "QSD did not lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when the test ends, passing or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn qsd_and_storaged_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let socket = dir.path().join("nbd.sock");
    let blockdev = format!("driver=file,node-name=f0,filename={}", path.display());
    let nbd = format!("addr.type=unix,addr.path={}", socket.display());

    // QSD exports writable first: an exclusive writer here is refused.
    let qsd = Command::new("qemu-storage-daemon")
        .args(["--blockdev", &blockdev, "--nbd-server", &nbd])
        .args(["--export", "type=nbd,id=e0,node-name=f0,writable=on"])
        .stdout(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("spawn qemu-storage-daemon");
    wait_locked(&path);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    assert_eq!(
        graph
            .attach_backend_with("f0", device())
            .unwrap_err()
            .message,
        "Failed to get shared \"write\" lock"
    );
    let shared_export = graph.attach_backend("f0", true).unwrap();
    drop(qsd);
    drop(shared_export);

    // Now storaged writes exclusively: QSD's writable export cannot start.
    let _device = graph.attach_backend_with("f0", device()).unwrap();
    let refused = Command::new("timeout")
        .args([
            "10",
            "qemu-storage-daemon",
            "--blockdev",
            &blockdev,
            "--nbd-server",
            &nbd,
        ])
        .args(["--export", "type=nbd,id=e0,node-name=f0,writable=on"])
        .output()
        .expect("run qemu-storage-daemon");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("Failed to get \"write\" lock"),
        "{}",
        text(&refused)
    );
}

#[tokio::test]
async fn an_inactive_node_takes_locks_once_activated() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "file", "node-name": "f0", "active": false, "filename": path}),
    )
    .await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "active": false, "file": "f0"}),
    )
    .await;
    let r0 = graph.node("r0").unwrap();
    assert!(!r0.is_active() && !r0.is_writable());
    let err = graph.attach_backend("r0", true).err().unwrap();
    assert_eq!(
        err.message,
        "Permission 'consistent read, write' unavailable on inactive node"
    );
    let reader = graph.attach_backend("r0", false).unwrap();
    let resize = run(
        "qemu-img",
        &["resize", "-f", "raw", path.to_str().unwrap(), "2M"],
    );
    assert!(resize.status.success(), "no locks: {}", text(&resize));

    // Inline children are opened active, as in QEMU.
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r1", "active": false,
               "file": {"driver": "file", "filename": path}}),
    )
    .await;
    let active: Vec<bool> = graph
        .query_named_block_nodes(true)
        .iter()
        .map(|n| n.active)
        .collect();
    assert_eq!(active, [false, true, false, false]);

    graph.set_active(Some("r0"), true).await.unwrap();
    assert!(r0.is_active() && graph.node("f0").unwrap().is_active());
    let export = graph.attach_backend("r0", true).unwrap();
    let resize = run(
        "qemu-img",
        &["resize", "-f", "raw", path.to_str().unwrap(), "1M"],
    );
    assert!(
        text(&resize).contains("Failed to get \"resize\" lock"),
        "the export's locks are in place: {}",
        text(&resize)
    );
    drop((export, reader));
}

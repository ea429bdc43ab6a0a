//! The FUSE export through the real binary and the real kernel client:
//! a qcow2 image mounted over a regular file reads as its raw conversion;
//! writes, holes, zeroes and growth through the mount reach the image and
//! an NBD export of the same node; many processes use it at once;
//! deletion unmounts it even while a reader has it open; `quit`, SIGTERM
//! and SIGINT leave no mount (with a concluded job present); a daemon killed with the file mounted
//! leaves a mount `fusermount3 -u` clears. Messages are QSD 10's.

mod common;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{error, is_mounted, ok, tool, TestDaemon};
use qmp::client::Client;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const EVENT_WAIT: Duration = Duration::from_secs(20);

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A mountpoint file that is unmounted (lazily) when the test ends, even
/// if it failed halfway.
struct Mountpoint(PathBuf);

impl Mountpoint {
    fn new(dir: &Path, name: &str) -> Mountpoint {
        let path = dir.join(name);
        std::fs::write(&path, b"not an image").expect("mountpoint file");
        Mountpoint(path)
    }

    fn path(&self) -> &str {
        path_str(&self.0)
    }
}

impl Drop for Mountpoint {
    fn drop(&mut self) {
        // Stacked mounts come off one at a time; a few tries at most.
        for _ in 0..3 {
            if !is_mounted(&self.0) {
                break;
            }
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A qcow2 image with data in a few places, a zero cluster and holes.
fn qcow2_image(dir: &Path, size: u64) -> PathBuf {
    let image = dir.join("disk.qcow2");
    let image_str = path_str(&image);
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", image_str, &size.to_string()],
    );
    tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 1M",
            "-c",
            "write -P 0x17 5000k 300k",
            "-c",
            "write -z 8M 64k",
            "-c",
            "write -P 0xee 40M 4k",
            image_str,
        ],
    );
    image
}

async fn expect_deleted(client: &mut Client, id: &str) {
    let event = client
        .next_event(EVENT_WAIT)
        .await
        .expect("monitor")
        .expect("BLOCK_EXPORT_DELETED");
    assert_eq!(event["event"], "BLOCK_EXPORT_DELETED", "{event}");
    assert_eq!(event["data"], json!({"id": id}));
}

fn seek(file: &File, offset: u64, whence: i32) -> Result<u64, i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a descriptor this test owns; no memory is passed.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if at < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(at as u64)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_qcow2_image_is_its_raw_contents() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = qcow2_image(dir.path(), 64 * MIB);
    let mnt = Mountpoint::new(dir.path(), "disk.raw");
    let blockdev = format!(
        "driver=qcow2,node-name=disk,file.driver=file,file.filename={}",
        image.display()
    );
    let export = format!("type=fuse,id=f,node-name=disk,mountpoint={}", mnt.path());
    let daemon = TestDaemon::start(&["--blockdev", &blockdev, "--export", &export]);
    assert!(is_mounted(&mnt.0));

    // The same bytes as qemu-img's raw conversion.
    let reference = dir.path().join("reference.raw");
    tool(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            "qcow2",
            "-O",
            "raw",
            path_str(&image),
            path_str(&reference),
        ],
    );
    let mounted = std::fs::read(&mnt.0).expect("read the mount");
    assert_eq!(mounted.len() as u64, 64 * MIB);
    assert!(mounted == std::fs::read(&reference).expect("reference"));

    // A read-only export: 0400, the daemon's user, the image's size.
    let meta = std::fs::metadata(&mnt.0).expect("stat");
    assert_eq!(meta.mode(), libc::S_IFREG | 0o400);
    assert_eq!(meta.uid(), unsafe { libc::getuid() });
    assert_eq!(meta.len(), 64 * MIB);

    // Tools take it for a raw image.
    let info = tool("qemu-img", &["info", "--output=json", mnt.path()]);
    let info: Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual-size"], 64 * MIB);
    let same = tool(
        "qemu-img",
        &[
            "compare",
            "-U",
            "-f",
            "raw",
            "-F",
            "qcow2",
            mnt.path(),
            path_str(&image),
        ],
    );
    assert!(same.contains("Images are identical"), "{same}");
    tool(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x17 5000k 300k",
            "-c",
            "read -P 0 8M 64k",
            mnt.path(),
        ],
    );

    // Data and holes from the image's allocation.
    let file = File::open(&mnt.0).expect("open");
    assert_eq!(seek(&file, 0, libc::SEEK_DATA), Ok(MIB));
    assert_eq!(seek(&file, MIB, libc::SEEK_HOLE), Ok(2 * MIB));
    assert_eq!(seek(&file, 8 * MIB, libc::SEEK_DATA), Ok(40 * MIB));
    assert_eq!(seek(&file, 41 * MIB, libc::SEEK_HOLE), Ok(41 * MIB));
    assert_eq!(seek(&file, 41 * MIB, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(seek(&file, 64 * MIB, libc::SEEK_HOLE), Err(libc::ENXIO));
    // cp finds the holes too: the copy is sparse.
    let copy = dir.path().join("copy.raw");
    tool("cp", &["--sparse=always", mnt.path(), path_str(&copy)]);
    assert!(std::fs::metadata(&copy).expect("copy").blocks() * 512 < 4 * MIB);

    // Writes, truncation and fallocate are refused.
    let writer = std::fs::OpenOptions::new().write(true).open(&mnt.0);
    if let Ok(writer) = writer {
        let err = writer.write_at(b"x", 0).expect_err("read-only write");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        let err = writer.set_len(MIB).expect_err("read-only truncate");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    }
    drop((file, daemon));
}

/// `qemu-io` command `verb` (`write` or `read`) of MiB number `i`
/// (24 + i) with its own pattern byte (0x30 + i).
fn numbered_mib(verb: &str, i: u64) -> String {
    format!("{verb} -P {} {}M 1M", 0x30 + i, 24 + i)
}

/// `count` runs of `verb` on `target`, one MiB each (see [`numbered_mib`]).
fn numbered_runs(verb: &str, count: u64, target: &str) -> Vec<(Vec<String>, String)> {
    (0..count)
        .map(|i| (vec![numbered_mib(verb, i)], target.to_string()))
        .collect()
}

/// Runs `qemu-io` processes at once, one per command list, and checks
/// each succeeded.
fn qemu_io_at_once(runs: &[(Vec<String>, String)]) {
    let children: Vec<_> = runs
        .iter()
        .map(|(commands, target)| {
            let mut args = vec!["-f".to_string(), "raw".to_string()];
            for command in commands {
                args.extend(["-c".to_string(), command.clone()]);
            }
            args.push(target.clone());
            Command::new("qemu-io")
                .args(&args)
                .stdout(Stdio::piped())
                .spawn()
                .expect("qemu-io")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("qemu-io");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.contains("Pattern") && !stdout.contains("failed"),
            "{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_writes_and_fuse_reads_of_one_node_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = qcow2_image(dir.path(), 64 * MIB);
    let mnt = Mountpoint::new(dir.path(), "disk.raw");
    let socket = dir.path().join("nbd.sock");
    let blockdev = format!(
        "driver=qcow2,node-name=disk,file.driver=file,file.filename={}",
        image.display()
    );
    let server = format!("addr.type=unix,addr.path={}", socket.display());
    let daemon = TestDaemon::start(&[
        "--blockdev",
        &blockdev,
        "--nbd-server",
        &server,
        "--object",
        "iothread,id=io0",
    ]);
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "block-export-add",
        json!({"type": "nbd", "id": "n", "node-name": "disk", "writable": true,
               "iothread": "io0"}),
    )
    .await;
    // A writable FUSE export takes the resize permission, which the NBD
    // export does not share (QSD refuses the same way).
    let add_fuse = |writable: bool| {
        json!({"type": "fuse", "id": "f", "node-name": "disk", "writable": writable,
               "mountpoint": mnt.path(), "iothread": "io0"})
    };
    let (_, desc) = error(&mut client, "block-export-add", add_fuse(true)).await;
    assert!(
        desc.starts_with("Permission conflict on node 'disk'"),
        "{desc}"
    );
    ok(&mut client, "block-export-add", add_fuse(false)).await;
    let listed = ok(&mut client, "query-block-exports", json!({})).await;
    assert_eq!(
        listed,
        json!([
            {"id": "f", "type": "fuse", "node-name": "disk", "shutting-down": false},
            {"id": "n", "type": "nbd", "node-name": "disk", "shutting-down": false},
        ])
    );
    let nbd = format!("nbd+unix:///disk?socket={}", socket.display());
    let mount = mnt.path().to_string();
    // Writers over NBD while readers read other ranges through the mount,
    // then each range is read back the other way.
    let mut runs = Vec::new();
    for i in 0..4u64 {
        runs.push((vec![numbered_mib("write", i)], nbd.clone()));
        runs.push((vec!["read -P 0x5a 1M 1M".to_string()], mount.clone()));
    }
    qemu_io_at_once(&runs);
    qemu_io_at_once(&numbered_runs("read", 4, &mount));
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_holes_and_growth_through_the_mount_reach_the_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = qcow2_image(dir.path(), 64 * MIB);
    let mnt = Mountpoint::new(dir.path(), "disk.raw");
    let blockdev = format!(
        "driver=qcow2,node-name=disk,discard=unmap,file.driver=file,file.discard=unmap,\
         file.filename={}",
        image.display()
    );
    let daemon = TestDaemon::start(&["--blockdev", &blockdev]);
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "block-export-add",
        json!({"type": "fuse", "id": "f", "node-name": "disk", "writable": true,
               "mountpoint": mnt.path()}),
    )
    .await;
    assert_eq!(
        std::fs::metadata(&mnt.0).expect("stat").mode(),
        libc::S_IFREG | 0o600
    );

    // dd through the mount, read back by qemu-io through the mount.
    let pattern = dir.path().join("pattern");
    std::fs::write(&pattern, vec![0xab; MIB as usize]).expect("pattern");
    tool(
        "dd",
        &[
            &format!("if={}", pattern.display()),
            &format!("of={}", mnt.path()),
            "bs=64k",
            "seek=48",
            "conv=notrunc,fsync",
            "status=none",
        ],
    );
    tool(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0xab 3M 1M", mnt.path()],
    );

    // A punched hole is a hole in the image; a zeroed range reads zeroes.
    tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xcd 20M 512k", mnt.path()],
    );
    tool("fallocate", &["-p", "-o", "1M", "-l", "1M", mnt.path()]);
    let file = File::open(&mnt.0).expect("open");
    assert_eq!(seek(&file, MIB, libc::SEEK_DATA), Ok(3 * MIB));
    let map = tool(
        "qemu-img",
        &["map", "-U", "--output=json", path_str(&image)],
    );
    let map: Vec<Value> = serde_json::from_str(&map).expect("map");
    let covers = |e: &&Value, at: u64| {
        let start = e["start"].as_u64().expect("start");
        start <= at && at < start + e["length"].as_u64().expect("length")
    };
    let at_1m = map
        .iter()
        .find(|e| covers(e, MIB))
        .expect("extent at 1 MiB");
    assert_eq!(at_1m["data"], false, "{at_1m}");
    tool("fallocate", &["-z", "-o", "20M", "-l", "256k", mnt.path()]);
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0 20M 256k",
            "-c",
            "read -P 0xcd 20736k 256k",
            mnt.path(),
        ],
    );

    // Many processes at once: eight writers, then eight readers.
    let mount = mnt.path().to_string();
    qemu_io_at_once(&numbered_runs("write", 8, &mount));
    qemu_io_at_once(&numbered_runs("read", 8, &mount));

    // Growth: truncate grows the image; a write past the end of a
    // non-growable export fails.
    tool("truncate", &["-s", "65M", mnt.path()]);
    assert_eq!(std::fs::metadata(&mnt.0).expect("stat").len(), 65 * MIB);
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&mnt.0)
        .expect("open for writing");
    let err = writer
        .write_at(b"past", 66 * MIB)
        .expect_err("past the end");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    drop((writer, file));

    // A safe delete unmounts; the image is consistent and holds it all.
    common::delete_export(&mut client, "f").await;
    expect_deleted(&mut client, "f").await;
    assert!(!is_mounted(&mnt.0));
    assert_eq!(std::fs::read(&mnt.0).expect("file"), b"not an image");
    ok(&mut client, "quit", json!({})).await;
    drop(daemon);
    tool("qemu-img", &["check", "-q", path_str(&image)]);
    let info = tool("qemu-img", &["info", "--output=json", path_str(&image)]);
    let info: Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["virtual-size"], 65 * MIB);
    tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0xab 3M 1M",
            "-c",
            "read -P 0x37 31M 1M",
            path_str(&image),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growable_export_grows_with_writes_past_the_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = dir.path().join("disk.img");
    File::create(&raw)
        .expect("image")
        .set_len(MIB)
        .expect("size");
    let mnt = Mountpoint::new(dir.path(), "grow.raw");
    let blockdev = format!("driver=file,node-name=disk,filename={}", raw.display());
    let export = format!(
        "type=fuse,id=f,node-name=disk,mountpoint={},writable=on,growable=on",
        mnt.path()
    );
    let _daemon = TestDaemon::start(&["--blockdev", &blockdev, "--export", &export]);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&mnt.0)
        .expect("open");
    let block = vec![0x42u8; 4096];
    file.write_at(&block, 3 * MIB).expect("write past the end");
    assert_eq!(file.metadata().expect("stat").len(), 3 * MIB + 4096);
    assert_eq!(std::fs::metadata(&raw).expect("stat").len(), 3 * MIB + 4096);
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x42 3M 4k",
            "-c",
            "read -P 0 1M 1M",
            mnt.path(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_export_unmounts_it_while_a_reader_has_it_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = qcow2_image(dir.path(), 64 * MIB);
    let mnt = Mountpoint::new(dir.path(), "disk.raw");
    let blockdev = format!(
        "driver=qcow2,node-name=disk,file.driver=file,file.filename={}",
        image.display()
    );
    let daemon = TestDaemon::start(&["--blockdev", &blockdev]);
    let mut client = daemon.connect().await;
    let add = json!({"type": "fuse", "id": "f", "node-name": "disk", "mountpoint": mnt.path()});
    ok(&mut client, "block-export-add", add.clone()).await;
    let reader = File::open(&mnt.0).expect("open");
    let mut byte = [0u8; 1];
    reader.read_at(&mut byte, MIB).expect("read");
    assert_eq!(byte, [0x5a]);

    common::delete_export(&mut client, "f").await;
    expect_deleted(&mut client, "f").await;
    assert!(!is_mounted(&mnt.0));
    assert_eq!(std::fs::read(&mnt.0).expect("file"), b"not an image");
    // The reader is cut off, and the node is free.
    assert!(reader.read_at(&mut byte, 2 * MIB).is_err());
    ok(&mut client, "blockdev-del", json!({"node-name": "disk"})).await;
    drop(reader);

    // The mountpoint can be used again.
    let blockdev = json!({"driver": "qcow2", "node-name": "disk",
        "file": {"driver": "file", "filename": path_str(&image)}});
    ok(&mut client, "blockdev-add", blockdev).await;
    ok(&mut client, "block-export-add", add).await;
    assert!(is_mounted(&mnt.0));
    assert_eq!(std::fs::metadata(&mnt.0).expect("stat").len(), 64 * MIB);
    ok(
        &mut client,
        "block-export-del",
        json!({"id": "f", "mode": "hard"}),
    )
    .await;
    expect_deleted(&mut client, "f").await;
    assert!(!is_mounted(&mnt.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mountpoints_get_qsds_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mnt = Mountpoint::new(dir.path(), "disk.raw");
    let daemon = TestDaemon::start(&["--blockdev", "driver=null-co,node-name=null"]);
    let mut client = daemon.connect().await;
    let add = |id: &str, mountpoint: &str| json!({"type": "fuse", "id": id, "node-name": "null", "mountpoint": mountpoint});
    let dir_path = path_str(dir.path()).to_string();
    let (_, desc) = error(&mut client, "block-export-add", add("a", &dir_path)).await;
    assert_eq!(desc, format!("'{dir_path}' is not a regular file"));
    let missing = format!("{dir_path}/missing");
    let (_, desc) = error(&mut client, "block-export-add", add("a", &missing)).await;
    assert_eq!(
        desc,
        format!("Failed to stat '{missing}': No such file or directory")
    );
    ok(&mut client, "block-export-add", add("a", mnt.path())).await;
    let (_, desc) = error(&mut client, "block-export-add", add("b", mnt.path())).await;
    assert_eq!(
        desc,
        format!("There already is a FUSE export on '{}'", mnt.path())
    );
    let writable = json!({"type": "fuse", "id": "w", "node-name": "nope",
                          "mountpoint": mnt.path(), "writable": true});
    let (_, desc) = error(&mut client, "block-export-add", writable).await;
    assert_eq!(desc, "Cannot find device='' nor node-name='nope'");
    let listed = ok(&mut client, "query-block-exports", json!({})).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
}

/// Starts a daemon with an NBD and a FUSE export of one node.
fn daemon_with_two_exports(dir: tempfile::TempDir) -> (TestDaemon, Mountpoint) {
    let mnt = Mountpoint::new(dir.path(), "disk.raw");
    let mnt_path = mnt.path().to_string();
    let daemon = TestDaemon::start_in(dir, move |dir| {
        vec![
            "--blockdev".into(),
            "driver=null-co,node-name=null,size=1048576".into(),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "type=nbd,id=n,node-name=null".into(),
            "--export".into(),
            format!("type=fuse,id=f,node-name=null,mountpoint={mnt_path}"),
        ]
    });
    assert!(is_mounted(&mnt.0));
    (daemon, mnt)
}

/// Waits for job `id` to conclude (its `JOB_STATUS_CHANGE` events).
async fn job_concluded(client: &mut Client, id: &str) {
    loop {
        let event = client
            .next_event(EVENT_WAIT)
            .await
            .expect("monitor")
            .unwrap_or_else(|| panic!("job {id} did not conclude"));
        if event["event"] == "JOB_STATUS_CHANGE"
            && event["data"] == json!({"id": id, "status": "concluded"})
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_and_signals_leave_no_mount() {
    for stop in ["quit", "SIGTERM", "SIGINT"] {
        let (mut daemon, mnt) = daemon_with_two_exports(tempfile::tempdir().expect("dir"));
        // A reader keeps the file open through the exit, and a job has
        // concluded (QSD 10.0.2 aborts at exit in this situation).
        let reader = File::open(&mnt.0).expect("open");
        let mut client = daemon.connect().await;
        let created = daemon.path("created.raw");
        let options = json!({"driver": "file", "filename": path_str(&created), "size": 1 << 20});
        ok(
            &mut client,
            "blockdev-create",
            json!({"job-id": "j", "options": options}),
        )
        .await;
        job_concluded(&mut client, "j").await;
        match stop {
            "quit" => {
                ok(&mut client, "quit", json!({})).await;
            }
            "SIGTERM" => daemon.signal(libc::SIGTERM),
            _ => daemon.signal(libc::SIGINT),
        }
        let status = daemon.wait_exit();
        assert!(status.success(), "{stop}: {status} {}", daemon.stderr());
        assert!(!is_mounted(&mnt.0), "{stop} left the mount");
        drop(reader);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_mount_is_cleared_by_fusermount() {
    let (mut daemon, mnt) = daemon_with_two_exports(tempfile::tempdir().expect("dir"));
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    assert!(is_mounted(&mnt.0));
    tool("fusermount3", &["-u", mnt.path()]);
    assert!(!is_mounted(&mnt.0));
    // A new daemon mounts over the same file.
    let dir = tempfile::tempdir().expect("dir");
    let export = format!("type=fuse,id=f,node-name=null,mountpoint={}", mnt.path());
    let _daemon = TestDaemon::start_in(dir, |_| {
        vec![
            "--blockdev".into(),
            "driver=null-co,node-name=null".into(),
            "--export".into(),
            export,
        ]
    });
    assert!(is_mounted(&mnt.0));
}

//! storaged run as `qemu-nbd` (a symlink on PATH ahead of the real one)
//! against qemu-nbd 10.0 itself: the same command lines, good and bad,
//! give the same exit status and the same messages; served images look
//! the same to `nbdinfo --json`; without `--persistent` both exit once
//! their client has left; the data written through one-command mode is in
//! the image.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MIB: u64 = 1 << 20;
const PATIENCE: Duration = Duration::from_secs(20);

/// A directory with the images, and `qemu-nbd` → storaged.
struct Setup {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_storaged"), bin.join("qemu-nbd"))
            .expect("symlink");
        let qcow2 = dir.path().join("d.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow2)
            .arg("16M")
            .status()
            .expect("qemu-img");
        assert!(out.success());
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x61 1M 1M"])
            .arg(&qcow2)
            .output()
            .expect("qemu-io");
        assert!(out.status.success());
        std::fs::File::create(dir.path().join("r.img"))
            .expect("raw")
            .set_len(16 * MIB)
            .expect("size");
        Setup { dir, bin }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `qemu-nbd ARGS` run in the image directory: the real one, or
    /// storaged through the symlink (argv[0] is `qemu-nbd` either way).
    fn command(&self, ours: bool, args: &[String]) -> Command {
        let mut command = Command::new("qemu-nbd");
        if ours {
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", self.bin.display()));
        }
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        command
    }

    fn run(&self, ours: bool, args: &[String]) -> Output {
        let mut child = self
            .command(ours, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-nbd");
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("qemu-nbd {args:?} (ours: {ours}) did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn bad_command_lines_fail_as_qemu_nbd_fails() {
    let setup = Setup::new();
    let sock = setup.path("s.sock");
    let long = "a".repeat(4097);
    let cases: Vec<Vec<String>> = vec![
        strings(&[]),
        strings(&["a", "b"]),
        strings(&["-k", &sock, "nonexist.img"]),
        strings(&["-f", "bogus", "-k", &sock, "r.img"]),
        strings(&["-e", "-1", "r.img"]),
        strings(&["-e", "x", "r.img"]),
        strings(&["-o", "1x", "r.img"]),
        strings(&["-f", "raw", "-o", "17000000", "-k", &sock, "r.img"]),
        strings(&["-o", "17000000", "-k", &sock, "r.img"]),
        strings(&["--cache=bogus", "r.img"]),
        strings(&["--aio=bogus", "r.img"]),
        strings(&["--discard=bogus", "r.img"]),
        strings(&["--detect-zeroes=bogus", "r.img"]),
        strings(&["--detect-zeroes=unmap", "-k", &sock, "r.img"]),
        strings(&["--handshake-limit=x", "r.img"]),
        strings(&["-B", "bm", "-k", &sock, "-f", "qcow2", "d.qcow2"]),
        strings(&["--bogus", "r.img"]),
        strings(&["-q", "r.img"]),
        strings(&["-o"]),
        strings(&["--port"]),
        strings(&["--read-only=x", "r.img"]),
        strings(&["-x", &long, "r.img"]),
        strings(&["-D", &long, "r.img"]),
        strings(&["--selinux-label=x", "r.img"]),
        strings(&["-l", "nope", "-k", &sock, "-f", "qcow2", "d.qcow2"]),
        // A device that cannot exist (the kernel client itself runs in a
        // guest: tests/qemu_nbd_kernel_client.rs).
        strings(&["-c", "/nonexistent/nbd0", "-f", "raw", "r.img"]),
        strings(&["-c", "/nonexistent/nbd0", "-v", "-f", "raw", "r.img"]),
        strings(&["-d", "/nonexistent/nbd0"]),
        strings(&["-d"]),
        strings(&["--aio=native", "-f", "raw", "-k", &sock, "r.img"]),
        strings(&["--image-opts", "-f", "raw", "r.img"]),
        strings(&["--pid-file"]),
        strings(&["-L", "r.img"]),
        strings(&["-l", "snapshot.id=9", "-k", &sock, "-f", "qcow2", "d.qcow2"]),
        strings(&["--object", "bogus,id=x", "-f", "raw", "-k", &sock, "r.img"]),
        strings(&[
            "--object",
            "secret,id=s0",
            "-f",
            "raw",
            "-k",
            &sock,
            "r.img",
        ]),
        strings(&["-f", "qcow2", "-k", &sock, "r.img"]),
    ];
    for args in &cases {
        let theirs = setup.run(false, args);
        let ours = setup.run(true, args);
        assert_eq!(
            ours.status.code(),
            theirs.status.code(),
            "status of qemu-nbd {args:?}: ours {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&ours.stderr),
            String::from_utf8_lossy(&theirs.stderr),
            "stderr of qemu-nbd {args:?}"
        );
    }
}

/// A started server: waits until `nbdinfo` gets its export.
fn serve(setup: &Setup, ours: bool, args: &[String], uri: &str) -> (Child, Value) {
    let mut child = setup
        .command(ours, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-nbd");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = Command::new("nbdinfo")
            .args(["--json", uri])
            .output()
            .expect("nbdinfo");
        if info.status.success() {
            let json = serde_json::from_slice(&info.stdout).expect("nbdinfo json");
            return (child, json);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("qemu-nbd {args:?} (ours: {ours}) exited: {status}");
        }
        assert!(Instant::now() < deadline, "qemu-nbd {args:?} never served");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What clients see of the export, without what a server may word
/// differently (block sizes are the node's own).
fn visible(info: &Value) -> Value {
    let export = &info["exports"][0];
    let mut contexts: Vec<String> = export["contexts"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    contexts.sort();
    serde_json::json!({
        "export-name": export["export-name"],
        "description": export["description"],
        "export-size": export["export-size"],
        "is_read_only": export["is_read_only"],
        "can_multi_conn": export["can_multi_conn"],
        "can_flush": export["can_flush"],
        "can_fua": export["can_fua"],
        "can_trim": export["can_trim"],
        "can_zero": export["can_zero"],
        "contexts": contexts,
    })
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("qemu-nbd did not exit after its client left");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn good_command_lines_serve_what_qemu_nbd_serves() {
    let setup = Setup::new();
    let sock = setup.path("s.sock");
    let image_opts = format!(
        "driver=qcow2,file.driver=file,file.filename={}",
        setup.path("d.qcow2")
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            strings(&[
                "-k", &sock, "-f", "qcow2", "-x", "disk", "-D", "a disk", "d.qcow2",
            ]),
            "disk",
        ),
        (strings(&["-k", &sock, "-r", "r.img"]), ""),
        (
            strings(&["-k", &sock, "-f", "raw", "-o", "1048576", "r.img"]),
            "",
        ),
        (
            strings(&["-k", &sock, "-f", "qcow2", "-A", "-x", "a", "d.qcow2"]),
            "a",
        ),
        (
            strings(&["-k", &sock, "-f", "qcow2", "-e", "3", "d.qcow2"]),
            "",
        ),
        (strings(&["-k", &sock, "--image-opts", &image_opts]), ""),
        (
            strings(&[
                "-k",
                &sock,
                "-f",
                "raw",
                "--cache=none",
                "--aio=threads",
                "--discard=unmap",
                "--detect-zeroes=unmap",
                "r.img",
            ]),
            "",
        ),
        (
            strings(&[
                "--socket",
                &sock,
                "--format=qcow2",
                "--read-only",
                "d.qcow2",
            ]),
            "",
        ),
    ];
    // Shorter ones: every option of the image and the export, alone or
    // with a neighbour, on the same socket (the export's name is empty).
    let raw_image_opts = format!(
        "driver=raw,file.driver=file,file.filename={}",
        setup.path("r.img")
    );
    let short: Vec<Vec<&str>> = vec![
        vec!["-f", "raw", "r.img"],
        vec!["d.qcow2"],
        vec!["-n", "-f", "raw", "r.img"],
        vec!["--nocache", "--read-only", "-f", "qcow2", "d.qcow2"],
        vec!["--cache=writethrough", "-f", "raw", "r.img"],
        vec!["--cache=directsync", "-f", "qcow2", "d.qcow2"],
        vec!["--cache=unsafe", "-f", "qcow2", "d.qcow2"],
        vec!["--cache=writeback", "-f", "raw", "r.img"],
        vec!["--cache=none", "--aio=native", "-f", "raw", "r.img"],
        vec!["--discard=ignore", "-f", "raw", "r.img"],
        vec!["--discard=unmap", "-f", "qcow2", "d.qcow2"],
        vec!["--detect-zeroes=on", "-f", "qcow2", "d.qcow2"],
        vec!["--detect-zeroes=off", "-f", "raw", "r.img"],
        vec!["-e", "2", "-f", "raw", "r.img"],
        vec!["-e", "0", "-f", "qcow2", "d.qcow2"],
        vec!["--shared=1", "-f", "raw", "r.img"],
        vec!["-A", "-f", "qcow2", "d.qcow2"],
        vec![
            "--allocation-depth",
            "--read-only",
            "-f",
            "qcow2",
            "d.qcow2",
        ],
        vec!["-r", "-f", "qcow2", "d.qcow2"],
        vec!["-s", "-f", "qcow2", "d.qcow2"],
        vec!["-s", "-r", "-f", "raw", "r.img"],
        vec!["-o", "512", "-f", "raw", "r.img"],
        vec!["--offset=1048576", "-r", "-f", "raw", "r.img"],
        vec!["-D", "", "-f", "raw", "r.img"],
        vec!["--description=a longer description", "-f", "raw", "r.img"],
        vec!["--handshake-limit=5", "-f", "raw", "r.img"],
        vec!["--object", "secret,id=s0,data=x", "-f", "raw", "r.img"],
        vec!["--image-opts", &raw_image_opts],
        vec!["--image-opts", "-r", &image_opts],
    ];
    let cases: Vec<(Vec<String>, &str)> = cases
        .into_iter()
        .chain(short.into_iter().map(|args| {
            let mut full = strings(&["-k", &sock]);
            full.extend(strings(&args));
            (full, "")
        }))
        .collect();
    assert!(cases.len() >= 36);
    for (args, name) in &cases {
        let uri = format!("nbd+unix:///{name}?socket={sock}");
        let mut seen = Vec::new();
        for ours in [false, true] {
            let (mut child, info) = serve(&setup, ours, args, &uri);
            // Without --persistent the server exits once nbdinfo has left.
            assert_eq!(
                wait_exit(&mut child),
                Some(0),
                "qemu-nbd {args:?} ours: {ours}"
            );
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr)
                .expect("stderr");
            seen.push((visible(&info), stderr));
        }
        assert_eq!(seen[1], seen[0], "qemu-nbd {args:?}: ours, then qemu-nbd's");
    }
}

#[test]
fn data_written_in_one_command_mode_is_in_the_image() {
    let setup = Setup::new();
    let sock = setup.path("s.sock");
    let uri = format!("nbd+unix:///disk?socket={sock}");
    let args = strings(&[
        "-t", "-e", "2", "-k", &sock, "-f", "qcow2", "-x", "disk", "d.qcow2",
    ]);
    let (mut child, _) = serve(&setup, true, &args, &uri);
    for commands in [
        ["-c", "write -P 0x77 4M 1M"],
        ["-c", "read -P 0x61 1M 1M"],
        ["-c", "read -P 0x77 4M 1M"],
    ] {
        let out = Command::new("qemu-io")
            .args(["-f", "raw"])
            .args(commands)
            .arg(&uri)
            .output()
            .expect("qemu-io");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.contains("Pattern"),
            "{stdout}"
        );
    }
    // Persistent: still serving after its clients left.
    assert!(child.try_wait().expect("wait").is_none());
    let pid = child.id() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(wait_exit(&mut child), Some(0));
    let image = Path::new(&setup.path("d.qcow2")).to_path_buf();
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 0x77 4M 1M"])
        .arg(&image)
        .output()
        .expect("qemu-io");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Pattern"));
    let check = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&image)
        .status()
        .expect("qemu-img");
    assert!(check.success());
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn fork_returns_once_the_server_serves_and_the_pid_file_names_it() {
    let setup = Setup::new();
    for ours in [false, true] {
        let sock = setup.path(&format!("fork-{ours}.sock"));
        let pid_file = setup.path(&format!("fork-{ours}.pid"));
        let args = strings(&[
            "--fork",
            &format!("--pid-file={pid_file}"),
            "-k",
            &sock,
            "-f",
            "qcow2",
            "d.qcow2",
        ]);
        let out = setup.run(ours, &args);
        assert_eq!(out.status.code(), Some(0), "ours: {ours}");
        // Ready when the parent returns: the socket and the pid file are there.
        assert!(Path::new(&sock).exists(), "ours: {ours}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid");
        assert!(process_alive(pid), "ours: {ours}");
        let uri = format!("nbd+unix:///?socket={sock}");
        let size = Command::new("nbdinfo")
            .args(["--size", &uri])
            .output()
            .expect("nbdinfo");
        assert_eq!(String::from_utf8_lossy(&size.stdout).trim(), "16777216");
        // Not persistent: gone once its client has left.
        let deadline = Instant::now() + PATIENCE;
        while process_alive(pid) {
            assert!(Instant::now() < deadline, "ours: {ours}: still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn snapshot_mode_writes_to_a_throwaway_overlay() {
    let setup = Setup::new();
    let sock = setup.path("snap.sock");
    let image = setup.path("d.qcow2");
    let before = std::fs::read(&image).expect("image");
    let uri = format!("nbd+unix:///?socket={sock}");
    let args = strings(&["-s", "-t", "-k", &sock, "-f", "qcow2", "d.qcow2"]);
    let (mut child, info) = serve(&setup, true, &args, &uri);
    assert_eq!(info["exports"][0]["is_read_only"], false);
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x99 0 1M",
            "-c",
            "read -P 0x99 0 1M",
        ])
        .args(["-c", "read -P 0x61 1M 1M", &uri])
        .output()
        .expect("qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("Pattern"),
        "{stdout}"
    );
    let pid = child.id() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(wait_exit(&mut child), Some(0));
    assert!(
        std::fs::read(&image).expect("image") == before,
        "the image changed"
    );
}

#[test]
fn load_snapshot_serves_the_snapshot_read_only_as_qemu_nbd_does() {
    let setup = Setup::new();
    let image = setup.path("d.qcow2");
    for command in [
        vec!["qemu-img", "snapshot", "-c", "first", &image],
        vec![
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0x62 1M 1M",
            &image,
        ],
        vec!["qemu-img", "resize", "-f", "qcow2", &image, "32M"],
    ] {
        let out = Command::new(command[0])
            .args(&command[1..])
            .output()
            .expect("qemu tool");
        assert!(out.status.success(), "{command:?}: {out:?}");
    }
    let sock = setup.path("load.sock");
    let uri = format!("nbd+unix:///?socket={sock}");
    for snapshot in ["first", "1", "snapshot.id=1", "snapshot.name=first"] {
        let args = strings(&["-t", "-l", snapshot, "-k", &sock, "-f", "qcow2", "d.qcow2"]);
        let mut seen = Vec::new();
        for ours in [false, true] {
            let (mut child, info) = serve(&setup, ours, &args, &uri);
            let read = Command::new("qemu-io")
                .args(["-r", "-f", "raw", "-c", "read -P 0x61 1M 1M", &uri])
                .output()
                .expect("qemu-io");
            let stdout = String::from_utf8_lossy(&read.stdout).into_owned();
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                read.status.success() && !stdout.contains("Pattern"),
                "-l {snapshot} (ours: {ours}): {stdout}"
            );
            seen.push(visible(&info));
        }
        assert_eq!(seen[1]["is_read_only"], true, "-l {snapshot}");
        assert_eq!(seen[1]["export-size"], 32 * MIB, "-l {snapshot}");
        assert_eq!(seen[1], seen[0], "-l {snapshot}: ours, then qemu-nbd's");
    }
}

#[test]
fn bitmap_mode_publishes_the_images_bitmaps_as_qemu_nbd_does() {
    let setup = Setup::new();
    let image = setup.path("d.qcow2");
    for command in [
        vec!["qemu-img", "bitmap", "--add", &image, "b0"],
        vec!["qemu-img", "bitmap", "--add", &image, "off"],
        vec!["qemu-io", "-f", "qcow2", "-c", "write -P 7 64k 64k", &image],
        vec!["qemu-img", "bitmap", "--disable", &image, "off"],
        vec!["qemu-io", "-f", "qcow2", "-c", "write -P 7 5M 1k", &image],
    ] {
        let out = Command::new(command[0])
            .args(&command[1..])
            .output()
            .expect("qemu tool");
        assert!(out.status.success(), "{command:?}: {out:?}");
    }
    let sock = setup.path("bitmap.sock");
    let uri = format!("nbd+unix:///?socket={sock}");
    for (bitmap, read_only) in [("b0", false), ("b0", true), ("off", true)] {
        let mut args = strings(&["-t", "-B", bitmap, "-k", &sock, "-f", "qcow2", "d.qcow2"]);
        if read_only {
            args.push("-r".into());
        } else {
            // -B repeats: both contexts are offered.
            args.extend(strings(&["-B", "off"]));
        }
        let mut seen = Vec::new();
        for ours in [false, true] {
            let (mut child, info) = serve(&setup, ours, &args, &uri);
            let map = Command::new("nbdinfo")
                .args([&format!("--map=qemu:dirty-bitmap:{bitmap}"), "--json", &uri])
                .output()
                .expect("nbdinfo");
            let pid = child.id() as i32;
            // SAFETY: kill has no memory-safety preconditions.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            assert_eq!(wait_exit(&mut child), Some(0));
            let after = Command::new("qemu-img")
                .args(["info", "--output=json", &image])
                .output()
                .expect("qemu-img info");
            let after: Value = serde_json::from_slice(&after.stdout).expect("info JSON");
            seen.push((
                visible(&info),
                String::from_utf8_lossy(&map.stdout).into_owned(),
                after["format-specific"]["data"]["bitmaps"].clone(),
            ));
        }
        assert!(seen[1].1.contains("\"dirty\""), "{bitmap}: {}", seen[1].1);
        assert_eq!(seen[1], seen[0], "-B {bitmap}: ours, then qemu-nbd's");
    }
}

#[test]
fn list_mode_prints_what_qemu_nbd_prints() {
    let setup = Setup::new();
    let sock = setup.path("list.sock");
    let missing = setup.path("missing.sock");
    for bad in [
        strings(&["-L", "r.img"]),
        strings(&["-L", "-x", "foo", "-k", &sock]),
        strings(&["-L", "--fork", "-k", &sock]),
        strings(&["-L", "-k", &missing]),
    ] {
        let theirs = setup.run(false, &bad);
        let ours = setup.run(true, &bad);
        assert_eq!(ours.status.code(), theirs.status.code(), "{bad:?}");
        assert_eq!(
            String::from_utf8_lossy(&ours.stderr),
            String::from_utf8_lossy(&theirs.stderr),
            "{bad:?}"
        );
    }
    // Each server listed by each client: the clients print the same bytes.
    let serve_args = strings(&[
        "-t", "-k", &sock, "-f", "qcow2", "-x", "disk", "-D", "my disk", "-A", "d.qcow2",
    ]);
    let uri = format!("nbd+unix:///disk?socket={sock}");
    for ours_serving in [false, true] {
        let (mut server, _) = serve(&setup, ours_serving, &serve_args, &uri);
        let list = strings(&["-L", "-k", &sock]);
        let theirs = setup.run(false, &list);
        let ours = setup.run(true, &list);
        let _ = server.kill();
        let _ = server.wait();
        assert_eq!(theirs.status.code(), Some(0));
        assert_eq!(ours.status.code(), Some(0));
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
            "listing the server (ours: {ours_serving})"
        );
        assert!(String::from_utf8_lossy(&ours.stdout).contains("qemu:allocation-depth"));
    }
}

#[test]
fn tls_serving_and_list_mode_match_qemu_nbd() {
    let setup = Setup::new();
    let sock = setup.path("tls.sock");
    let ca = common::tls::Ca::new("Test CA");
    ca.server_dir(&setup.dir.path().join("server"));
    ca.client_dir(&setup.dir.path().join("client"), "client", 30);
    let server_object = format!(
        "tls-creds-x509,id=tls0,endpoint=server,dir={}",
        setup.path("server")
    );
    let client_object = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        setup.path("client")
    );
    for bad in [
        strings(&["-L", "-k", &sock, "--tls-hostname", "localhost"]),
        strings(&["-L", "-k", &sock, "--tls-authz", "a"]),
        strings(&[
            "-L",
            "-k",
            &sock,
            "--object",
            &client_object,
            "--tls-creds",
            "nope",
        ]),
        strings(&[
            "-L",
            "-k",
            &sock,
            "--object",
            &server_object,
            "--tls-creds",
            "tls0",
        ]),
    ] {
        let theirs = setup.run(false, &bad);
        let ours = setup.run(true, &bad);
        assert_eq!(ours.status.code(), theirs.status.code(), "{bad:?}");
        assert_eq!(
            String::from_utf8_lossy(&ours.stderr),
            String::from_utf8_lossy(&theirs.stderr),
            "{bad:?}"
        );
    }
    let serve_args = strings(&[
        "-t",
        "-k",
        &sock,
        "-f",
        "qcow2",
        "-x",
        "disk",
        "--object",
        &server_object,
        "--tls-creds",
        "tls0",
        "d.qcow2",
    ]);
    let uri = format!(
        "nbds+unix:///disk?socket={sock}&tls-certificates={}",
        setup.path("client")
    );
    let list = strings(&[
        "-L",
        "-k",
        &sock,
        "--object",
        &client_object,
        "--tls-creds",
        "tls0",
        "--tls-hostname",
        "localhost",
    ]);
    for ours_serving in [false, true] {
        let (mut server, _) = serve(&setup, ours_serving, &serve_args, &uri);
        let theirs = setup.run(false, &list);
        let ours = setup.run(true, &list);
        let plain = setup.run(true, &strings(&["-L", "-k", &sock]));
        let _ = server.kill();
        let _ = server.wait();
        assert_eq!(theirs.status.code(), Some(0), "{theirs:?}");
        assert_eq!(ours.status.code(), Some(0), "{ours:?}");
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
            "listing the TLS server (ours: {ours_serving})"
        );
        assert!(String::from_utf8_lossy(&ours.stdout).contains("export: 'disk'"));
        assert_ne!(plain.status.code(), Some(0), "a plain-text list succeeded");
    }
}

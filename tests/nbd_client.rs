//! The `nbd` client driver against three real servers — storaged itself,
//! qemu-nbd and nbdkit's `memory` plugin — as the node under an NBD export
//! of storaged (storaged as an NBD proxy): data written through the proxy
//! reads back through it and straight from the server; zeroes, discards,
//! flushes and block status pass through; a server that goes away fails
//! requests instead of hanging them; a missing server is QEMU's error.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{error, ok, TestDaemon};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(20);

fn qemu_io(uri: &str, commands: &[&str]) -> (bool, String) {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(uri);
    let out = Command::new("qemu-io")
        .args(&args)
        .output()
        .expect("qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let good = out.status.success() && !stdout.contains("Pattern") && !stdout.contains("failed");
    (good, stdout + &String::from_utf8_lossy(&out.stderr))
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(child.try_wait().expect("wait").is_none(), "server exited");
        assert!(Instant::now() < deadline, "no socket {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nbdkit serving export `disk` from memory (`size`, nbdkit's syntax) on
/// `socket`; the caller waits for the socket.
fn memory_nbdkit(socket: &Path, size: &str) -> Child {
    Command::new("nbdkit")
        .args(["--foreground", "--unix", socket.to_str().expect("UTF-8")])
        .args(["--exportname", "disk", "memory", size])
        .stderr(Stdio::null())
        .spawn()
        .expect("nbdkit")
}

/// A server of export `disk` (64 MiB) on `socket`, by kind.
enum Backend {
    Process(Child),
    Storaged(TestDaemon),
}

impl Backend {
    fn start(kind: &str, dir: &Path, socket: &Path) -> Backend {
        let image = dir.join("backend.raw");
        std::fs::File::create(&image)
            .expect("image")
            .set_len(64 << 20)
            .expect("size");
        let socket_str = socket.to_str().expect("UTF-8");
        let image_str = image.to_str().expect("UTF-8");
        let mut child = match kind {
            "qemu-nbd" => Command::new("qemu-nbd")
                .args(["-t", "-e", "0", "-f", "raw", "-x", "disk", "-k", socket_str])
                .arg(&image)
                .stderr(Stdio::null())
                .spawn()
                .expect("qemu-nbd"),
            "nbdkit" => memory_nbdkit(socket, "64M"),
            _ => {
                let daemon = TestDaemon::start(&[
                    "--blockdev",
                    &format!("driver=file,node-name=f,filename={image_str}"),
                    "--nbd-server",
                    &format!("addr.type=unix,addr.path={socket_str}"),
                    "--export",
                    "type=nbd,id=e,node-name=f,name=disk,writable=on",
                ]);
                return Backend::Storaged(daemon);
            }
        };
        wait_for_socket(socket, &mut child);
        Backend::Process(child)
    }

    fn stop(self) {
        match self {
            Backend::Process(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Backend::Storaged(daemon) => drop(daemon),
        }
    }
}

/// A storaged exporting an `nbd` node of `backend` as `proxy`; `extra`
/// is appended to the node's options.
fn proxy(backend: &Path, extra: &str) -> TestDaemon {
    let blockdev = format!(
        "driver=nbd,node-name=remote,server.type=unix,server.path={},export=disk{extra}",
        backend.display()
    );
    TestDaemon::start_in(tempfile::tempdir().expect("dir"), move |dir| {
        vec![
            "--blockdev".into(),
            blockdev,
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("proxy.sock").display()
            ),
            "--export".into(),
            "type=nbd,id=p,node-name=remote,name=proxy,writable=on".into(),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_over_each_server_reads_and_writes_its_data() {
    for kind in ["storaged", "qemu-nbd", "nbdkit"] {
        let dir = tempfile::tempdir().expect("dir");
        let socket = dir.path().join("backend.sock");
        let backend = Backend::start(kind, dir.path(), &socket);
        let daemon = proxy(&socket, "");
        let uri = format!(
            "nbd+unix:///proxy?socket={}",
            daemon.path("proxy.sock").display()
        );
        let direct = format!("nbd+unix:///disk?socket={}", socket.display());
        let (good, out) = qemu_io(
            &uri,
            &[
                "write -P 0x42 1M 3M",
                "write -P 0x17 5000 70000",
                "read -P 0x42 1M 3M",
                "read -P 0x17 5000 70000",
                "write -z 8M 1M",
                "read -P 0 8M 1M",
                "discard 12M 1M",
                "flush",
            ],
        );
        assert!(good, "{kind}: {out}");
        // Straight from the server: the data is there.
        let (good, out) = qemu_io(&direct, &["read -P 0x42 1M 3M", "read -P 0x17 5000 70000"]);
        assert!(good, "{kind}: {out}");
        // Block status passes through: the untouched start is not data
        // wherever the server knows holes.
        let map = Command::new("qemu-img")
            .args(["map", "-f", "raw", "--output=json", &uri])
            .output()
            .expect("qemu-img map");
        assert!(map.status.success(), "{kind}");
        let map: serde_json::Value = serde_json::from_slice(&map.stdout).expect("map");
        let first = &map[0];
        assert_eq!(first["start"], 0);
        if kind != "nbdkit" {
            assert_eq!(first["data"], false, "{kind}: {first}");
        }
        let data_at_1m = map
            .as_array()
            .expect("extents")
            .iter()
            .find(|e| e["start"].as_u64() <= Some(1 << 20) && e["data"] == true);
        assert!(data_at_1m.is_some(), "{kind}: {map}");

        // The server goes away: requests fail, nothing hangs.
        backend.stop();
        let (good, _) = qemu_io(&uri, &["read 0 4k"]);
        assert!(!good, "{kind}: a read through a dead connection succeeded");
        drop(daemon);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_server_or_export_is_refused_clearly() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let missing = daemon.path("nobody.sock");
    let add = |path: &Path, export: &str| {
        json!({"driver": "nbd", "node-name": "n", "export": export,
               "server": {"type": "unix", "path": path}})
    };
    let (_, desc) = error(&mut client, "blockdev-add", add(&missing, "disk")).await;
    assert_eq!(
        desc,
        format!(
            "Failed to connect to '{}': No such file or directory",
            missing.display()
        )
    );
    // An export the server does not have.
    let socket = daemon.path("backend.sock");
    let mut nbdkit = memory_nbdkit(&socket, "1M");
    wait_for_socket(&socket, &mut nbdkit);
    ok(&mut client, "blockdev-add", add(&socket, "disk")).await;
    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    assert_eq!(nodes[0]["drv"], "nbd");
    assert_eq!(nodes[0]["image"]["virtual-size"], 1 << 20);
    let _ = nbdkit.kill();
    let _ = nbdkit.wait();
}

fn slow_nbdkit(socket: &Path, image: &Path) -> Child {
    let mut child = Command::new("nbdkit")
        .args(["--foreground", "--unix", socket.to_str().expect("UTF-8")])
        .args(["--exportname", "disk", "--filter=delay", "file"])
        .arg(image)
        .args(["delay-read=20ms", "delay-write=20ms"])
        .stderr(Stdio::null())
        .spawn()
        .expect("nbdkit");
    wait_for_socket(socket, &mut child);
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_survive_a_server_restart_within_reconnect_delay() {
    let dir = tempfile::tempdir().expect("dir");
    let image = dir.path().join("backend.raw");
    std::fs::File::create(&image)
        .expect("image")
        .set_len(8 << 20)
        .expect("size");
    let socket = dir.path().join("backend.sock");
    let mut server = slow_nbdkit(&socket, &image);
    let daemon = proxy(&socket, ",reconnect-delay=15");
    let uri = format!(
        "nbd+unix:///proxy?socket={}",
        daemon.path("proxy.sock").display()
    );
    // About 100 requests of 20 ms each: the restart falls in the middle.
    let mut args = vec!["-f".to_string(), "raw".to_string()];
    for i in 0..50u64 {
        args.extend(["-c".into(), format!("write -P {} {}k 64k", i + 1, i * 64)]);
        args.extend(["-c".into(), format!("read -P {} {}k 64k", i + 1, i * 64)]);
    }
    args.push(uri);
    let client = Command::new("qemu-io")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-io");
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
    let _ = std::fs::remove_file(&socket);
    std::thread::sleep(Duration::from_millis(500));
    let mut server = slow_nbdkit(&socket, &image);
    let out = client.wait_with_output().expect("qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("failed") && !stdout.contains("Pattern"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = server.kill();
    let _ = server.wait();
    // Everything written is in the image.
    let data = std::fs::read(&image).expect("image");
    for i in 0..50usize {
        let chunk = &data[i * 65536..(i + 1) * 65536];
        assert!(chunk.iter().all(|&b| b == i as u8 + 1), "chunk {i}");
    }
}

/// What block status of an `nbd` node with `x-dirty-bitmap` shows through
/// an export of the daemon `program` starts (QSD or storaged).
fn bitmap_map_through(program: Command, server: &Path) -> Value {
    let blockdev = format!(
        "driver=nbd,node-name=remote,read-only=on,server.type=unix,server.path={},\
         x-dirty-bitmap=qemu:dirty-bitmap:b0",
        server.display()
    );
    let daemon = TestDaemon::spawn(program, tempfile::tempdir().expect("dir"), move |dir| {
        vec![
            "--blockdev".into(),
            blockdev,
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("out.sock").display()
            ),
            "--export".into(),
            "type=nbd,id=p,node-name=remote,name=out".into(),
        ]
    });
    let uri = format!(
        "nbd+unix:///out?socket={}",
        daemon.path("out.sock").display()
    );
    let map = common::tool("nbdinfo", &["--map", "--json", &uri]);
    serde_json::from_str(&map).expect("map JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_dirty_bitmap_reads_a_servers_bitmap_as_qemu_does() {
    let dir = tempfile::tempdir().expect("dir");
    let image = dir.path().join("b.qcow2");
    let image_str = image.to_str().expect("UTF-8");
    common::create_qcow2(image_str, "8M");
    common::tool("qemu-img", &["bitmap", "--add", image_str, "b0"]);
    common::tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write 64k 64k",
            "-c",
            "write 5M 1k",
            image_str,
        ],
    );
    let socket = dir.path().join("bitmap.sock");
    let mut server = Command::new("qemu-nbd")
        .args(["-t", "-e", "0", "-r", "-B", "b0", "-f", "qcow2", "-k"])
        .arg(&socket)
        .arg(&image)
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    wait_for_socket(&socket, &mut server);
    let theirs = bitmap_map_through(Command::new("qemu-storage-daemon"), &socket);
    let ours = bitmap_map_through(common::storaged(), &socket);
    // A missing context is refused.
    let daemon = TestDaemon::start(&[]);
    let mut qmp = daemon.connect().await;
    let (_, message) = error(
        &mut qmp,
        "blockdev-add",
        json!({"driver": "nbd", "node-name": "m", "read-only": true,
               "server": {"type": "unix", "path": socket},
               "x-dirty-bitmap": "qemu:dirty-bitmap:nope"}),
    )
    .await;
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(ours, theirs, "ours, then QSD's");
    // Dirty ranges read as holes (QEMU's convention for this option).
    let holes: Vec<(u64, u64)> = ours
        .as_array()
        .expect("extents")
        .iter()
        .filter(|e| e["type"].as_u64().expect("type") & 1 != 0)
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(holes, [(65536, 65536), (5 << 20, 65536)]);
    assert_eq!(
        message,
        "requested x-dirty-bitmap qemu:dirty-bitmap:nope not found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_timeout_waits_for_a_server_that_comes_up_late() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let socket = daemon.path("late.sock");
    let add = |name: &str, seconds: u32| {
        json!({"driver": "nbd", "node-name": name, "export": "disk", "open-timeout": seconds,
               "server": {"type": "unix", "path": socket}})
    };
    // Nobody comes: the last attempt's error, once the time is up.
    let (_, desc) = error(&mut client, "blockdev-add", add("gone", 1)).await;
    assert!(desc.starts_with("Failed to connect to"), "{desc}");
    // The server starts while the node opens. It is started from the
    // test's own thread: an nbdkit started by a helper thread that then
    // ended exited at once (status 0, as on SIGTERM) in about half the
    // runs on one machine, and the node waited out its 60 s.
    let late_node = add("n", 60);
    let opening = tokio::spawn(async move {
        ok(&mut client, "blockdev-add", late_node).await;
        client
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut nbdkit = memory_nbdkit(&socket, "2M");
    let mut client = opening.await.expect("blockdev-add");
    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    assert_eq!(nodes[0]["image"]["virtual-size"], 2 << 20);
    let _ = nbdkit.kill();
    let _ = nbdkit.wait();
}

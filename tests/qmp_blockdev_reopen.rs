//! `blockdev-reopen` over QMP: a recorded session (read-only refused
//! while a writable export uses the node, accepted otherwise and undone;
//! a `file` child moved; options that cannot change; bad node names;
//! a throttle node moved to another group; a qcow2 node given a backing
//! node it did not have, then none; a raw node's window moved and
//! resized; a qcow2 node's lazy refcounts and discard options changed,
//! seen in its dirty flag and in the file's allocation) compared with
//! qemu-storage-daemon's answers; and a throttle filter inserted below an
//! exported format and removed again, then deleted, while an NBD client
//! writes and verifies without pause. Reopens while commit and stream
//! jobs run: the links they rely on refuse to move, compared with QSD.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::jobs::{compare_raw, path, three_deep_chain, wait_event};
use common::{error, ok, reply, sparse_file, storaged, TestDaemon};
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

/// `query-named-block-nodes`, each node as (name, read-only, detect
/// zeroes, file name without the directory).
async fn nodes(client: &mut qmp::client::Client) -> Value {
    let list = ok(client, "query-named-block-nodes", json!({"flat": true})).await;
    let shown: Vec<Value> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| {
            let file = n["file"].as_str().unwrap_or_default();
            let base = file.rsplit('/').next().unwrap_or_default();
            json!([n["node-name"], n["ro"], n["detect_zeroes"], base])
        })
        .collect();
    Value::Array(shown)
}

/// The backing file `query-named-block-nodes` shows for `node`, as a
/// name without the directory.
async fn backing_of(client: &mut qmp::client::Client, node: &str) -> Value {
    let list = ok(client, "query-named-block-nodes", json!({"flat": true})).await;
    let entry = list
        .as_array()
        .expect("a list")
        .iter()
        .find(|n| n["node-name"] == node)
        .cloned()
        .unwrap_or_default();
    let backing = entry["backing_file"]
        .as_str()
        .map(|b| b.rsplit('/').next().unwrap_or_default().to_owned());
    json!([node, backing])
}

fn writes(uri: &str, command: &str) -> bool {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", command, uri])
        .output()
        .expect("qemu-io is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("failed")
}

/// The session, run against `daemon`: its replies, the node lists it
/// queried, and whether a write through the re-added export worked.
async fn reopen_session(daemon: &TestDaemon) -> (Vec<Value>, Vec<Value>, bool) {
    sparse_file(&daemon.path("a.img"), MIB);
    sparse_file(&daemon.path("b.img"), MIB);
    for image in ["c.qcow2", "d.qcow2"] {
        let created = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(daemon.path(image))
            .arg("1M")
            .status()
            .expect("qemu-img is installed");
        assert!(created.success());
    }
    let socket = daemon.path("nbd.sock");
    let mut client = daemon.connect().await;
    let raw_over = |file: &str| json!({"driver": "raw", "node-name": "r0", "file": file});
    let steps = [
        (
            "blockdev-add",
            json!({"driver": "file", "node-name": "f0", "filename": daemon.path("a.img")}),
        ),
        (
            "blockdev-add",
            json!({"driver": "file", "node-name": "f1", "filename": daemon.path("b.img")}),
        ),
        ("blockdev-add", raw_over("f0")),
        (
            "nbd-server-start",
            json!({"addr": {"type": "unix", "data": {"path": socket}}}),
        ),
        (
            "block-export-add",
            json!({"type": "nbd", "id": "e0", "node-name": "r0", "writable": true}),
        ),
        // A writable export holds r0: it cannot become read-only.
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "raw", "node-name": "r0", "file": "f0", "read-only": true}]}),
        ),
        // The file child moves to f1 under the export.
        ("blockdev-reopen", json!({"options": [raw_over("f1")]})),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "file", "node-name": "r0", "filename": "x"}]}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "raw", "node-name": "nope", "file": "f0"}]}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "raw", "file": "f0"}]}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "file", "node-name": "f0", "filename": daemon.path("b.img")}]}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "file", "node-name": "f1",
                                "filename": daemon.path("b.img"),
                                "detect-zeroes": "on", "discard": "unmap"}]}),
        ),
        ("block-export-del", json!({"id": "e0"})),
        // Without the export r0 can become read-only, and a writable
        // export is then refused.
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "raw", "node-name": "r0", "file": "f1", "read-only": true}]}),
        ),
        (
            "block-export-add",
            json!({"type": "nbd", "id": "e1", "node-name": "r0", "writable": true}),
        ),
        // Writable again: the export is accepted.
        ("blockdev-reopen", json!({"options": [raw_over("f1")]})),
        (
            "block-export-add",
            json!({"type": "nbd", "id": "e1", "node-name": "r0", "name": "disk", "writable": true}),
        ),
        // A filter reopens with its own options unchanged, not otherwise.
        (
            "blockdev-add",
            json!({"driver": "blkdebug", "node-name": "dbg", "image": "f0"}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "blkdebug", "node-name": "dbg", "image": "f0"}]}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "blkdebug", "node-name": "dbg", "image": "f0", "align": 4096}]}),
        ),
        // A throttle node moves to another group: the old one is free.
        (
            "object-add",
            json!({"qom-type": "throttle-group", "id": "t1", "limits": {"bps-total": 1000000}}),
        ),
        (
            "object-add",
            json!({"qom-type": "throttle-group", "id": "t2", "limits": {"iops-total": 1000}}),
        ),
        (
            "blockdev-add",
            json!({"driver": "throttle", "node-name": "thr", "throttle-group": "t1", "file": "f0"}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "throttle", "node-name": "thr", "throttle-group": "nope", "file": "f0"}]}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "throttle", "node-name": "thr", "throttle-group": "t2", "file": "f0"}]}),
        ),
        ("object-del", json!({"id": "t1"})),
        ("object-del", json!({"id": "t2"})),
        // A qcow2 node opened without a backing image gets one, loses it,
        // and cannot be its own.
        (
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "qb",
                   "file": {"driver": "file", "filename": daemon.path("d.qcow2")}}),
        ),
        (
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "q0", "backing": null,
                   "file": {"driver": "file", "node-name": "q0f", "filename": daemon.path("c.qcow2")}}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "qcow2", "node-name": "q0", "backing": "qb", "file": "q0f"}]}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "qcow2", "node-name": "q0", "backing": null, "file": "q0f"}]}),
        ),
        (
            "blockdev-reopen",
            json!({"options": [{"driver": "qcow2", "node-name": "q0", "backing": "q0", "file": "q0f"}]}),
        ),
    ];
    let mut replies = Vec::new();
    let mut listings = Vec::new();
    for (i, (command, arguments)) in steps.into_iter().enumerate() {
        replies.push(reply(&mut client, command, arguments).await);
        if i == 6 || i == 13 {
            listings.push(nodes(&mut client).await);
        }
        if i == 29 || i == 30 {
            listings.push(backing_of(&mut client, "q0").await);
        }
    }
    let uri = format!("nbd+unix:///disk?socket={}", socket.display());
    let wrote = writes(&uri, "write -P 0x5a 64k 4k");
    (replies, listings, wrote)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_session_answers_as_qemu_storage_daemon() {
    let qsd = TestDaemon::spawn(
        Command::new("qemu-storage-daemon"),
        tempfile::tempdir().expect("temp dir"),
        |_| Vec::new(),
    );
    let expected = reopen_session(&qsd).await;
    drop(qsd);
    let ours = TestDaemon::spawn(storaged(), tempfile::tempdir().expect("temp dir"), |_| {
        Vec::new()
    });
    let got = reopen_session(&ours).await;
    assert_eq!(got.0, expected.0);
    assert_eq!(got.1, expected.1);
    assert!(got.2 && expected.2, "the write after the reverse change");
    // The write went through r0's new file child.
    let b = std::fs::read(ours.path("b.img")).unwrap();
    assert!(b[64 * 1024..68 * 1024].iter().all(|&x| x == 0x5a));
    assert_eq!(
        got.0[5],
        json!({"error": {"class": "GenericError",
                         "desc": "Read-only block node 'r0' cannot support read-write users"}})
    );
}

/// Writes a pattern and reads it back, over and over, until told to stop
/// on standard input; prints `ready` first and `rounds N` at the end.
const WRITER: &str = r#"
import nbd, os, sys, threading
h = nbd.NBD()
h.connect_uri(sys.argv[1])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
print("ready", flush=True)
rounds = 0
while not stop.is_set():
    offset = (rounds * 65536) % (4 << 20)
    data = bytes([rounds % 251]) * 65536
    h.pwrite(data, offset)
    if h.pread(65536, offset) != data:
        print("mismatch", rounds, flush=True)
        sys.exit(1)
    rounds += 1
h.flush()
print("rounds", rounds, flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_inserted_below_an_export_and_removed_under_a_writing_client() {
    let daemon = TestDaemon::start_in(tempfile::tempdir().unwrap(), |dir| {
        sparse_file(&dir.join("disk.img"), 4 * MIB);
        vec![
            "--blockdev".into(),
            format!(
                "file,node-name=f0,filename={}",
                dir.join("disk.img").display()
            ),
            "--blockdev".into(),
            "raw,node-name=fmt,file=f0".into(),
            // A throttle filter over the same file, to insert: generous
            // limits, so that it throttles without slowing the test much.
            "--object".into(),
            "throttle-group,id=tg,limits.bps-total=209715200,limits.iops-total=20000".into(),
            "--blockdev".into(),
            "throttle,node-name=mid,throttle-group=tg,file=f0".into(),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "nbd,id=e0,node-name=fmt,name=disk,writable=on".into(),
        ]
    });
    let uri = format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    );
    let mut writer = std::process::Command::new("/usr/bin/python3")
        .args(["-c", WRITER, &uri])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(writer.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut client = daemon.connect().await;
    let mut slowest = Duration::ZERO;
    for below in ["mid", "f0"].repeat(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let began = Instant::now();
        ok(
            &mut client,
            "blockdev-reopen",
            json!({"options": [{"driver": "raw", "node-name": "fmt", "file": below}]}),
        )
        .await;
        slowest = slowest.max(began.elapsed());
    }
    // Under the same load: a node in use stays, the one out of use goes.
    let busy = reply(&mut client, "blockdev-del", json!({"node-name": "fmt"})).await;
    assert_eq!(
        busy,
        json!({"error": {"class": "GenericError", "desc": "Node fmt is in use"}})
    );
    ok(&mut client, "blockdev-del", json!({"node-name": "mid"})).await;
    use std::io::Write;
    writeln!(writer.stdin.as_mut().unwrap()).unwrap();
    let last = lines.next().unwrap().unwrap();
    assert!(writer.wait().unwrap().success(), "the client saw: {last}");
    let rounds: u64 = last.strip_prefix("rounds ").unwrap().parse().unwrap();
    assert!(rounds > 0);
    println!("{rounds} write+verify rounds; slowest reopen (drained section included) {slowest:?}");
    let graph = ok(&mut client, "x-debug-query-block-graph", json!({})).await;
    let edges = graph["edges"].as_array().unwrap();
    let fmt_id = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "fmt")
        .unwrap()["id"]
        .clone();
    let f0_id = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "f0")
        .unwrap()["id"]
        .clone();
    assert!(edges
        .iter()
        .any(|e| e["parent"] == fmt_id && e["child"] == f0_id && e["name"] == "file"));
}

/// `blockdev-reopen`'s arguments: `base` options with `extra` on top.
fn reopen_args(base: Value, extra: Value) -> Value {
    let mut options = base;
    options
        .as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    json!({"options": [options]})
}

/// A daemon with only an NBD server, on `nbd.sock` in its directory.
fn nbd_only(program: Command, dir: tempfile::TempDir) -> TestDaemon {
    TestDaemon::spawn(program, dir, |dir| {
        vec![
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
        ]
    })
}

/// A raw node's window moved and resized by reopens: the replies and
/// sizes, and what an NBD export of the node then reads.
async fn raw_window_session(program: Command) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("window.img");
    sparse_file(&file, 16 * MIB);
    let file_str = file.to_str().expect("UTF-8");
    for (pattern, at) in [(0x11, "1M"), (0x22, "2M")] {
        common::tool(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                &format!("write -P {pattern} {at} 64k"),
                file_str,
            ],
        );
    }
    let daemon = nbd_only(program, dir);
    let mut client = daemon.connect().await;
    let raw = |window: Value| {
        reopen_args(
            json!({"driver": "raw", "node-name": "r", "file": "f"}),
            window,
        )
    };
    let mut seen = vec![
        reply(
            &mut client,
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r", "offset": MIB, "size": 4 * MIB,
                   "file": {"driver": "file", "node-name": "f", "filename": file_str}}),
        )
        .await,
    ];
    for window in [
        json!({"offset": 2 * MIB, "size": 8 * MIB}),
        json!({"offset": 12 * MIB, "size": 8 * MIB}),
        json!({"offset": 20 * MIB}),
        json!({"offset": 2 * MIB, "size": 1000}),
        json!({"offset": 2 * MIB}),
    ] {
        seen.push(reply(&mut client, "blockdev-reopen", raw(window)).await);
        let nodes = ok(
            &mut client,
            "query-named-block-nodes",
            json!({"flat": true}),
        )
        .await;
        seen.push(nodes[0]["image"]["virtual-size"].clone());
    }
    ok(
        &mut client,
        "block-export-add",
        json!({"type": "nbd", "id": "e", "node-name": "r"}),
    )
    .await;
    let uri = format!("nbd+unix:///r?socket={}", daemon.path("nbd.sock").display());
    // The window starts at 2 MiB of the file now.
    common::tool(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x22 0 64k", &uri],
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_window_moves_on_reopen_as_in_qemu_storage_daemon() {
    let theirs = raw_window_session(Command::new("qemu-storage-daemon")).await;
    let ours = raw_window_session(storaged()).await;
    assert_eq!(ours, theirs, "ours, then QSD's");
    assert_eq!(ours[2], 8 * MIB);
}

/// Allocated bytes of `path` on the host.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

/// A qcow2 node's own options changed by reopens under an export: lazy
/// refcounts on (the image is marked dirty once a write allocates), guest
/// discards kept from the file, then passed to it; a `data-file` change
/// refused.
async fn qcow2_options_session(program: Command) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("dir");
    let image = dir.path().join("options.qcow2");
    let image_str = image.to_str().expect("UTF-8").to_owned();
    common::create_qcow2(&image_str, "16M");
    common::tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write 0 1M",
            "-c",
            "write 2M 1M",
            &image_str,
        ],
    );
    let daemon = nbd_only(program, dir);
    let mut client = daemon.connect().await;
    let qcow2 = |extra: Value| {
        reopen_args(
            json!({"driver": "qcow2", "node-name": "q", "file": "f"}),
            extra,
        )
    };
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "file", "node-name": "f", "filename": image_str, "discard": "unmap"}),
    )
    .await;
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "q", "file": "f"}),
    )
    .await;
    ok(
        &mut client,
        "block-export-add",
        json!({"type": "nbd", "id": "e", "node-name": "q", "writable": true}),
    )
    .await;
    let uri = format!("nbd+unix:///q?socket={}", daemon.path("nbd.sock").display());
    let dirty = |nodes: Value| {
        let q = nodes
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["node-name"] == "q");
        q.expect("node q")["image"]["dirty-flag"].clone()
    };
    let mut seen = vec![
        reply(
            &mut client,
            "blockdev-reopen",
            qcow2(json!({"lazy-refcounts": true, "discard": "unmap",
                         "pass-discard-request": false})),
        )
        .await,
    ];
    common::tool("qemu-io", &["-f", "raw", "-c", "write 8M 64k", &uri]);
    let nodes = ok(
        &mut client,
        "query-named-block-nodes",
        json!({"flat": true}),
    )
    .await;
    seen.push(dirty(nodes));
    let before = allocated(&image);
    common::tool("qemu-io", &["-f", "raw", "-c", "discard 0 1M", &uri]);
    seen.push(json!({"discard reached the file": allocated(&image) < before}));
    seen.push(
        reply(
            &mut client,
            "blockdev-reopen",
            qcow2(json!({"data-file": "f"})),
        )
        .await,
    );
    seen.push(
        reply(
            &mut client,
            "blockdev-reopen",
            qcow2(json!({"discard": "unmap"})),
        )
        .await,
    );
    let before = allocated(&image);
    common::tool("qemu-io", &["-f", "raw", "-c", "discard 2M 1M", &uri]);
    seen.push(json!({"discard reached the file": allocated(&image) < before}));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_options_change_on_reopen_as_in_qemu_storage_daemon() {
    let theirs = qcow2_options_session(Command::new("qemu-storage-daemon")).await;
    let ours = qcow2_options_session(storaged()).await;
    assert_eq!(ours, theirs, "ours, then QSD's");
    assert_eq!(ours[1], true, "lazy refcounts mark the image dirty");
    assert_eq!(ours[2]["discard reached the file"], false);
    assert_eq!(ours[5]["discard reached the file"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_reopen_as_in_qemu_storage_daemon() {
    let prealloc = |extra: Value| {
        let base = json!({"driver": "preallocate", "node-name": "p", "file": "n"});
        json!({"execute": "blockdev-reopen", "arguments": reopen_args(base, extra)})
    };
    let cor = json!({"execute": "blockdev-reopen", "arguments": {"options": [
        {"driver": "copy-on-read", "node-name": "c", "file": "n"}]}});
    let session = vec![
        json!({"execute": "blockdev-add", "arguments":
            {"driver": "null-co", "node-name": "n", "size": 16 << 20}}),
        json!({"execute": "blockdev-add", "arguments":
            {"driver": "copy-on-read", "node-name": "c", "file": "n"}}),
        cor,
        json!({"execute": "blockdev-del", "arguments": {"node-name": "c"}}),
        json!({"execute": "blockdev-add", "arguments":
            {"driver": "preallocate", "node-name": "p", "file": "n"}}),
        prealloc(json!({"prealloc-size": 1 << 20, "prealloc-align": 65536})),
        prealloc(json!({"prealloc-align": 1000})),
        prealloc(json!({"read-only": true})),
        prealloc(json!({"prealloc-size": 1 << 20, "prealloc-align": 1000})),
        prealloc(json!({"prealloc-size": 2 << 20, "prealloc-align": 4096})),
    ];
    let theirs = common::transcript(Command::new("qemu-storage-daemon"), &session).await;
    let ours = common::transcript(storaged(), &session).await;
    assert_eq!(ours, theirs, "ours, then QSD's");
    assert!(ours[5].get("return").is_some(), "{}", ours[5]);
}

/// The images of [`three_deep_chain`] and an unrelated `oth.qcow2` in a
/// new directory, for `program`.
fn chain_daemon(program: Command) -> TestDaemon {
    let dir = tempfile::tempdir().expect("dir");
    let _ = three_deep_chain(dir.path());
    let other = dir.path().join("oth.qcow2");
    common::create_qcow2(path(&other), "16M");
    TestDaemon::spawn(program, dir, |_| Vec::new())
}

/// Opens the chain as `base` <- `mid` <- `top` with their files named
/// `mid-file` and `top-file` (so a reopen can give them), and `oth`.
async fn open_chain(client: &mut qmp::client::Client, daemon: &TestDaemon) {
    for (node, backing) in [("base", None), ("mid", Some("base")), ("top", Some("mid"))] {
        let file = json!({"driver": "file", "node-name": format!("{node}-file"),
                          "filename": path(&daemon.path(&format!("{node}.qcow2")))});
        let mut options = json!({"driver": "qcow2", "node-name": node, "file": file});
        if let Some(backing) = backing {
            options["backing"] = json!(backing);
        }
        ok(client, "blockdev-add", options).await;
    }
    let oth = json!({"driver": "qcow2", "node-name": "oth",
                     "file": {"driver": "file", "filename": path(&daemon.path("oth.qcow2"))}});
    ok(client, "blockdev-add", oth).await;
}

/// A reopen of `node` of the chain with its named file and `backing`
/// (`Value::Null` for none; left out if absent).
fn chain_reopen(node: &str, backing: Option<Value>) -> Value {
    let mut options = json!({"driver": "qcow2", "node-name": node, "file": format!("{node}-file")});
    if let Some(backing) = backing {
        options["backing"] = backing;
    }
    json!({"options": [options]})
}

/// Reopens while jobs work along the chain: an intermediate commit (its
/// filter unnamed: seen through when the node below it is named, not
/// replaced, a backing option left out), an active commit and a stream
/// (the links they froze), each job cancelled before the next.
async fn job_links_session(program: Command) -> Vec<Value> {
    let daemon = chain_daemon(program);
    let mut client = daemon.connect().await;
    open_chain(&mut client, &daemon).await;
    let mut seen = Vec::new();
    let jobs = [
        json!({"job-id": "c", "device": "top", "top-node": "mid", "base-node": "base", "speed": 1}),
        json!({"job-id": "a", "device": "top", "speed": 1}),
    ];
    let steps: [&[(&str, Option<Value>)]; 3] = [
        &[
            ("top", Some(json!("mid"))),
            ("top", Some(json!("oth"))),
            ("top", Some(Value::Null)),
            ("top", None),
            ("mid", Some(json!("base"))),
            ("mid", Some(json!("oth"))),
            ("mid", Some(Value::Null)),
        ],
        &[("top", Some(json!("mid"))), ("mid", Some(json!("oth")))],
        &[
            ("top", Some(json!("mid"))),
            ("top", Some(json!("oth"))),
            ("mid", Some(json!("oth"))),
            ("mid", Some(json!("base"))),
        ],
    ];
    for (index, reopens) in steps.iter().enumerate() {
        let (command, arguments) = match jobs.get(index) {
            Some(commit) => ("block-commit", commit.clone()),
            None => (
                "block-stream",
                json!({"job-id": "s", "device": "top", "base-node": "base", "speed": 1}),
            ),
        };
        seen.push(reply(&mut client, command, arguments.clone()).await);
        for (node, backing) in reopens.iter() {
            let arguments = chain_reopen(node, backing.clone());
            seen.push(reply(&mut client, "blockdev-reopen", arguments).await);
        }
        let job = arguments["job-id"].clone();
        ok(
            &mut client,
            "block-job-cancel",
            json!({"device": job, "force": true}),
        )
        .await;
        wait_event(&mut client, "BLOCK_JOB_CANCELLED").await;
    }
    // Free again.
    seen.push(
        reply(
            &mut client,
            "blockdev-reopen",
            chain_reopen("mid", Some(json!("oth"))),
        )
        .await,
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_a_job_relies_on_refuse_a_reopen_as_in_qemu_storage_daemon() {
    let theirs = job_links_session(Command::new("qemu-storage-daemon")).await;
    let ours = job_links_session(storaged()).await;
    assert_eq!(ours, theirs, "ours, then QSD's");
    let refused = |at: usize| {
        ours[at]["error"]["desc"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(refused(2), "Cannot replace implicit backing child of top");
    assert_eq!(refused(4), "backing is missing for 'top'");
    assert_eq!(
        refused(6),
        "Cannot change frozen 'backing' link from 'mid' to 'base'"
    );
    assert!(ours.last().unwrap().get("return").is_some());
}

/// The edge into a commit filter the user named is frozen as well (QSD
/// 10 aborts on its assertion when it is moved); the commit then
/// completes with the data it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_into_a_named_commit_filter_stays_while_the_commit_runs() {
    let mut daemon = chain_daemon(storaged());
    let expected = daemon.path("expected.raw");
    common::tool(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-O",
            "raw",
            path(&daemon.path("top.qcow2")),
            path(&expected),
        ],
    );
    let mut client = daemon.connect().await;
    open_chain(&mut client, &daemon).await;
    ok(
        &mut client,
        "block-commit",
        json!({"job-id": "c", "device": "top", "top-node": "mid", "base-node": "base",
               "speed": 1, "filter-node-name": "ct"}),
    )
    .await;
    for backing in ["mid", "base", "oth"] {
        let (_, desc) = error(
            &mut client,
            "blockdev-reopen",
            chain_reopen("top", Some(json!(backing))),
        )
        .await;
        assert_eq!(
            desc,
            "Cannot change frozen 'backing' link from 'top' to 'ct'"
        );
    }
    ok(
        &mut client,
        "blockdev-reopen",
        chain_reopen("top", Some(json!("ct"))),
    )
    .await;
    ok(
        &mut client,
        "block-job-set-speed",
        json!({"device": "c", "speed": 0}),
    )
    .await;
    let completed = wait_event(&mut client, "BLOCK_JOB_COMPLETED").await;
    assert!(completed["data"].get("error").is_none(), "{completed}");
    assert_eq!(
        backing_of(&mut client, "top").await,
        json!(["top", "base.qcow2"])
    );
    ok(&mut client, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    compare_raw(&expected, &daemon.path("top.qcow2"));
}

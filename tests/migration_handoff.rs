//! A live-migration style hand-off of one qcow2 image between two daemon
//! processes, as a migration's source and destination storage daemons do:
//! the source serves the image over NBD and writes it, the destination
//! opens it with `active=off` and an `allow-inactive` export, then the
//! source gives it up (`blockdev-set-active false`) and the destination
//! takes it (`blockdev-set-active true`).
//!
//! At each step QEMU's own tools probe the image locks (`qemu-img info -U`
//! always opens it, `qemu-img info` only if nobody writes it, `qemu-io`
//! read-write only if nobody holds it) and NBD clients use both exports.
//! The whole session, with paths blanked, is run with two storaged
//! processes and with two qemu-storage-daemon processes and must be the
//! same; the data the source's client wrote is then read through the
//! destination.

mod common;

use std::path::Path;
use std::process::Command;

use common::{reply, storaged, TestDaemon};
use serde_json::{json, Value};

/// Runs a QEMU tool; its outcome with the directory blanked and timing
/// lines dropped.
fn outcome(dir: &Path, program: &str, args: &[&str]) -> Value {
    let out = Command::new(program).args(args).output().expect(program);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = text
        .lines()
        .filter(|line| !line.contains(" ops; "))
        .map(|line| line.replace(dir.to_str().unwrap(), "DIR"))
        .collect();
    json!({"ok": out.status.success(), "output": lines})
}

/// What QEMU's tools can open of the image now.
fn locks(dir: &Path, image: &Path) -> Value {
    let image = image.to_str().unwrap();
    json!({
        "info -U": outcome(dir, "qemu-img", &["info", "-U", "--output=json", image])["ok"],
        "info": outcome(dir, "qemu-img", &["info", image])["ok"],
        "info error": first_error(outcome(dir, "qemu-img", &["info", image])),
        "qemu-io read-write": outcome(dir, "qemu-io", &["-f", "qcow2", "-c", "read 0 512", image]),
    })
}

fn first_error(outcome: Value) -> Value {
    match outcome["ok"].as_bool() {
        Some(true) => Value::Null,
        _ => outcome["output"][0].clone(),
    }
}

/// Runs `command` through qemu-io on the export `name` of `daemon`.
fn nbd_io(dir: &Path, daemon: &TestDaemon, name: &str, command: &str) -> Value {
    let uri = format!(
        "nbd+unix:///{name}?socket={}",
        daemon.path("nbd.sock").display()
    );
    let mut result = outcome(dir, "qemu-io", &["-f", "raw", "-c", command, &uri]);
    for line in result["output"].as_array_mut().unwrap() {
        *line = json!(line
            .as_str()
            .unwrap()
            .replace(daemon.dir.path().to_str().unwrap(), "DAEMON"));
    }
    result
}

/// The `active` flag of every node named by the user (automatic
/// `#block` names differ between daemons).
async fn active(client: &mut qmp::client::Client) -> Value {
    let nodes = reply(client, "query-named-block-nodes", json!({"flat": true})).await;
    let named = nodes["return"].as_array().unwrap().iter();
    let flags = named
        .filter(|n| !n["node-name"].as_str().unwrap().starts_with('#'))
        .map(|n| {
            (
                n["node-name"].as_str().unwrap().to_string(),
                n["active"].clone(),
            )
        });
    Value::Object(flags.collect())
}

/// The length of the `file` node, and of the file on disk.
async fn file_length(client: &mut qmp::client::Client) -> Value {
    let nodes = reply(client, "query-named-block-nodes", json!({"flat": true})).await;
    let file = nodes["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "file")
        .unwrap();
    let on_disk = std::fs::metadata(file["image"]["filename"].as_str().unwrap())
        .unwrap()
        .len();
    json!({"node": file["image"]["virtual-size"], "on disk": on_disk})
}

fn nodes(image: &Path, active: &str, export: &str) -> Vec<String> {
    vec![
        "--blockdev".into(),
        format!(
            "file,node-name=file,filename={},active={active}",
            image.display()
        ),
        "--blockdev".into(),
        format!("qcow2,node-name=disk,file=file,active={active}"),
        "--nbd-server".into(),
        String::new(),
        "--export".into(),
        export.into(),
    ]
}

fn start(program: fn() -> Command, image: &Path, active: &str, export: &str) -> TestDaemon {
    TestDaemon::spawn(program(), tempfile::tempdir().unwrap(), |dir| {
        let mut args = nodes(image, active, export);
        args[5] = format!(
            "addr.type=unix,addr.path={}",
            dir.join("nbd.sock").display()
        );
        args
    })
}

/// The hand-off, step by step; returns the transcript.
async fn handoff(program: fn() -> Command) -> Vec<Value> {
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path();
    let image = dir.join("disk.qcow2");
    common::create_qcow2(image.to_str().unwrap(), "16M");
    let mut log = Vec::new();

    // The source serves the image and writes it.
    let source = start(
        program,
        &image,
        "on",
        "nbd,id=src,name=src,node-name=disk,writable=on,allow-inactive=on",
    );
    let mut src = source.connect().await;
    log.push(nbd_io(dir, &source, "src", "write -P 0xab 0 1M"));
    log.push(locks(dir, &image));
    // A writer that does not allow inactive nodes holds the image.
    let blocker = json!({"type": "nbd", "id": "blocker", "node-name": "disk", "writable": true});
    log.push(reply(&mut src, "block-export-add", blocker).await);
    log.push(reply(&mut src, "blockdev-set-active", json!({"active": false})).await);
    let one = json!({"active": false, "node-name": "disk"});
    log.push(reply(&mut src, "blockdev-set-active", one).await);
    let child = json!({"active": false, "node-name": "file"});
    log.push(reply(&mut src, "blockdev-set-active", child).await);
    log.push(reply(&mut src, "block-export-del", json!({"id": "blocker"})).await);
    log.push(active(&mut src).await);

    // The destination opens the image inactive, next to the writing
    // source, and serves it read-only until activated.
    let destination = start(
        program,
        &image,
        "off",
        "nbd,id=dst,name=dst,node-name=disk,writable=on,allow-inactive=on",
    );
    let mut dst = destination.connect().await;
    log.push(active(&mut dst).await);
    log.push(locks(dir, &image));
    log.push(nbd_io(dir, &destination, "dst", "write -P 0xcd 1M 64k"));
    let resize = json!({"node-name": "disk", "size": 32 << 20});
    log.push(reply(&mut dst, "block_resize", resize).await);
    // What the destination reads now it caches (an L2 table); the source
    // then allocates clusters there.
    log.push(nbd_io(dir, &destination, "dst", "read -P 0 4M 64k"));
    log.push(nbd_io(dir, &source, "src", "write -P 0x5a 4M 64k"));

    // The source hands the image over: it writes out its metadata, marks
    // the image clean, drops its locks and refuses writes.
    log.push(reply(&mut src, "blockdev-set-active", json!({"active": false})).await);
    log.push(active(&mut src).await);
    log.push(locks(dir, &image));
    log.push(outcome(
        dir,
        "qemu-img",
        &["check", "-U", image.to_str().unwrap()],
    ));
    log.push(nbd_io(dir, &source, "src", "write -P 0xef 0 64k"));
    log.push(nbd_io(dir, &source, "src", "read -P 0xab 0 1M"));

    // The destination takes the image and serves what the source wrote.
    log.push(reply(&mut dst, "blockdev-set-active", json!({"active": true})).await);
    log.push(active(&mut dst).await);
    // The destination knows how far the source grew the file.
    log.push(file_length(&mut dst).await);
    log.push(locks(dir, &image));
    log.push(nbd_io(dir, &destination, "dst", "read -P 0xab 0 1M"));
    log.push(nbd_io(dir, &destination, "dst", "read -P 0x5a 4M 64k"));
    log.push(nbd_io(dir, &destination, "dst", "write -P 0xcd 1M 64k"));
    // The source cannot take it back while the destination writes.
    let back = json!({"active": true, "node-name": "disk"});
    log.push(reply(&mut src, "blockdev-set-active", back).await);
    log.push(active(&mut src).await);

    // Both processes quit; what the destination wrote is in the image.
    let mut source = source;
    let mut destination = destination;
    for (client, daemon) in [(&mut src, &mut source), (&mut dst, &mut destination)] {
        let _ = client.execute("quit", json!({})).await;
        assert!(daemon.wait_exit().success());
    }
    log.push(outcome(
        dir,
        "qemu-io",
        &[
            "-r",
            "-f",
            "qcow2",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0xcd 1M 64k",
            image.to_str().unwrap(),
        ],
    ));
    log
}

fn qsd() -> Command {
    Command::new("qemu-storage-daemon")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_storaged_processes_hand_an_image_over_as_qemu_storage_daemons_do() {
    let expected = handoff(qsd).await;
    let got = handoff(storaged).await;
    for (step, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, expected, "step {step}");
    }
    assert_eq!(got.len(), expected.len());

    // What the transcript shows, step by step.
    let done = json!({"return": {}});
    let refused = |desc: &str| json!({"error": {"class": "GenericError", "desc": desc}});
    let writer_holds = |locks: &Value| {
        locks["info -U"] == true
            && locks["info"] == false
            && locks["qemu-io read-write"]["ok"] == false
    };
    assert!(writer_holds(&got[1]), "the active source locks: {}", got[1]);
    assert_eq!(
        got[1]["info error"],
        "qemu-img: Could not open 'DIR/disk.qcow2': Failed to get shared \"write\" lock"
    );
    assert_eq!(
        got[3],
        refused("Failed to inactivate all nodes: Operation not permitted")
    );
    assert_eq!(
        got[4],
        refused("Failed to inactivate node: Operation not permitted")
    );
    assert_eq!(got[5], refused("Node has active parent node"));
    assert_eq!(got[7], json!({"disk": true, "file": true}));
    assert_eq!(got[8], json!({"disk": false, "file": false}));
    assert!(
        writer_holds(&got[9]),
        "the inactive destination opened the image without conflict"
    );
    assert!(got[10]["output"][0]
        .as_str()
        .unwrap()
        .contains("Operation not permitted"));
    assert_eq!(
        got[11],
        refused("Permission 'resize' unavailable on inactive node")
    );
    assert_eq!(got[12]["ok"], true, "{}", got[12]);
    assert_eq!(got[13]["ok"], true, "{}", got[13]);
    assert_eq!(got[14], done);
    assert_eq!(got[15], json!({"disk": false, "file": false}));
    let free = &got[16];
    assert!(
        free["info"] == true && free["qemu-io read-write"]["ok"] == true,
        "nobody holds the image: {free}"
    );
    assert!(got[17]["output"][0]
        .as_str()
        .unwrap()
        .contains("No errors were found"));
    assert!(got[18]["output"][0]
        .as_str()
        .unwrap()
        .contains("Operation not permitted"));
    assert_eq!(got[19]["ok"], true);
    assert_eq!(got[20], done);
    assert_eq!(got[21], json!({"disk": true, "file": true}));
    assert_eq!(
        got[22]["node"], got[22]["on disk"],
        "the file's length read again"
    );
    assert!(writer_holds(&got[23]), "the destination locks: {}", got[23]);
    assert_eq!(
        got[24]["output"][0],
        "read 1048576/1048576 bytes at offset 0"
    );
    assert_eq!(
        got[25]["output"][0], "read 65536/65536 bytes at offset 4194304",
        "the destination read the metadata again when activated"
    );
    assert_eq!(
        got[26]["output"][0],
        "wrote 65536/65536 bytes at offset 1048576"
    );
    assert_eq!(got[27], refused("Failed to get \"write\" lock"));
    assert_eq!(got[28], json!({"disk": false, "file": true}));
    assert_eq!(got[29]["ok"], true, "{}", got[29]);
}

/// A `preallocate` filter gives its preallocation back before the image is
/// handed over (storaged does it before `blockdev-set-active` answers;
/// QSD's filter does it shortly after, when its permissions drop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivation_gives_a_preallocation_back() {
    let daemon = TestDaemon::start_in(tempfile::tempdir().unwrap(), |dir| {
        let image = dir.join("disk.qcow2");
        common::create_qcow2(image.to_str().unwrap(), "16M");
        [
            "--blockdev".to_string(),
            format!("file,node-name=file,filename={}", image.display()),
            "--blockdev".into(),
            "preallocate,node-name=prealloc,file=file".into(),
            "--blockdev".into(),
            "qcow2,node-name=disk,file=prealloc".into(),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "nbd,id=e,name=e,node-name=disk,writable=on,allow-inactive=on".into(),
        ]
        .to_vec()
    });
    let dir = daemon.dir.path();
    let image = dir.join("disk.qcow2");
    let out = nbd_io(dir, &daemon, "e", "write -P 0x11 0 4M");
    assert_eq!(out["ok"], true, "{out}");
    let preallocated = std::fs::metadata(&image).unwrap().len();
    let mut qmp = daemon.connect().await;
    assert_eq!(
        reply(&mut qmp, "blockdev-set-active", json!({"active": false})).await,
        json!({"return": {}})
    );
    let handed_over = std::fs::metadata(&image).unwrap().len();
    let check = common::tool("qemu-img", &["check", "-U", image.to_str().unwrap()]);
    let end: u64 = check
        .lines()
        .find_map(|l| l.strip_prefix("Image end offset: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(preallocated > end, "{preallocated} > {end}: preallocated");
    assert_eq!(handed_over, end, "the file ends where its data ends");
}

/// The graph around inactive nodes and `x-blockdev-set-iothread`, step by
/// step as QSD answers: an active parent cannot take an inactive child,
/// activating an overlay activates its backing chain, and the checks and
/// argument errors of both commands.
async fn graph_session(daemon: &TestDaemon) -> Vec<Value> {
    let mut qmp = daemon.connect().await;
    let steps = [
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "filter", "file": "q"}),
        ),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "filter", "file": "q", "read-only": true}),
        ),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "filter", "file": "q", "active": false}),
        ),
        ("blockdev-del", json!({"node-name": "filter"})),
        (
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "snap", "active": false, "backing": "q",
            "file": {"driver": "file", "filename": daemon.path("snap.qcow2")}}),
        ),
        (
            "blockdev-set-active",
            json!({"active": true, "node-name": "snap"}),
        ),
        (
            "blockdev-set-active",
            json!({"active": false, "node-name": "q"}),
        ),
        (
            "blockdev-set-active",
            json!({"active": false, "node-name": "snap"}),
        ),
        (
            "blockdev-set-active",
            json!({"active": false, "node-name": "snap"}),
        ),
        (
            "blockdev-set-active",
            json!({"active": false, "node-name": "nope"}),
        ),
        ("blockdev-set-active", json!({})),
        ("blockdev-set-active", json!({"active": "yes"})),
        ("blockdev-set-active", json!({"active": true, "bogus": 1})),
        (
            "block-export-add",
            json!({"type": "nbd", "id": "e0", "node-name": "r", "writable": true}),
        ),
        (
            "x-blockdev-set-iothread",
            json!({"node-name": "nope", "iothread": "io0"}),
        ),
        (
            "x-blockdev-set-iothread",
            json!({"node-name": "r", "iothread": "io0"}),
        ),
        (
            "x-blockdev-set-iothread",
            json!({"node-name": "r", "iothread": "nope"}),
        ),
        (
            "x-blockdev-set-iothread",
            json!({"node-name": "r", "iothread": "nope", "force": true}),
        ),
        (
            "x-blockdev-set-iothread",
            json!({"node-name": "r", "iothread": "io0", "force": true}),
        ),
        (
            "x-blockdev-set-iothread",
            json!({"node-name": "file", "iothread": null}),
        ),
        (
            "x-blockdev-set-iothread",
            json!({"node-name": "file", "iothread": 5}),
        ),
        ("x-blockdev-set-iothread", json!({"node-name": "file"})),
        (
            "blockdev-set-active",
            json!({"active": false, "node-name": "r"}),
        ),
        ("block-export-del", json!({"id": "e0"})),
        ("blockdev-set-active", json!({"active": false})),
        // A writer that opens an image refuses an inactive file first.
        (
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "q2", "file": "file"}),
        ),
    ];
    let mut log = Vec::new();
    for (command, arguments) in steps {
        log.push(reply(&mut qmp, command, arguments).await);
        log.push(active(&mut qmp).await);
    }
    log
}

fn graph_nodes(dir: &Path) -> Vec<String> {
    let image = dir.join("disk.qcow2");
    for path in [&image, &dir.join("snap.qcow2")] {
        common::create_qcow2(path.to_str().unwrap(), "16M");
    }
    let mut args = nodes(&image, "off", "nbd,id=x,node-name=disk,allow-inactive=on");
    args[5] = format!(
        "addr.type=unix,addr.path={}",
        dir.join("nbd.sock").display()
    );
    args.extend([
        "--blockdev".into(),
        "raw,node-name=q,file=disk,active=off".into(),
        "--blockdev".into(),
        "null-co,node-name=r".into(),
        "--object".into(),
        "iothread,id=io0".into(),
    ]);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_nodes_in_the_graph_as_qemu_storage_daemon() {
    let qsd = TestDaemon::spawn(qsd(), tempfile::tempdir().unwrap(), graph_nodes);
    let expected = graph_session(&qsd).await;
    drop(qsd);
    let ours = TestDaemon::start_in(tempfile::tempdir().unwrap(), graph_nodes);
    let got = graph_session(&ours).await;
    for (step, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, expected, "step {step}");
    }
    assert_eq!(got.len(), expected.len());
    let refused = |desc: &str| json!({"error": {"class": "GenericError", "desc": desc}});
    assert_eq!(
        got[0],
        refused("Inactive 'q' can't be a file child of active 'filter'")
    );
    assert_eq!(
        got[got.len() - 2],
        refused("Inactive 'file' can't be a file child of active 'q2'")
    );
    // Activating the overlay activated its backing chain.
    assert_eq!(
        got[11],
        json!({"snap": true, "q": true, "disk": true, "file": true, "r": true})
    );
}

/// An export without `allow-inactive` activates its node first, so it is
/// refused while another process writes the image, with the error of the
/// activation (as QSD). The file node below stays active then (as in QSD)
/// while the other process goes on growing the file; once the image is
/// handed over, the destination knows the file's new length. Returns the
/// transcript compared with QSD's, and what follows the hand-off.
async fn refused_export(program: fn() -> Command) -> (Vec<Value>, Vec<Value>) {
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path();
    let image = dir.join("disk.qcow2");
    common::create_qcow2(image.to_str().unwrap(), "16M");
    let writable = "nbd,id=src,name=src,node-name=disk,writable=on,allow-inactive=on";
    let source = start(program, &image, "on", writable);
    let mut src = source.connect().await;
    let later = "nbd,id=dst,name=dst,node-name=disk,writable=on,allow-inactive=on";
    let destination = start(program, &image, "off", later);
    let mut dst = destination.connect().await;
    let mut log = Vec::new();
    for writable in [false, true] {
        let export = json!({"type": "nbd", "id": "e", "node-name": "disk", "writable": writable});
        log.push(reply(&mut dst, "block-export-add", export).await);
    }
    log.push(active(&mut dst).await);
    log.push(reply(&mut dst, "query-block-exports", json!({})).await);
    log.push(nbd_io(dir, &source, "src", "write -P 0x77 8M 64k"));
    log.push(reply(&mut src, "blockdev-set-active", json!({"active": false})).await);
    log.push(reply(&mut dst, "blockdev-set-active", json!({"active": true})).await);
    let after = vec![
        file_length(&mut dst).await,
        nbd_io(dir, &destination, "dst", "read -P 0x77 8M 64k"),
    ];
    (log, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cannot_activate_an_image_another_process_writes() {
    let (expected, _) = refused_export(qsd).await;
    let (got, after) = refused_export(storaged).await;
    assert_eq!(got, expected);
    let refused =
        json!({"error": {"class": "GenericError", "desc": "Failed to get \"write\" lock"}});
    assert_eq!(got[..2], [refused.clone(), refused]);
    assert_eq!(got[2], json!({"disk": false, "file": true}));
    assert_eq!(got[3]["return"].as_array().unwrap().len(), 1, "only dst");
    assert_eq!(got[6], json!({"return": {}}));
    // QSD 10 keeps the file's old length here (the file node was already
    // active), so it reads the cluster the source allocated past it as
    // zeroes; storaged reads the length again.
    assert_eq!(after[0]["node"], after[0]["on disk"], "{}", after[0]);
    assert_eq!(after[1]["ok"], true, "{}", after[1]);
}

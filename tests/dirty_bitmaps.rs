//! Dirty bitmaps against QSD's: the same bitmaps (several granularities,
//! one disabled, one enabled half way) on the same image under the same
//! `qemu-io` writes, write-zeroes and discards over NBD; then counts,
//! recording states and the bitmaps' SHA-256
//! (`x-debug-block-dirty-bitmap-sha256`, which hashes the bits as QEMU
//! lays them out) must be equal, before and after clear and merge.

mod common;

use std::process::Command;

use common::{ok, reply, tool, TestDaemon};
use serde_json::{json, Value};

/// Writes through an NBD export of `disk`, in two rounds.
const ROUNDS: [&[&str]; 2] = [
    &[
        "write -P 1 0 4k",
        "write -P 2 100000 3000",
        "write -P 3 1M 1M",
        "write -z 5M 64k",
        "discard 7M 128k",
    ],
    &["write -P 4 12M 512", "write -P 5 15M 70000"],
];

/// A daemon with `disk` (a new qcow2 image of `size`) and an NBD server on
/// `nbd.sock`, plus the `--export` given.
fn qcow2_daemon(program: Command, size: &str, export: Option<&str>) -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", image.to_str().unwrap(), size],
    );
    TestDaemon::spawn(program, dir, |dir| {
        let mut args = vec![
            "--blockdev".into(),
            format!(
                "qcow2,node-name=disk,file.driver=file,file.filename={}",
                dir.join("disk.qcow2").display()
            ),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
        ];
        if let Some(export) = export {
            args.extend(["--export".into(), export.into()]);
        }
        args
    })
}

/// `qemu-io` running `commands` on the raw export at `uri`.
fn qemu_io(uri: &str, commands: &[&str]) {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(uri);
    tool("qemu-io", &args);
}

/// Waits until the daemon no longer lists export `id` (a deleted one is
/// gone once no client holds it).
async fn until_export_gone(qmp: &mut qmp::client::Client, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ok(qmp, "query-block-exports", json!({}))
        .await
        .as_array()
        .is_some_and(|exports| exports.iter().any(|e| e["id"] == id))
    {
        assert!(std::time::Instant::now() < deadline, "export not gone");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What a daemon's bitmaps say after the same story.
async fn bitmaps_after_writes(program: Command) -> Vec<Value> {
    let daemon = qcow2_daemon(
        program,
        "16M",
        Some("nbd,id=e0,node-name=disk,name=disk,writable=on"),
    );
    let mut qmp = daemon.connect().await;
    for (name, extra) in [
        ("fine", json!({"granularity": 512})),
        ("coarse", json!({"granularity": 1 << 20})),
        ("default", json!({})),
        ("off", json!({"disabled": true})),
        ("later", json!({"disabled": true, "granularity": 4096})),
    ] {
        let mut arguments = json!({"node": "disk", "name": name});
        arguments
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ok(&mut qmp, "block-dirty-bitmap-add", arguments).await;
    }
    let uri = format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    );
    let mut seen = Vec::new();
    for (round, commands) in ROUNDS.iter().enumerate() {
        if round == 1 {
            ok(
                &mut qmp,
                "block-dirty-bitmap-enable",
                json!({"node": "disk", "name": "later"}),
            )
            .await;
        }
        qemu_io(&uri, commands);
        seen.push(snapshot(&mut qmp).await);
    }
    ok(
        &mut qmp,
        "block-dirty-bitmap-clear",
        json!({"node": "disk", "name": "fine"}),
    )
    .await;
    ok(
        &mut qmp,
        "block-dirty-bitmap-merge",
        json!({"node": "disk", "target": "fine", "bitmaps": ["later", {"node": "disk", "name": "coarse"}]}),
    )
    .await;
    ok(
        &mut qmp,
        "block-dirty-bitmap-remove",
        json!({"node": "disk", "name": "off"}),
    )
    .await;
    seen.push(snapshot(&mut qmp).await);
    seen
}

/// The node's `dirty-bitmaps` and each bitmap's hash.
async fn snapshot(qmp: &mut qmp::client::Client) -> Value {
    let nodes = ok(qmp, "query-named-block-nodes", json!({"flat": true})).await;
    let disk = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "disk")
        .unwrap()
        .clone();
    let mut hashes = Vec::new();
    for bitmap in disk["dirty-bitmaps"].as_array().unwrap() {
        let name = bitmap["name"].as_str().unwrap();
        let hash = ok(
            qmp,
            "x-debug-block-dirty-bitmap-sha256",
            json!({"node": "disk", "name": name}),
        )
        .await;
        hashes.push(json!([name, hash["sha256"]]));
    }
    json!({"bitmaps": disk["dirty-bitmaps"], "hashes": hashes})
}

#[tokio::test]
async fn bitmaps_record_what_qsds_record() {
    let theirs = bitmaps_after_writes(Command::new("qemu-storage-daemon")).await;
    let ours = bitmaps_after_writes(common::storaged()).await;
    for (round, (theirs, ours)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(theirs, ours, "after step {round}");
    }
    // The story did dirty something, and the disabled bitmap nothing.
    let count = |name: &str| {
        ours[0]["bitmaps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    assert!(count("fine") > 0);
    assert_eq!(count("off"), 0);
}

/// Replies and maps of a daemon that publishes bitmaps over NBD: refused
/// exports (an enabled bitmap read-only, missing bitmaps and nodes), a
/// bitmap found by name and one by `{node, name}`, both busy while
/// published and free again once the export is gone.
async fn published_bitmaps(program: Command) -> Vec<Value> {
    let daemon = qcow2_daemon(
        program,
        "64M",
        Some("nbd,id=w,node-name=disk,name=w,writable=on"),
    );
    let socket = daemon.path("nbd.sock").display().to_string();
    let mut qmp = daemon.connect().await;
    let mut seen = Vec::new();
    for (name, granularity) in [("b0", 65536), ("fine", 512)] {
        ok(
            &mut qmp,
            "block-dirty-bitmap-add",
            json!({"node": "disk", "name": name, "granularity": granularity}),
        )
        .await;
    }
    qemu_io(
        &format!("nbd+unix:///w?socket={socket}"),
        &["write 1M 64k", "write 3000000 1000"],
    );
    let export = |bitmaps: Value| json!({"type": "nbd", "id": "e", "node-name": "disk", "name": "e", "bitmaps": bitmaps});
    for bitmaps in [
        json!(["b0"]),
        json!(["nope"]),
        json!([{"node": "x", "name": "b0"}]),
        json!([{"node": "disk", "name": "zz"}]),
    ] {
        seen.push(reply(&mut qmp, "block-export-add", export(bitmaps)).await);
    }
    ok(
        &mut qmp,
        "block-dirty-bitmap-disable",
        json!({"node": "disk", "name": "b0"}),
    )
    .await;
    let both = json!(["b0", {"node": "disk", "name": "fine"}]);
    seen.push(reply(&mut qmp, "block-export-add", export(both)).await);
    for bitmap in ["b0", "fine"] {
        let map = tool(
            "nbdinfo",
            &[
                &format!("--map=qemu:dirty-bitmap:{bitmap}"),
                "--json",
                &format!("nbd+unix:///e?socket={socket}"),
            ],
        );
        seen.push(serde_json::from_str(&map).unwrap());
    }
    seen.push(snapshot(&mut qmp).await);
    for (command, name) in [
        ("block-dirty-bitmap-clear", "fine"),
        ("block-dirty-bitmap-remove", "b0"),
    ] {
        seen.push(reply(&mut qmp, command, json!({"node": "disk", "name": name})).await);
    }
    common::delete_export(&mut qmp, "e").await;
    // The export is gone once no client holds it (none does): the
    // bitmaps are free again.
    until_export_gone(&mut qmp, "e").await;
    seen.push(snapshot(&mut qmp).await);
    seen.push(
        reply(
            &mut qmp,
            "block-dirty-bitmap-clear",
            json!({"node": "disk", "name": "fine"}),
        )
        .await,
    );
    seen
}

#[tokio::test]
async fn nbd_exports_publish_bitmaps_as_qsds_do() {
    let theirs = published_bitmaps(Command::new("qemu-storage-daemon")).await;
    let ours = published_bitmaps(common::storaged()).await;
    for (step, (theirs, ours)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(ours, theirs, "step {step}: ours, then QSD's");
    }
    assert_eq!(ours.len(), theirs.len());
    // The maps show the writes: 64 KiB at 1 MiB in b0.
    let map = ours[5].as_array().unwrap();
    assert!(map
        .iter()
        .any(|e| e["offset"] == 1 << 20 && e["length"] == 65536 && e["type"] == 1));
}

/// The bitmaps of a daemon whose node grows (then takes a write past the
/// old end) and shrinks.
async fn bitmaps_across_resizes(program: Command) -> Vec<Value> {
    let daemon = qcow2_daemon(program, "64M", None);
    let uri = format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    );
    let mut qmp = daemon.connect().await;
    for (name, granularity) in [("coarse", 65536), ("fine", 4096)] {
        ok(
            &mut qmp,
            "block-dirty-bitmap-add",
            json!({"node": "disk", "name": name, "granularity": granularity}),
        )
        .await;
    }
    let mut seen = Vec::new();
    // NBD exports hold the size: each round exports, writes, unexports.
    for (writes, new_size) in [
        (&["write 1M 64k", "write 60M 64k"][..], 128u64 << 20),
        (&["write 100M 64k"][..], 32 << 20),
    ] {
        ok(
            &mut qmp,
            "block-export-add",
            json!({"type": "nbd", "id": "e", "node-name": "disk", "writable": true}),
        )
        .await;
        qemu_io(&uri, writes);
        common::delete_export(&mut qmp, "e").await;
        until_export_gone(&mut qmp, "e").await;
        seen.push(snapshot(&mut qmp).await);
        ok(
            &mut qmp,
            "block_resize",
            json!({"node-name": "disk", "size": new_size}),
        )
        .await;
    }
    seen.push(snapshot(&mut qmp).await);
    seen
}

#[tokio::test]
async fn bitmaps_follow_resizes_as_qsds_do() {
    let theirs = bitmaps_across_resizes(Command::new("qemu-storage-daemon")).await;
    let ours = bitmaps_across_resizes(common::storaged()).await;
    assert_eq!(ours, theirs, "ours, then QSD's");
    // The write past the old end counted: three 64 KiB writes.
    let fine = &ours[1]["bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "fine")
        .unwrap()["count"];
    assert_eq!(fine, 3 * 65536);
}

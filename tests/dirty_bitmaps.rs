//! Dirty bitmaps against QSD's: the same bitmaps (several granularities,
//! one disabled, one enabled half way) on the same image under the same
//! `qemu-io` writes, write-zeroes and discards over NBD; then counts,
//! recording states and the bitmaps' SHA-256
//! (`x-debug-block-dirty-bitmap-sha256`, which hashes the bits as QEMU
//! lays them out) must be equal, before and after clear and merge.

mod common;

use std::process::Command;

use common::{ok, tool, TestDaemon};
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

/// What a daemon's bitmaps say after the same story.
async fn bitmaps_after_writes(program: Command) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            image.to_str().unwrap(),
            "16M",
        ],
    );
    let daemon = TestDaemon::spawn(program, dir, |dir| {
        vec![
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
            "--export".into(),
            "nbd,id=e0,node-name=disk,name=disk,writable=on".into(),
        ]
    });
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
        let mut args = vec!["-f", "raw"];
        for command in *commands {
            args.extend(["-c", command]);
        }
        args.push(&uri);
        tool("qemu-io", &args);
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

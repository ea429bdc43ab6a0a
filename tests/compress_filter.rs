//! The `compress` filter against QSD's: refused over a format that stores
//! no compressed clusters; over qcow2, an aligned write and a small one
//! (completed to a whole cluster) land compressed and read back, and a
//! second write to a compressed cluster fails as QEMU's does. The replies,
//! what `qemu-io` saw, `qemu-img map` and `qemu-img check` of the image
//! must be the same for both.

mod common;

use std::process::Command;

use common::{reply, tool, TestDaemon};
use serde_json::{json, Value};

/// `qemu-io` commands on `uri`: whether each succeeded.
fn qemu_io(uri: &str, commands: &[&str]) -> Vec<bool> {
    commands
        .iter()
        .map(|command| {
            let out = Command::new("qemu-io")
                .args(["-f", "raw", "-c", command, uri])
                .output()
                .expect("qemu-io");
            let stdout = String::from_utf8_lossy(&out.stdout);
            out.status.success() && !stdout.contains("failed") && !stdout.contains("Pattern")
        })
        .collect()
}

async fn story(program: Command) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("dir");
    let image = dir.path().join("z.qcow2");
    let raw = dir.path().join("z.raw");
    common::create_qcow2(image.to_str().unwrap(), "16M");
    common::sparse_file(&raw, 16 << 20);
    let mut daemon = TestDaemon::spawn(program, dir, |dir| {
        vec![
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
        ]
    });
    let mut qmp = daemon.connect().await;
    let mut seen = Vec::new();
    for (name, file) in [
        ("bad", json!({"driver": "file", "filename": raw})),
        (
            "z",
            json!({"driver": "qcow2", "file": {"driver": "file", "filename": image}}),
        ),
    ] {
        let add = json!({"driver": "compress", "node-name": name, "file": file});
        seen.push(reply(&mut qmp, "blockdev-add", add).await);
    }
    seen.push(
        reply(
            &mut qmp,
            "block-export-add",
            json!({"type": "nbd", "id": "e", "node-name": "z", "writable": true}),
        )
        .await,
    );
    let uri = format!("nbd+unix:///z?socket={}", daemon.path("nbd.sock").display());
    seen.push(json!(qemu_io(
        &uri,
        &[
            "write -P 0x61 0 64k",
            "write -P 0x62 1M 4k",
            "read -P 0x61 0 64k",
            "read -P 0x62 1M 4k",
            "read -P 0 1052672 61440",
            "write -P 0x63 0 64k",
        ],
    )));
    seen.push(reply(&mut qmp, "quit", json!({})).await);
    drop(qmp);
    daemon.wait_exit();
    let image = image.to_str().unwrap();
    let map: Value = serde_json::from_str(&tool("qemu-img", &["map", "--output=json", image]))
        .expect("map JSON");
    seen.push(map);
    seen.push(json!(tool("qemu-img", &["check", image])));
    seen
}

#[tokio::test]
async fn the_compress_filter_writes_as_qsds_does() {
    let theirs = story(Command::new("qemu-storage-daemon")).await;
    let ours = story(common::storaged()).await;
    for (step, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(ours, theirs, "step {step}: ours, then QSD's");
    }
    // The writes went compressed, and rewriting one failed.
    assert!(ours[5].to_string().contains("\"compressed\":true"));
    assert_eq!(ours[3], json!([true, true, true, true, true, false]));
}

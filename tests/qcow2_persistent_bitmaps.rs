//! Persistent dirty bitmaps in qcow2 images, against QSD's: the same
//! image goes through the same lives of a daemon — bitmaps added, writes
//! over NBD, a clean `quit`, a `SIGKILL` with the image open, a read-only
//! open — and after each, what the daemon showed (`dirty-bitmaps`, each
//! bitmap's SHA-256, the replies to commands that must be refused) and
//! what the image holds (`qemu-img info`'s bitmaps with their `in-use`
//! and `auto` flags, `qemu-img check`) must be the same for both.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ok, reply, tool, TestDaemon};
use serde_json::{json, Value};

/// One thing done during a life of the daemon.
enum Step {
    /// A command whose reply (or error) is kept.
    Qmp(&'static str, Value),
    /// `qemu-io` commands through the NBD export.
    Write(&'static [&'static str]),
    /// The node's bitmaps and their hashes, kept.
    Look,
}

/// How a life ends.
enum End {
    Quit,
    Kill,
}

struct Life {
    read_only: bool,
    steps: Vec<Step>,
    end: End,
}

fn lives() -> Vec<Life> {
    use Step::*;
    vec![
        Life {
            read_only: false,
            steps: vec![
                Qmp(
                    "block-dirty-bitmap-add",
                    json!({"node": "disk", "name": "b0", "persistent": true}),
                ),
                Qmp(
                    "block-dirty-bitmap-add",
                    json!({"node": "disk", "name": "b1", "persistent": true,
                           "disabled": true, "granularity": 4096}),
                ),
                Qmp(
                    "block-dirty-bitmap-add",
                    json!({"node": "disk", "name": "fine", "persistent": true,
                           "granularity": 512}),
                ),
                Qmp(
                    "block-dirty-bitmap-add",
                    json!({"node": "disk", "name": "gone", "persistent": false}),
                ),
                Qmp(
                    "block-dirty-bitmap-add",
                    json!({"node": "disk", "name": "x", "persistent": true,
                           "granularity": 2147483648u64}),
                ),
                Write(&[
                    "write -P 1 1M 64k",
                    "write -P 2 10M 4k",
                    "write -P 3 63M 1M",
                ]),
                Look,
            ],
            end: End::Quit,
        },
        Life {
            read_only: false,
            steps: vec![
                Look,
                Write(&["write -P 4 20M 100k"]),
                Qmp(
                    "block-dirty-bitmap-remove",
                    json!({"node": "disk", "name": "b1"}),
                ),
                Qmp(
                    "block-dirty-bitmap-disable",
                    json!({"node": "disk", "name": "fine"}),
                ),
                Look,
            ],
            end: End::Quit,
        },
        Life {
            read_only: false,
            steps: vec![Look, Write(&["write -P 5 30M 64k"])],
            end: End::Kill,
        },
        Life {
            read_only: false,
            steps: vec![
                Look,
                Qmp(
                    "block-dirty-bitmap-clear",
                    json!({"node": "disk", "name": "b0"}),
                ),
                Qmp(
                    "block-dirty-bitmap-enable",
                    json!({"node": "disk", "name": "b0"}),
                ),
                Qmp(
                    "block-dirty-bitmap-remove",
                    json!({"node": "disk", "name": "b0"}),
                ),
                Qmp(
                    "block-dirty-bitmap-add",
                    json!({"node": "disk", "name": "b2", "persistent": true}),
                ),
                Write(&["write -P 6 40M 64k"]),
                Look,
            ],
            end: End::Quit,
        },
        Life {
            read_only: true,
            steps: vec![
                Look,
                Qmp(
                    "block-dirty-bitmap-clear",
                    json!({"node": "disk", "name": "b2"}),
                ),
                Qmp(
                    "block-dirty-bitmap-remove",
                    json!({"node": "disk", "name": "b2"}),
                ),
            ],
            end: End::Quit,
        },
    ]
}

/// The node's `dirty-bitmaps`, each with its hash.
async fn look(qmp: &mut qmp::client::Client) -> Value {
    let nodes = ok(qmp, "query-named-block-nodes", json!({"flat": true})).await;
    let disk = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "disk")
        .unwrap()
        .clone();
    let mut bitmaps = Vec::new();
    for bitmap in disk["dirty-bitmaps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = bitmap["name"].as_str().unwrap().to_owned();
        let hash = reply(
            qmp,
            "x-debug-block-dirty-bitmap-sha256",
            json!({"node": "disk", "name": name}),
        )
        .await;
        bitmaps.push(json!({"bitmap": bitmap, "sha256": hash}));
    }
    json!({
        "dirty-bitmaps": bitmaps,
        "stored": disk["image"]["format-specific"]["data"]["bitmaps"],
    })
}

/// What the image holds between lives.
fn image_state(image: &Path) -> Value {
    let info = tool(
        "qemu-img",
        &["info", "--output=json", image.to_str().unwrap()],
    );
    let info: Value = serde_json::from_str(&info).unwrap();
    let check = Command::new("qemu-img")
        .args(["check", image.to_str().unwrap()])
        .output()
        .unwrap();
    json!({
        "bitmaps": info["format-specific"]["data"]["bitmaps"],
        "check": check.status.code(),
        "leaks or errors": String::from_utf8_lossy(&check.stdout)
            .lines()
            .filter(|line| line.contains("leak") || line.contains("ERROR"))
            .count(),
    })
}

/// Everything seen over the lives of `program` on one image.
async fn story(program: fn() -> Command) -> Vec<Value> {
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("disk.qcow2");
    common::create_qcow2(image.to_str().unwrap(), "64M");
    let mut seen = Vec::new();
    for (number, life) in lives().into_iter().enumerate() {
        let image_arg = image.display().to_string();
        let mut daemon = TestDaemon::spawn(program(), tempfile::tempdir().unwrap(), |dir| {
            vec![
                "--blockdev".into(),
                format!(
                    "qcow2,node-name=disk,read-only={},file.driver=file,file.filename={image_arg}",
                    if life.read_only { "on" } else { "off" }
                ),
                "--nbd-server".into(),
                format!(
                    "addr.type=unix,addr.path={}",
                    dir.join("nbd.sock").display()
                ),
                "--export".into(),
                format!(
                    "nbd,id=e0,node-name=disk,name=disk,writable={}",
                    if life.read_only { "off" } else { "on" }
                ),
            ]
        });
        let mut qmp = daemon.connect().await;
        let uri = format!(
            "nbd+unix:///disk?socket={}",
            daemon.path("nbd.sock").display()
        );
        for step in &life.steps {
            match step {
                Step::Qmp(command, arguments) => {
                    let answer = reply(&mut qmp, command, arguments.clone()).await;
                    seen.push(json!({"life": number, command.to_string(): answer}));
                }
                Step::Write(commands) => {
                    let mut args = vec!["-f", "raw"];
                    for command in *commands {
                        args.extend(["-c", command]);
                    }
                    args.push(&uri);
                    tool("qemu-io", &args);
                }
                Step::Look => seen.push(json!({"life": number, "look": look(&mut qmp).await})),
            }
        }
        match life.end {
            End::Quit => {
                ok(&mut qmp, "quit", json!({})).await;
            }
            End::Kill => daemon.signal(libc::SIGKILL),
        }
        daemon.wait_exit();
        seen.push(json!({"life": number, "image": image_state(&image)}));
    }
    seen
}

#[tokio::test]
async fn bitmaps_live_in_the_image_as_qsds_do() {
    let theirs = story(|| Command::new("qemu-storage-daemon")).await;
    let ours = story(common::storaged).await;
    for (theirs, ours) in theirs.iter().zip(&ours) {
        assert_eq!(ours, theirs, "ours, then QSD's");
    }
    assert_eq!(ours.len(), theirs.len());
    // The story is about something: after the first quit the image holds
    // the four persistent bitmaps; the second life read b0 back with its
    // bits; after the kill b0 is inconsistent.
    let names = |state: &Value| -> Vec<String> {
        state["image"]["bitmaps"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|b| b["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let first_image = ours.iter().find(|s| s["image"].is_object()).unwrap();
    let mut stored = names(first_image);
    stored.sort();
    assert_eq!(stored, ["b0", "b1", "fine", "x"]);
    let second_look = ours
        .iter()
        .find(|s| s["life"] == 1 && s["look"].is_object())
        .unwrap();
    let b0 = second_look["look"]["dirty-bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bitmap"]["name"] == "b0")
        .unwrap();
    // 64 KiB granules: one at 1M, one at 10M, sixteen at 63M.
    assert_eq!(b0["bitmap"]["count"], 18 * 65536);
    let after_kill = ours
        .iter()
        .find(|s| s["life"] == 3 && s["look"].is_object())
        .unwrap();
    assert!(after_kill.to_string().contains("\"inconsistent\":true"));
}

//! The same QMP sessions (tests/compat/*_session.txt) are sent to
//! qemu-storage-daemon and to storaged, both started with the same options
//! and the same images; the replies must be equal once the version numbers
//! (QSD 10.0.x vs "10.0.2" and "storaged X.Y.Z") are blanked: greeting
//! shape, error classes and messages, `query-named-block-nodes` members
//! for file, raw, null-co, blkdebug, throttle, copy-on-read and
//! preallocate nodes, the block graph, throttle groups through
//! `object-add`/`object-del` and the QOM commands.

mod common;

use std::process::Command;

use common::{sparse_file, storaged, TestDaemon};
use serde_json::{json, Value};

const SESSION: &str = include_str!("compat/qmp_session.txt");
const BLKDEBUG_SESSION: &str = include_str!("compat/blkdebug_session.txt");
const THROTTLE_SESSION: &str = include_str!("compat/throttle_session.txt");
const FILTERS_SESSION: &str = include_str!("compat/filters_session.txt");

/// The rules files `blkdebug_session.txt` opens: one QEMU accepts, one
/// whose second group it refuses (the file is checked before the child).
const BLKDEBUG_RULES: [(&str, &str); 2] = [
    (
        "blkdebug.conf",
        "# fail the first read\n[inject-error \"r1\"]\nevent = \"read_aio\"\nerrno = \"28\"\nonce = \"on\"\n\n[set-state]\nevent = \"write_aio\"\nstate = \"1\"\nnew_state = \"2\"\n",
    ),
    (
        "blkdebug-bad.conf",
        "[inject-error]\nevent = \"read_aio\"\n[set-state]\nevent = \"none\"\nnew-state = \"2\"\n",
    ),
];

/// The id of requests whose replies carry version numbers.
const VERSION_ID: &str = "version";

/// The messages of `session`, with `@DIR@` replaced.
fn session_lines(session: &str, dir: &str) -> Vec<String> {
    session
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.replace("@DIR@", dir))
        .collect()
}

/// The options both daemons get (besides their monitor and pid file).
fn options(dir: &std::path::Path) -> Vec<String> {
    vec![
        "--blockdev".into(),
        format!(
            "file,node-name=f0,filename={}",
            dir.join("disk.img").display()
        ),
        "--blockdev".into(),
        "raw,node-name=r0,file=f0".into(),
        "--blockdev".into(),
        "null-co,node-name=n0,size=1048576".into(),
    ]
}

/// Blanks what must differ: the version in the greeting and in replies to
/// `query-version` with [`VERSION_ID`]; and sorts `qom-list` replies by
/// name (QEMU lists properties in its hash tables' order).
fn normalize(mut message: Value) -> Value {
    if let Some(Value::Array(list)) = message.get_mut("return") {
        let is_property_list = list
            .iter()
            .all(|entry| entry.get("name").is_some() && entry.get("type").is_some());
        if is_property_list {
            list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        }
    }
    if let Some(version) = message.pointer_mut("/QMP/version") {
        *version = blank_version(version);
    }
    if message["id"] == VERSION_ID {
        if let Some(version) = message.get_mut("return") {
            *version = blank_version(version);
        }
    }
    message
}

/// Keeps the shape of a `VersionInfo`, not its values.
fn blank_version(version: &Value) -> Value {
    assert!(version["qemu"]["major"].is_i64(), "{version}");
    assert!(version["qemu"]["minor"].is_i64(), "{version}");
    assert!(version["qemu"]["micro"].is_i64(), "{version}");
    assert!(version["package"].is_string(), "{version}");
    json!({"qemu": {"major": "N", "minor": "N", "micro": "N"}, "package": "P"})
}

/// The qcow2 images of the filters session, 4 MiB each: the backing
/// chain `base.qcow2` <- `mid.qcow2` <- `top.qcow2`, and `solo.qcow2`.
fn qcow2_images(dir: &std::path::Path) {
    let mut backing: Option<&str> = None;
    for name in ["base.qcow2", "mid.qcow2", "top.qcow2"] {
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if let Some(backing) = backing {
            args.extend(["-b", backing, "-F", "qcow2"]);
        }
        let path = dir.join(name);
        args.extend([path.to_str().expect("UTF-8 path"), "4M"]);
        let status = Command::new("qemu-img")
            .args(&args)
            .status()
            .expect("qemu-img");
        assert!(status.success(), "qemu-img {args:?}");
        backing = Some(name);
    }
    let solo = dir.join("solo.qcow2");
    let solo = solo.to_str().expect("UTF-8 path");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", solo, "4M"])
        .status()
        .expect("qemu-img");
    assert!(status.success(), "qemu-img create {solo}");
}

/// Runs `session` (named `name`) against `program`; returns the greeting
/// and one reply per message.
async fn transcript(program: Command, name: &str, session: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    // The same path for both daemons, so file names in replies agree; one
    // per session, which run at once.
    let image_dir =
        std::env::temp_dir().join(format!("storaged-compat-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&image_dir).expect("image dir");
    sparse_file(&image_dir.join("disk.img"), 4 << 20);
    sparse_file(&image_dir.join("other.img"), 1 << 20);
    for (name, rules) in BLKDEBUG_RULES {
        std::fs::write(image_dir.join(name), rules).expect("rules file");
    }
    qcow2_images(&image_dir);
    let daemon = TestDaemon::spawn(program, dir, |_| options(&image_dir));
    let mut client = daemon.connect_raw().await;
    let mut replies = vec![normalize(client.greeting().clone())];
    for line in session_lines(session, &image_dir.display().to_string()) {
        client
            .send_raw(format!("{line}\n").as_bytes())
            .await
            .expect("send");
        let reply = client.receive().await.unwrap_or_else(|error| {
            panic!("no reply to {line}: {error}; stderr: {}", daemon.stderr())
        });
        replies.push(normalize(reply));
    }
    drop(daemon);
    std::fs::remove_dir_all(&image_dir).expect("remove image dir");
    replies
}

/// Runs `session` (named `name`) against both daemons and compares the
/// replies.
async fn compare(name: &str, session: &str) {
    let qsd = transcript(Command::new("qemu-storage-daemon"), name, session).await;
    let ours = transcript(storaged(), name, session).await;
    let dir = std::env::temp_dir().display().to_string();
    let requests: Vec<String> = std::iter::once("(greeting)".to_owned())
        .chain(session_lines(session, &dir))
        .collect();
    assert_eq!(qsd.len(), ours.len());
    let mut differences = Vec::new();
    for ((request, theirs), mine) in requests.iter().zip(&qsd).zip(&ours) {
        if theirs != mine {
            differences.push(format!(
                "request: {request}\n  qemu-storage-daemon: {theirs}\n  storaged:            {mine}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} replies differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[tokio::test]
async fn storaged_answers_the_session_as_qemu_storage_daemon() {
    compare("qmp", SESSION).await;
}

#[tokio::test]
async fn storaged_answers_the_blkdebug_session_as_qemu_storage_daemon() {
    compare("blkdebug", BLKDEBUG_SESSION).await;
}

#[tokio::test]
async fn storaged_answers_the_throttle_session_as_qemu_storage_daemon() {
    compare("throttle", THROTTLE_SESSION).await;
}

#[tokio::test]
async fn storaged_answers_the_filters_session_as_qemu_storage_daemon() {
    compare("filters", FILTERS_SESSION).await;
}

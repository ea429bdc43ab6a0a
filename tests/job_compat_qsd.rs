//! The block jobs' replies and events against qemu-storage-daemon's: the
//! same scenario (mirror to ready, pause to standby, complete; a stream
//! finalized by hand; commits of a lower layer and of the active one; a
//! backup; a cancel before ready; verbs refused in the wrong state; a
//! target whose write fails, with `on-target-error` `stop` and `report`; a
//! mirror that replaces the node below a throttle filter) runs
//! against QSD 10 and storaged on the same images. Every reply must be
//! equal, and for each job the whole sequence of its events
//! (`JOB_STATUS_CHANGE` statuses, `BLOCK_JOB_*` with their data) must be
//! equal; only timestamps, `busy` (a sampling of the job's coroutine),
//! and the progress a cancel or an error happens to interrupt are blanked.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{tool, TestDaemon};
use qmp::client::Client;
use serde_json::{json, Value};

enum Step {
    /// Run a command (`@DIR@` in its arguments: the daemon's directory),
    /// keep its reply.
    Run(&'static str, Value),
    /// Wait until job `.0` announced `.1` (an event name or a status).
    Wait(&'static str, &'static str),
}

use Step::{Run, Wait};

fn scenario() -> Vec<Step> {
    vec![
        // A mirror, to ready; paused there (standby), resumed, completed.
        Run(
            "blockdev-mirror",
            json!({"job-id": "m", "device": "src", "target": "dst", "sync": "full", "auto-dismiss": false}),
        ),
        Wait("m", "BLOCK_JOB_READY"),
        Run("query-block-jobs", json!({})),
        Run("job-finalize", json!({"id": "m"})),
        Run("job-pause", json!({"id": "m"})),
        Wait("m", "standby"),
        Run("job-pause", json!({"id": "m"})),
        Run("job-complete", json!({"id": "m"})),
        Run("job-resume", json!({"id": "m"})),
        Wait("m", "ready"),
        Run("block-job-complete", json!({"device": "m"})),
        Wait("m", "concluded"),
        Run("query-jobs", json!({})),
        Run("job-dismiss", json!({"id": "m"})),
        Run("job-dismiss", json!({"id": "m"})),
        // A stream finalized by hand.
        Run(
            "block-stream",
            json!({"job-id": "s", "device": "top", "base-node": "base", "auto-finalize": false}),
        ),
        Wait("s", "BLOCK_JOB_PENDING"),
        Run("query-jobs", json!({})),
        Run("job-finalize", json!({"id": "s"})),
        Wait("s", "null"),
        // A commit of a lower layer, then of the active one.
        Run(
            "block-commit",
            json!({"job-id": "c", "device": "top2", "top-node": "mid2", "base-node": "base2"}),
        ),
        Wait("c", "null"),
        Run("block-commit", json!({"job-id": "a", "device": "top2"})),
        Wait("a", "BLOCK_JOB_READY"),
        Run("job-complete", json!({"id": "a"})),
        Wait("a", "null"),
        // A full backup.
        Run(
            "blockdev-backup",
            json!({"job-id": "b", "device": "src", "target": "bak", "sync": "full"}),
        ),
        Wait("b", "null"),
        // Cancelled before it is ready: a forced cancel.
        Run(
            "blockdev-mirror",
            json!({"job-id": "x", "device": "src", "target": "dst", "sync": "full", "speed": 1}),
        ),
        Run("block-job-set-speed", json!({"device": "x", "speed": -1})),
        Run("block-job-cancel", json!({"device": "x"})),
        Wait("x", "null"),
        Run("block-job-cancel", json!({"device": "x"})),
        Run("query-block-jobs", json!({})),
        // A write to the target fails once: `stop` pauses the job until
        // it is resumed, then it goes on; `report` fails the job.
        Run(
            "blockdev-mirror",
            json!({"job-id": "e1", "device": "src", "target": "faulty", "sync": "full", "on-target-error": "stop"}),
        ),
        Wait("e1", "BLOCK_JOB_ERROR"),
        Wait("e1", "paused"),
        Run("query-block-jobs", json!({})),
        Run("job-resume", json!({"id": "e1"})),
        Wait("e1", "BLOCK_JOB_READY"),
        Run("job-cancel", json!({"id": "e1"})),
        Wait("e1", "null"),
        Run(
            "blockdev-mirror",
            json!({"job-id": "e2", "device": "src", "target": "faulty2", "sync": "full"}),
        ),
        Wait("e2", "null"),
        // `replaces`: the node below a throttle filter, refused for a
        // node the source does not show through filters only.
        Run(
            "blockdev-mirror",
            json!({"job-id": "r", "device": "thr", "target": "dst2", "sync": "full", "replaces": "src"}),
        ),
        Run(
            "drive-mirror",
            json!({"job-id": "r", "device": "thr", "target": "@DIR@/new.qcow2", "sync": "full", "replaces": "lo"}),
        ),
        Run(
            "drive-mirror",
            json!({"job-id": "r", "device": "thr", "target": "@DIR@/new.qcow2", "sync": "full",
                   "node-name": "dst2", "mode": "existing"}),
        ),
        Run(
            "drive-mirror",
            json!({"job-id": "r", "device": "thr", "target": "@DIR@/new.qcow2", "sync": "full",
                   "node-name": "new", "replaces": "lo", "mode": "existing"}),
        ),
        Wait("r", "BLOCK_JOB_READY"),
        Run("job-complete", json!({"id": "r"})),
        Wait("r", "null"),
        // The throttle node reads from the target now: the node it
        // replaced is free.
        Run("blockdev-del", json!({"node-name": "lo"})),
        Run("blockdev-del", json!({"node-name": "new"})),
        Run("blockdev-del", json!({"node-name": "thr"})),
        Run("blockdev-del", json!({"node-name": "new"})),
    ]
}

/// Images both daemons open: src (data) and dst, bak of the same size;
/// base <- mid <- top and base2 <- mid2 <- top2.
fn make_images(dir: &Path) {
    let p = |name: &str| dir.join(name).display().to_string();
    for image in [
        "src", "dst", "bak", "base", "base2", "faulty", "faulty2", "lo", "dst2", "new",
    ] {
        common::create_qcow2(&p(&format!("{image}.qcow2")), "32M");
    }
    for (image, backing) in [
        ("mid", "base"),
        ("top", "mid"),
        ("mid2", "base2"),
        ("top2", "mid2"),
    ] {
        let backing = p(&format!("{backing}.qcow2"));
        tool(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &backing,
                "-F",
                "qcow2",
                &p(&format!("{image}.qcow2")),
            ],
        );
    }
    for (image, command) in [
        ("src", "write -P 1 0 4M"),
        ("lo", "write -P 8 0 4M"),
        ("base", "write -P 2 0 4M"),
        ("mid", "write -P 3 4M 4M"),
        ("top", "write -P 4 8M 1M"),
        ("base2", "write -P 5 0 4M"),
        ("mid2", "write -P 6 4M 4M"),
        ("top2", "write -P 7 8M 1M"),
    ] {
        tool("qemu-io", &["-c", command, &p(&format!("{image}.qcow2"))]);
    }
}

fn options(dir: &Path) -> Vec<String> {
    let node = |name: &str, extra: &str| {
        vec![
            "--blockdev".to_owned(),
            format!(
                "qcow2,node-name={name}{extra},file.driver=file,file.filename={}",
                dir.join(format!("{name}.qcow2")).display()
            ),
        ]
    };
    [
        node("src", ""),
        node("dst", ""),
        node("bak", ""),
        node("base", ""),
        node("mid", ",backing=base"),
        node("top", ",backing=mid"),
        node("base2", ""),
        node("mid2", ",backing=base2"),
        node("top2", ",backing=mid2"),
        faulty(dir, "faulty"),
        faulty(dir, "faulty2"),
        node("lo", ""),
        node("dst2", ""),
        vec![
            "--object".to_owned(),
            "throttle-group,id=tg".to_owned(),
            "--blockdev".to_owned(),
            "throttle,node-name=thr,throttle-group=tg,file=lo".to_owned(),
        ],
    ]
    .concat()
}

/// A qcow2 node whose file fails the first data write with EIO
/// (`blkdebug`).
fn faulty(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--blockdev".to_owned(),
        format!(
            "qcow2,node-name={name},file.driver=blkdebug,file.image.driver=file,\
             file.image.filename={},file.inject-error.0.event=write_aio,\
             file.inject-error.0.errno=5,file.inject-error.0.once=on",
            dir.join(format!("{name}.qcow2")).display()
        ),
    ]
}

/// What a daemon said: the replies in order, and each job's events.
struct Transcript {
    replies: Vec<Value>,
    events: BTreeMap<String, Vec<Value>>,
}

impl Transcript {
    /// Files an event under its job; returns (job, what it announced).
    fn file(&mut self, event: Value) -> Option<(String, String)> {
        let name = event["event"].as_str()?.to_owned();
        let data = &event["data"];
        let job = data["id"].as_str().or(data["device"].as_str())?.to_owned();
        let (what, kept) = if name == "JOB_STATUS_CHANGE" {
            let status = data["status"].as_str()?.to_owned();
            (status.clone(), json!(status))
        } else {
            let mut data = data.clone();
            let interrupted = name == "BLOCK_JOB_CANCELLED"
                || (name == "BLOCK_JOB_COMPLETED" && data.get("error").is_some());
            if interrupted {
                data["offset"] = json!("(blanked)");
            }
            (name.clone(), json!({"event": name, "data": data}))
        };
        self.events.entry(job.clone()).or_default().push(kept);
        Some((job, what))
    }
}

fn normalize_reply(mut reply: Value) -> Value {
    if let Some(Value::Array(jobs)) = reply.get_mut("return") {
        for job in jobs {
            if let Some(busy) = job.get_mut("busy") {
                *busy = json!("(blanked)");
            }
            // How far a job paused by an error got depends on timing.
            if job["status"] == "paused" {
                job["offset"] = json!("(blanked)");
            }
        }
    }
    reply
}

async fn run(program: Command) -> Transcript {
    let dir = tempfile::tempdir().unwrap();
    make_images(dir.path());
    let daemon = TestDaemon::spawn(program, dir, options);
    let mut qmp: Client = daemon.connect().await;
    let mut transcript = Transcript {
        replies: Vec::new(),
        events: BTreeMap::new(),
    };
    let mut seen: Vec<(String, String)> = Vec::new();
    for step in scenario() {
        match step {
            Run(command, arguments) => {
                let dir = daemon.dir.path().display().to_string();
                let arguments = serde_json::from_str(&arguments.to_string().replace("@DIR@", &dir))
                    .expect("JSON");
                let reply = match qmp.execute(command, arguments).await.unwrap() {
                    Ok(value) => json!({"return": value}),
                    Err(error) => json!({"error": {"class": error.class, "desc": error.desc}}),
                };
                transcript.replies.push(normalize_reply(reply));
            }
            Wait(job, what) => {
                let wanted = (job.to_owned(), what.to_owned());
                let mut waited = 0;
                while !seen.contains(&wanted) {
                    match qmp.next_event(Duration::from_millis(200)).await.unwrap() {
                        Some(event) => seen.extend(transcript.file(event)),
                        None => {
                            waited += 1;
                            assert!(waited < 300, "no {what} from job {job}");
                        }
                    }
                }
            }
        }
        // Events that came with a reply.
        while let Some(event) = qmp.next_event(Duration::from_millis(20)).await.unwrap() {
            seen.extend(transcript.file(event));
        }
    }
    transcript
}

#[tokio::test]
async fn jobs_answer_and_announce_as_qsd_does() {
    let theirs = run(Command::new("qemu-storage-daemon")).await;
    let ours = run(common::storaged()).await;
    for (index, (theirs, ours)) in theirs.replies.iter().zip(&ours.replies).enumerate() {
        assert_eq!(theirs, ours, "reply {index}");
    }
    assert_eq!(theirs.replies.len(), ours.replies.len());
    for (job, events) in &theirs.events {
        assert_eq!(Some(events), ours.events.get(job), "events of job {job}");
    }
    assert_eq!(
        theirs.events.keys().collect::<Vec<_>>(),
        ours.events.keys().collect::<Vec<_>>()
    );
}

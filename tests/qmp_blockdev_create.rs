//! `blockdev-create` and the job commands over QMP, on the real binary:
//! the `JOB_STATUS_CHANGE` sequence of a job that succeeds, fails or is
//! cancelled, `query-jobs`, `job-dismiss`, `job-cancel`; `file` and
//! `qcow2` images with many options, each checked afterwards by
//! `qemu-img check` (clean) and `qemu-img info` / `map` (the options took
//! effect); and the errors of a whole session compared with those of
//! qemu-storage-daemon.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{error, ok, sparse_file, storaged, TestDaemon, PATIENCE};
use qmp::client::{Client, ErrorReply};
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

/// What a job that ran to its end says, in order.
const SUCCESS: [&str; 5] = ["created", "running", "waiting", "pending", "concluded"];
/// What a job that failed says, in order.
const FAILURE: [&str; 4] = ["created", "running", "aborting", "concluded"];

fn generic(desc: &str) -> (String, String) {
    ("GenericError".to_owned(), desc.to_owned())
}

fn qsd() -> Command {
    Command::new("qemu-storage-daemon")
}

/// The statuses job `id` announces until it concludes; other events are
/// dropped.
async fn statuses_until_concluded(client: &mut Client, id: &str) -> Vec<String> {
    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some("concluded") {
        let event = client
            .next_event(PATIENCE)
            .await
            .expect("monitor alive")
            .unwrap_or_else(|| panic!("job {id} did not conclude; saw {statuses:?}"));
        if event["event"] == "JOB_STATUS_CHANGE" && event["data"]["id"] == id {
            statuses.push(event["data"]["status"].as_str().expect("status").to_owned());
        }
    }
    statuses
}

/// The `query-jobs` entry of job `id`.
async fn job_info(client: &mut Client, id: &str) -> Value {
    let jobs = ok(client, "query-jobs", json!({})).await;
    jobs.as_array()
        .expect("a list")
        .iter()
        .find(|job| job["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no job {id} in {jobs}"))
}

/// Dismisses job `id` and checks its last event, `null`.
async fn dismiss(client: &mut Client, id: &str) {
    ok(client, "job-dismiss", json!({"id": id})).await;
    let event = client
        .next_event(PATIENCE)
        .await
        .expect("monitor alive")
        .expect("an event");
    assert_eq!(event["event"], "JOB_STATUS_CHANGE");
    assert_eq!(event["data"], json!({"id": id, "status": "null"}));
}

/// Runs `blockdev-create` as job `id` to its end; expects it to succeed
/// and dismisses it.
async fn create(client: &mut Client, id: &str, options: Value) {
    ok(
        client,
        "blockdev-create",
        json!({"job-id": id, "options": options}),
    )
    .await;
    assert_eq!(statuses_until_concluded(client, id).await, SUCCESS);
    let info = job_info(client, id).await;
    assert_eq!(info.get("error"), None, "{options}: {info}");
    dismiss(client, id).await;
}

/// Runs a `qemu-img` subcommand with JSON output and returns it parsed;
/// the command must succeed.
fn qemu_img_json(args: &[&str], image: &Path) -> Value {
    let output = Command::new("qemu-img")
        .args(args)
        .arg("--output=json")
        .arg(image)
        .output()
        .expect("run qemu-img");
    assert!(
        output.status.success(),
        "qemu-img {args:?} {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("qemu-img JSON")
}

/// `qemu-img check` finds nothing wrong; returns its report.
fn check_clean(image: &Path) -> Value {
    let report = qemu_img_json(&["check"], image);
    assert_eq!(report["check-errors"], 0, "{report}");
    for problem in ["corruptions", "leaks", "corruptions-fixed", "leaks-fixed"] {
        assert_eq!(report.get(problem), None, "{problem}: {report}");
    }
    report
}

fn info(image: &Path) -> Value {
    qemu_img_json(&["info"], image)
}

/// Adds a `file` node named `node` for `image` (created empty).
async fn add_file_node(client: &mut Client, node: &str, image: &Path) {
    sparse_file(image, 0);
    ok(
        client,
        "blockdev-add",
        json!({"driver": "file", "node-name": node, "filename": image}),
    )
    .await;
}

#[tokio::test]
async fn a_qcow2_job_goes_through_qemus_states_and_waits_for_dismiss() {
    let daemon = TestDaemon::start(&[]);
    let image = daemon.path("disk.qcow2");
    let mut client = daemon.connect().await;
    add_file_node(&mut client, "f", &image).await;
    ok(
        &mut client,
        "blockdev-create",
        json!({"job-id": "j0", "options": {"driver": "qcow2", "file": "f", "size": 64 * MIB}}),
    )
    .await;
    assert_eq!(statuses_until_concluded(&mut client, "j0").await, SUCCESS);
    let jobs = ok(&mut client, "query-jobs", json!({})).await;
    assert_eq!(
        jobs,
        json!([{"id": "j0", "type": "create", "status": "concluded",
                "current-progress": 1, "total-progress": 1}])
    );
    // Concluded jobs stay (the id stays taken) until dismissed.
    assert_eq!(
        error(
            &mut client,
            "blockdev-create",
            json!({"job-id": "j0", "options": {"driver": "qcow2", "file": "f", "size": MIB}}),
        )
        .await,
        generic("Job ID 'j0' already in use")
    );
    dismiss(&mut client, "j0").await;
    assert_eq!(ok(&mut client, "query-jobs", json!({})).await, json!([]));
    assert_eq!(
        error(&mut client, "job-dismiss", json!({"id": "j0"})).await,
        generic("Job not found")
    );
    // The job gave its permissions back: the node can go.
    ok(&mut client, "blockdev-del", json!({"node-name": "f"})).await;

    check_clean(&image);
    let info = info(&image);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 64 * MIB);
    assert_eq!(info["cluster-size"], 65536);
    let specific = &info["format-specific"]["data"];
    assert_eq!(specific["compat"], "1.1");
    assert_eq!(specific["lazy-refcounts"], false);
    assert_eq!(specific["refcount-bits"], 16);
    assert_eq!(specific["compression-type"], "zlib");

    // The new image opens as a qcow2 node.
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "q",
               "file": {"driver": "file", "filename": image}}),
    )
    .await;
    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    let node = nodes
        .as_array()
        .expect("a list")
        .iter()
        .find(|node| node["node-name"] == "q")
        .expect("node q");
    assert_eq!(node["image"]["virtual-size"], 64 * MIB);
}

#[tokio::test]
async fn qcow2_creation_options_take_effect() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let base = daemon.path("base.raw");
    let pattern: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    std::fs::write(&base, &pattern).expect("write base");

    // (name, options besides driver and file, what qemu-img info shows)
    let cases = [
        (
            "small-clusters",
            json!({"size": 16 * MIB, "cluster-size": 4096, "lazy-refcounts": true,
                   "refcount-bits": 64}),
            json!({"cluster-size": 4096, "compat": "1.1", "lazy-refcounts": true,
                   "refcount-bits": 64}),
        ),
        (
            "v2-big-clusters",
            json!({"size": 1024 * MIB, "version": "v2", "cluster-size": 2 * MIB}),
            json!({"cluster-size": 2 * MIB, "compat": "0.10", "refcount-bits": 16}),
        ),
        (
            "v3-512",
            json!({"size": 3 * MIB, "version": "v3", "cluster-size": 512,
                   "refcount-bits": 16}),
            json!({"cluster-size": 512, "compat": "1.1", "lazy-refcounts": false}),
        ),
        (
            "zstd",
            json!({"size": 8 * MIB, "compression-type": "zstd"}),
            json!({"compression-type": "zstd"}),
        ),
        (
            "metadata",
            json!({"size": 4 * MIB, "preallocation": "metadata"}),
            json!({"cluster-size": 65536}),
        ),
        (
            "backed",
            json!({"size": 4 * MIB, "backing-file": base, "backing-fmt": "raw"}),
            json!({"backing-filename": base, "backing-filename-format": "raw"}),
        ),
    ];
    for (n, (name, options, _)) in cases.iter().enumerate() {
        let node = format!("n{n}");
        add_file_node(&mut client, &node, &daemon.path(&format!("{name}.qcow2"))).await;
        let mut options = options.clone();
        options["driver"] = json!("qcow2");
        options["file"] = json!(node);
        create(&mut client, &format!("job-{name}"), options).await;
        ok(&mut client, "blockdev-del", json!({"node-name": node})).await;
    }

    for (name, options, expected) in &cases {
        let image = daemon.path(&format!("{name}.qcow2"));
        let report = check_clean(&image);
        let info = info(&image);
        assert_eq!(info["format"], "qcow2", "{name}");
        assert_eq!(info["virtual-size"], options["size"], "{name}");
        let specific = &info["format-specific"]["data"];
        for (key, value) in expected.as_object().expect("an object") {
            let shown = info.get(key).unwrap_or(&specific[key]);
            assert_eq!(shown, value, "{name}: {key} in {info}");
        }
        if *name == "metadata" {
            // Every cluster has its own host cluster and reads as zeroes.
            assert_eq!(report["allocated-clusters"], 64, "{report}");
            let map = qemu_img_json(&["map"], &image);
            assert_eq!(
                map.as_array().map(Vec::len),
                Some(1),
                "one extent for the whole image: {map}"
            );
            assert_eq!(map[0]["data"], true, "{map}");
            assert_eq!(map[0]["zero"], true, "{map}");
            assert_eq!(map[0]["length"], 4 * MIB, "{map}");
        }
    }

    // The backing file shows through the new, empty overlay.
    let overlay = daemon.path("backed.qcow2");
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .args([&base, &overlay])
        .output()
        .expect("run qemu-img compare");
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
}

#[tokio::test]
async fn file_images_have_the_size_and_allocation_asked() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let size = 8 * MIB;
    for mode in ["off", "falloc", "full"] {
        let image = daemon.path(&format!("{mode}.raw"));
        // An existing file is replaced.
        std::fs::write(&image, vec![0xee; 4096]).expect("old contents");
        create(
            &mut client,
            &format!("file-{mode}"),
            json!({"driver": "file", "filename": image, "size": size, "preallocation": mode}),
        )
        .await;
        let data = std::fs::read(&image).expect("read image");
        assert_eq!(data.len() as u64, size, "{mode}");
        assert!(data.iter().all(|&b| b == 0), "{mode}: zeroes only");
        let allocated = std::fs::metadata(&image).expect("stat").blocks() * 512;
        assert_eq!(
            allocated >= size,
            mode != "off",
            "{mode}: {allocated} bytes allocated"
        );
        let info = info(&image);
        assert_eq!(info["format"], "raw");
        assert_eq!(info["virtual-size"], size);
    }

    // QSD's usual sequence: create the file, add it, format it, open it.
    let image = daemon.path("new.qcow2");
    create(
        &mut client,
        "make-file",
        json!({"driver": "file", "filename": image, "size": 0}),
    )
    .await;
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "file", "node-name": "nf", "filename": image}),
    )
    .await;
    create(
        &mut client,
        "make-qcow2",
        json!({"driver": "qcow2", "file": "nf", "size": 32 * MIB, "cluster-size": 16384}),
    )
    .await;
    ok(
        &mut client,
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "nq", "file": "nf"}),
    )
    .await;
    ok(&mut client, "blockdev-del", json!({"node-name": "nq"})).await;
    ok(&mut client, "blockdev-del", json!({"node-name": "nf"})).await;
    check_clean(&image);
    let info = info(&image);
    assert_eq!(info["virtual-size"], 32 * MIB);
    assert_eq!(info["cluster-size"], 16384);
}

/// A reply as the monitor sent it (without its id).
fn reply_json(reply: Result<Value, ErrorReply>) -> Value {
    match reply {
        Ok(value) => json!({"return": value}),
        Err(ErrorReply { class, desc }) => json!({"error": {"class": class, "desc": desc}}),
    }
}

/// One daemon's answers to a session of good and bad requests: replies,
/// each job's statuses and `query-jobs`, with the directory blanked.
async fn error_transcript(program: Command) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    let blank = |value: Value| -> Value {
        let text = value
            .to_string()
            .replace(&root.display().to_string(), "@DIR@");
        serde_json::from_str(&text).expect("JSON")
    };
    sparse_file(&root.join("f.img"), 0);
    sparse_file(&root.join("ro.img"), 0);
    let used = root.join("used.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&used)
        .arg("1M")
        .status()
        .expect("qemu-img create");
    assert!(made.success());
    let daemon = TestDaemon::spawn(program, dir, |dir| {
        vec![
            "--blockdev".into(),
            format!("file,node-name=f,filename={}", dir.join("f.img").display()),
            "--blockdev".into(),
            format!(
                "file,node-name=ro,read-only=on,filename={}",
                dir.join("ro.img").display()
            ),
            "--blockdev".into(),
            format!(
                "qcow2,node-name=uq,file.driver=file,file.node-name=uf,file.filename={}",
                dir.join("used.qcow2").display()
            ),
        ]
    });
    let mut client = daemon.connect().await;
    let mut transcript = Vec::new();

    let file = |name: &str| root.join(name).display().to_string();
    // Jobs that start and fail.
    let failing = [
        (
            "nonode",
            json!({"driver": "qcow2", "file": "nope", "size": MIB}),
        ),
        (
            "badcluster",
            json!({"driver": "qcow2", "file": "f", "size": MIB, "cluster-size": 1000}),
        ),
        (
            "badsize",
            json!({"driver": "qcow2", "file": "f", "size": 1000}),
        ),
        (
            "v2lazy",
            json!({"driver": "qcow2", "file": "f", "size": MIB, "version": "v2",
                          "lazy-refcounts": true}),
        ),
        (
            "v2refcount",
            json!({"driver": "qcow2", "file": "f", "size": MIB, "version": "v2",
                              "refcount-bits": 8}),
        ),
        (
            "readonly",
            json!({"driver": "qcow2", "file": "ro", "size": MIB}),
        ),
        (
            "inuse",
            json!({"driver": "qcow2", "file": "uf", "size": MIB}),
        ),
        (
            "lockedfile",
            json!({"driver": "file", "filename": file("used.qcow2"), "size": MIB}),
        ),
        (
            "prealloc",
            json!({"driver": "file", "filename": file("m.raw"), "size": MIB,
                            "preallocation": "metadata"}),
        ),
        (
            "nodir",
            json!({"driver": "file", "filename": file("no/such.raw"), "size": MIB}),
        ),
        (
            "hint",
            json!({"driver": "file", "filename": file("h.raw"), "size": MIB,
                        "extent-size-hint": 1u64 << 33}),
        ),
    ];
    for (id, options) in &failing {
        let reply = client
            .execute("blockdev-create", json!({"job-id": id, "options": options}))
            .await
            .expect("monitor alive");
        transcript.push(json!({"create": id, "reply": reply_json(reply)}));
        let statuses = statuses_until_concluded(&mut client, id).await;
        transcript.push(json!({"job": id, "statuses": statuses}));
    }
    transcript.push(ok(&mut client, "query-jobs", json!({})).await);

    // Requests refused at once.
    let refused = [
        (
            "blockdev-create",
            json!({"job-id": "nonode", "options": {"driver": "file",
                                   "filename": file("x.raw"), "size": MIB}}),
        ),
        (
            "blockdev-create",
            json!({"job-id": "1bad", "options": {"driver": "file",
                                   "filename": file("x.raw"), "size": MIB}}),
        ),
        (
            "blockdev-create",
            json!({"job-id": "", "options": {"driver": "file",
                                   "filename": file("x.raw"), "size": MIB}}),
        ),
        ("job-dismiss", json!({"id": "nosuch"})),
        ("job-dismiss", json!({})),
        ("job-dismiss", json!({"id": "nonode", "force": true})),
        ("job-cancel", json!({"id": "nosuch"})),
        ("job-cancel", json!({"id": "nonode"})),
        ("query-jobs", json!({"x": 1})),
    ];
    for (command, arguments) in &refused {
        let reply = client
            .execute(command, arguments.clone())
            .await
            .expect("monitor alive");
        transcript.push(json!({"command": command, "reply": reply_json(reply)}));
    }
    for (id, _) in &failing {
        dismiss(&mut client, id).await;
    }
    transcript.push(ok(&mut client, "query-jobs", json!({})).await);
    transcript.into_iter().map(blank).collect()
}

#[tokio::test]
async fn errors_are_those_of_qemu_storage_daemon() {
    let expected = error_transcript(qsd()).await;
    let actual = error_transcript(storaged()).await;
    for (want, got) in expected.iter().zip(&actual) {
        assert_eq!(got, want, "storaged differs from QSD");
    }
    assert_eq!(actual.len(), expected.len());
}

/// A job still running refuses dismissal; cancelling it makes it fail
/// once its work is done (creation itself is not interrupted, as in QEMU).
async fn cancel_a_running_job(program: Command) {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = TestDaemon::spawn(program, dir, |_| Vec::new());
    let image = daemon.path("big.raw");
    let size = 256 * MIB;
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "blockdev-create",
        json!({"job-id": "big", "options": {"driver": "file", "filename": image,
               "size": size, "preallocation": "full"}}),
    )
    .await;
    assert_eq!(
        job_info(&mut client, "big").await,
        json!({"id": "big", "type": "create", "status": "running",
               "current-progress": 0, "total-progress": 1})
    );
    assert_eq!(
        error(&mut client, "job-dismiss", json!({"id": "big"})).await,
        generic("Job 'big' in state 'running' cannot accept command verb 'dismiss'")
    );
    ok(&mut client, "job-cancel", json!({"id": "big"})).await;
    assert_eq!(statuses_until_concluded(&mut client, "big").await, FAILURE);
    assert_eq!(
        job_info(&mut client, "big").await,
        json!({"id": "big", "type": "create", "status": "concluded",
               "current-progress": 1, "total-progress": 1, "error": "Operation canceled"})
    );
    dismiss(&mut client, "big").await;
    assert_eq!(std::fs::metadata(&image).expect("stat").len(), size);
}

#[tokio::test]
async fn cancelling_a_running_job_as_storaged() {
    cancel_a_running_job(storaged()).await;
}

#[tokio::test]
async fn cancelling_a_running_job_as_qemu_storage_daemon() {
    cancel_a_running_job(qsd()).await;
}

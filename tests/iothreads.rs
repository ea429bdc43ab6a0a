//! iothreads are threads: `--object iothread` starts one (named `IO <id>`,
//! as QEMU's), `query-iothreads` shows its thread id and properties, and
//! an export with `iothread=` serves its requests there — an NBD export's
//! connections after their handshake, a FUSE export's requests — which the
//! thread's own run time (`/proc/PID/task/TID/schedstat`) shows.

mod common;

use common::{error, is_mounted, ok, tool, TestDaemon};
use serde_json::{json, Value};

/// Nanoseconds thread `tid` of process `pid` has run.
fn run_time_ns(pid: u32, tid: i64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .expect("schedstat of the iothread");
    stat.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("run time")
}

fn thread_name(pid: u32, tid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .expect("comm of the iothread")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_run_their_requests_in_their_iothreads() {
    let dir = tempfile::tempdir().expect("dir");
    let image = dir.path().join("disk.raw");
    std::fs::File::create(&image)
        .expect("image")
        .set_len(64 << 20)
        .expect("size");
    let mnt = dir.path().join("disk.mnt");
    std::fs::write(&mnt, b"").expect("mountpoint");
    let socket = dir.path().join("nbd.sock");
    let blockdev = format!("driver=file,node-name=disk,filename={}", image.display());
    let server = format!("addr.type=unix,addr.path={}", socket.display());
    let daemon = TestDaemon::start(&[
        "--object",
        "iothread,id=io0,poll-max-ns=1000",
        "--object",
        "iothread,id=io1",
        "--blockdev",
        &blockdev,
        "--nbd-server",
        &server,
    ]);
    let mut client = daemon.connect().await;
    let threads = ok(&mut client, "query-iothreads", json!({})).await;
    let rows = threads.as_array().expect("list");
    assert_eq!(rows.len(), 2);
    let pid = daemon.pid();
    let mut tids = Vec::new();
    for (row, (id, poll)) in rows.iter().zip([("io0", 1000), ("io1", 32768)]) {
        let tid = row["thread-id"].as_i64().expect("thread-id");
        assert_eq!(
            row,
            &json!({"id": id, "thread-id": tid, "poll-max-ns": poll, "poll-grow": 0,
                    "poll-shrink": 0, "aio-max-batch": 0})
        );
        assert_ne!(i64::from(pid), tid, "an iothread is not the main thread");
        assert_eq!(thread_name(pid, tid), format!("IO {id}"));
        tids.push(tid);
    }

    let (_, desc) = error(
        &mut client,
        "block-export-add",
        json!({"type": "nbd", "id": "n", "node-name": "disk", "iothread": "nope"}),
    )
    .await;
    assert_eq!(desc, "iothread \"nope\" not found");
    ok(
        &mut client,
        "block-export-add",
        json!({"type": "nbd", "id": "n", "node-name": "disk", "writable": true,
               "iothread": "io0", "fixed-iothread": true}),
    )
    .await;
    ok(
        &mut client,
        "block-export-add",
        json!({"type": "fuse", "id": "f", "node-name": "disk", "iothread": "io1",
               "mountpoint": mnt.to_str().expect("UTF-8")}),
    )
    .await;

    // NBD writes run on io0; FUSE reads on io1.
    let io0_before = run_time_ns(pid, tids[0]);
    let nbd = format!("nbd+unix:///disk?socket={}", socket.display());
    let mut writes = vec!["-f", "raw"];
    let commands: Vec<String> = (0..64)
        .map(|i| format!("write -P {} {}M 1M", i % 200 + 1, i))
        .collect();
    for command in &commands {
        writes.extend(["-c", command.as_str()]);
    }
    writes.push(&nbd);
    tool("qemu-io", &writes);
    assert!(run_time_ns(pid, tids[0]) > io0_before, "io0 served nothing");

    let io1_before = run_time_ns(pid, tids[1]);
    let mount = mnt.to_str().expect("UTF-8");
    let checks: Vec<String> = (0..64)
        .map(|i| format!("read -P {} {}M 1M", i % 200 + 1, i))
        .collect();
    let mut reads = vec!["-r", "-f", "raw", "-t", "none"];
    for check in &checks {
        reads.extend(["-c", check.as_str()]);
    }
    reads.push(mount);
    tool("qemu-io", &reads);
    assert!(run_time_ns(pid, tids[1]) > io1_before, "io1 served nothing");

    // Hard: the kernel may still have a read-ahead of its own in flight.
    ok(
        &mut client,
        "block-export-del",
        json!({"id": "f", "mode": "hard"}),
    )
    .await;
    let event = client
        .next_event(std::time::Duration::from_secs(20))
        .await
        .expect("monitor")
        .expect("event");
    assert_eq!(event["event"], "BLOCK_EXPORT_DELETED");
    assert!(!is_mounted(&mnt));
    let listed: Value = ok(&mut client, "query-block-exports", json!({})).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
}

/// `qom-set` changes an iothread's polling while it runs: `qom-get` and
/// `query-iothreads` show the new values, and a bad one changes nothing.
#[tokio::test]
async fn qom_set_changes_an_iothreads_polling() {
    let daemon = TestDaemon::start(&["--object", "iothread,id=io0,poll-max-ns=1000"]);
    let mut client = daemon.connect().await;
    let set = |property: &str, value: serde_json::Value| json!({"path": "/objects/io0", "property": property, "value": value});
    ok(&mut client, "qom-set", set("poll-max-ns", json!(5000))).await;
    ok(&mut client, "qom-set", set("poll-grow", json!(2))).await;
    let (_, desc) = error(&mut client, "qom-set", set("poll-shrink", json!(-1))).await;
    assert_eq!(
        desc,
        "poll-shrink value must be in range [0, 9223372036854775807]"
    );
    let rows = ok(&mut client, "query-iothreads", json!({})).await;
    assert_eq!(rows[0]["poll-max-ns"], 5000);
    assert_eq!(rows[0]["poll-grow"], 2);
    assert_eq!(rows[0]["poll-shrink"], 0);
    let value = ok(
        &mut client,
        "qom-get",
        json!({"path": "io0", "property": "poll-max-ns"}),
    )
    .await;
    assert_eq!(value, 5000);
}

//! The `throttle` filter through the real binary and a real client: fio's
//! NBD engine reads and writes through NBD exports of throttle nodes over
//! a file node, and its per-request logs (completion times in Unix
//! milliseconds) measure the rate.
//!
//! A loaded machine can only make things slower, so the assertions are
//! the ones it cannot break: N units (bytes or requests) took at least
//! `(N - burst - one request) / rate × 0.9` (a throttle never lets more
//! through than it should; the burst is what the bucket holds, a tenth of
//! a second's worth without `-max`), and no more than five times the time
//! the limit needs. The measured rates are printed (`--nocapture`).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ok, TestDaemon};
use serde_json::{json, Value};

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// The image's size: filled with data, so that no client or server can
/// skip reading holes.
const IMAGE_SIZE: usize = 32 << 20;

/// A daemon whose group `tg` has `limits` (keyval members of `limits`),
/// with one throttle node per name over the file node `file0`, each
/// exported under its own name.
fn start(limits: &str, nodes: &[&str]) -> TestDaemon {
    let dir = tempfile::tempdir().expect("temp dir");
    TestDaemon::start_in(dir, |dir| {
        let image = dir.join("image.raw");
        let data: Vec<u8> = (0..IMAGE_SIZE).map(|i| (i % 251) as u8 | 1).collect();
        std::fs::write(&image, data).expect("image");
        let mut args = vec![
            "--object".to_owned(),
            format!("throttle-group,id=tg,{limits}"),
            "--blockdev".to_owned(),
            format!("file,node-name=file0,filename={}", image.display()),
            "--nbd-server".to_owned(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
        ];
        for node in nodes {
            args.extend([
                "--blockdev".to_owned(),
                format!("throttle,node-name={node},throttle-group=tg,file=file0"),
                "--export".to_owned(),
                format!("nbd,id=e-{node},node-name={node},name={node},writable=on"),
            ]);
        }
        args
    })
}

/// One fio job: the export it uses and its options.
struct Job {
    export: &'static str,
    options: &'static [&'static str],
}

/// What one job did: each request's completion time (Unix ms) and size.
struct Done {
    requests: Vec<(u64, u64)>,
}

impl Done {
    fn bytes(&self) -> u64 {
        self.requests.iter().map(|&(_, size)| size).sum()
    }

    /// Seconds from the first completion to the last.
    fn span(&self) -> f64 {
        let first = self.requests.first().expect("requests").0;
        let last = self.requests.last().expect("requests").0;
        (last - first) as f64 / 1000.0
    }

    /// The requests that completed in `[from, to]` (Unix ms).
    fn between(&self, from: u64, to: u64) -> Done {
        Done {
            requests: self
                .requests
                .iter()
                .copied()
                .filter(|&(at, _)| at >= from && at <= to)
                .collect(),
        }
    }
}

/// Runs `jobs` in one fio process against `daemon`'s exports, each
/// logging every request; returns what each did.
async fn fio(daemon: &TestDaemon, jobs: &[Job]) -> Vec<Done> {
    let logs = daemon.path("fio-logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut args: Vec<String> = vec!["--ioengine=nbd".into(), "--output-format=json".into()];
    for (i, job) in jobs.iter().enumerate() {
        args.push(format!("--name=job{i}"));
        args.push(format!(
            "--uri=nbd+unix:///{}?socket={}",
            job.export,
            daemon.path("nbd.sock").display()
        ));
        args.extend(job.options.iter().map(|option| option.to_string()));
        args.push(format!(
            "--write_bw_log={}",
            logs.join(format!("job{i}")).display()
        ));
        args.extend(["--log_avg_msec=0".into(), "--log_unix_epoch=1".into()]);
    }
    let output = tokio::process::Command::new("fio")
        .args(&args)
        .output()
        .await
        .expect("run fio");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fio failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout[stdout.find('{').expect("JSON")..])
        .expect("fio's JSON report");
    for job in report["jobs"].as_array().expect("jobs") {
        assert_eq!(job["error"], 0, "{job}");
    }
    let done = (0..jobs.len())
        .map(|i| Done {
            requests: read_log(&logs, &format!("job{i}_bw.")),
        })
        .collect();
    std::fs::remove_dir_all(&logs).expect("remove logs");
    done
}

/// The (time, size) of each request in the bandwidth log whose name
/// starts with `prefix`, by time.
fn read_log(dir: &Path, prefix: &str) -> Vec<(u64, u64)> {
    let entry = std::fs::read_dir(dir)
        .expect("log dir")
        .map(|entry| entry.expect("entry").path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no log {prefix}*"));
    let text = std::fs::read_to_string(entry).expect("log");
    let mut requests: Vec<(u64, u64)> = text
        .lines()
        .map(|line| {
            let fields: Vec<u64> = line
                .split(',')
                .map(|field| field.trim().parse().expect("a number"))
                .collect();
            // time, bandwidth, direction, block size, offset
            (fields[0], fields[3])
        })
        .collect();
    requests.sort_unstable();
    requests
}

/// Checks that `units` in `seconds` kept to `rate` per second (with what
/// the bucket holds, `burst`, and one request, `request`, let through at
/// once) and was not more than five times slower; prints the rate.
fn check_rate(label: &str, units: f64, seconds: f64, rate: f64, burst: f64, request: f64) {
    let least = (units - burst - request) / rate;
    let measured = units / seconds;
    println!(
        "{label}: {units} in {seconds:.3} s = {measured:.1}/s, limit {rate}/s (at least {least:.3} s)"
    );
    assert!(
        seconds >= 0.9 * least,
        "{label}: {units} in {seconds:.3} s is faster than {rate}/s"
    );
    assert!(
        seconds <= 5.0 * units / rate,
        "{label}: {units} in {seconds:.3} s is far slower than {rate}/s"
    );
}

/// `qom-set` of the group's `limits`.
async fn set_limits(qmp: &mut qmp::client::Client, limits: Value) {
    ok(
        qmp,
        "qom-set",
        json!({"path": "/objects/tg", "property": "limits", "value": limits}),
    )
    .await;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nbd_client_gets_the_group_bps_and_iops() {
    let bps = 4.0 * MIB;
    let daemon = start("limits.bps-total=4194304", &["t0"]);
    let mut qmp = daemon.connect().await;

    let reads = &fio(
        &daemon,
        &[Job {
            export: "t0",
            options: &["--rw=read", "--bs=64k", "--iodepth=8", "--size=16M"],
        }],
    )
    .await[0];
    assert_eq!(reads.bytes(), 16 << 20);
    let (units, seconds) = (reads.bytes() as f64, reads.span());
    check_rate(
        "64 KiB reads, bps-total 4 MiB/s (bytes)",
        units,
        seconds,
        bps,
        bps / 10.0,
        64.0 * KIB,
    );

    // Operations: 1000 random 4 KiB reads at 400 per second.
    set_limits(&mut qmp, json!({"bps-total": 0, "iops-total": 400})).await;
    let ops = &fio(
        &daemon,
        &[Job {
            export: "t0",
            options: &[
                "--rw=randread",
                "--bs=4k",
                "--iodepth=8",
                "--size=32M",
                "--number_ios=1000",
            ],
        }],
    )
    .await[0];
    assert_eq!(ops.requests.len(), 1000);
    check_rate(
        "4 KiB random reads, iops-total 400 (requests)",
        ops.requests.len() as f64,
        ops.span(),
        400.0,
        40.0,
        1.0,
    );

    // Writes have their own bucket: 2 MiB/s for writes only.
    set_limits(&mut qmp, json!({"iops-total": 0, "bps-write": 2097152})).await;
    let writes = &fio(
        &daemon,
        &[Job {
            export: "t0",
            options: &["--rw=write", "--bs=64k", "--iodepth=8", "--size=8M"],
        }],
    )
    .await[0];
    check_rate(
        "64 KiB writes, bps-write 2 MiB/s (bytes)",
        writes.bytes() as f64,
        writes.span(),
        2.0 * MIB,
        0.2 * MIB,
        64.0 * KIB,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_in_one_group_share_its_rate_taking_turns() {
    let bps = 4.0 * MIB;
    let daemon = start("limits.bps-total=4194304", &["t0", "t1"]);
    // One client keeps 16 requests waiting, the other 1: the group's rate
    // is shared by both, and in turns rather than by queue length.
    let done = fio(
        &daemon,
        &[
            Job {
                export: "t0",
                options: &[
                    "--rw=read",
                    "--bs=64k",
                    "--iodepth=16",
                    "--size=32M",
                    "--time_based",
                    "--runtime=4",
                ],
            },
            Job {
                export: "t1",
                options: &[
                    "--rw=read",
                    "--bs=64k",
                    "--iodepth=1",
                    "--size=32M",
                    "--time_based",
                    "--runtime=4",
                ],
            },
        ],
    )
    .await;
    let (deep, shallow) = (&done[0], &done[1]);
    let all = Done {
        requests: {
            let mut all = [deep.requests.clone(), shallow.requests.clone()].concat();
            all.sort_unstable();
            all
        },
    };
    check_rate(
        "two nodes, one group of 4 MiB/s (bytes, together)",
        all.bytes() as f64,
        all.span(),
        bps,
        bps / 10.0,
        64.0 * KIB,
    );
    // While both ran: a share each, not one in 17 for the shallow queue.
    let from = deep.requests[0].0.max(shallow.requests[0].0);
    let to = deep
        .requests
        .last()
        .unwrap()
        .0
        .min(shallow.requests.last().unwrap().0);
    let (deep_bytes, shallow_bytes) = (
        deep.between(from, to).bytes() as f64,
        shallow.between(from, to).bytes() as f64,
    );
    let seconds = (to - from) as f64 / 1000.0;
    println!(
        "while both ran ({seconds:.3} s): iodepth 16 {:.1} KiB/s, iodepth 1 {:.1} KiB/s",
        deep_bytes / KIB / seconds,
        shallow_bytes / KIB / seconds
    );
    assert!(
        shallow_bytes >= deep_bytes / 5.0,
        "the node with one request waiting got {shallow_bytes} bytes, the other {deep_bytes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qom_set_changes_the_rate_while_a_client_reads() {
    let daemon = start("limits.bps-total=1048576", &["t0"]);
    let mut qmp = daemon.connect().await;
    let reading = {
        let daemon = &daemon;
        async move {
            fio(
                daemon,
                &[Job {
                    export: "t0",
                    options: &[
                        "--rw=read",
                        "--bs=64k",
                        "--iodepth=4",
                        "--size=32M",
                        "--time_based",
                        "--runtime=7",
                    ],
                }],
            )
            .await
        }
    };
    let changing = async {
        let mut times = HashMap::new();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        times.insert("raise before", now_ms());
        set_limits(&mut qmp, json!({"bps-total": 16777216})).await;
        times.insert("raise after", now_ms());
        tokio::time::sleep(Duration::from_millis(2000)).await;
        times.insert("lower before", now_ms());
        set_limits(&mut qmp, json!({"bps-total": 524288})).await;
        times.insert("lower after", now_ms());
        times
    };
    let (done, times) = tokio::join!(reading, changing);
    let done = &done[0];
    let first = done.requests[0].0;
    let last = done.requests.last().unwrap().0;
    // Requests admitted before a change may complete just after it: up
    // to the queue depth's worth counts with the next phase.
    let in_flight = 4.0 * 64.0 * KIB;
    // fio's Unix times and this process's may disagree by some tens of
    // milliseconds on a loaded machine: each phase leaves out that much
    // around the changes, so that no request of a faster phase counts
    // with a slower one.
    let guard = 500;
    let phases = [
        ("1 MiB/s", first, times["raise before"] - guard, MIB),
        (
            "raised to 16 MiB/s",
            times["raise after"] + guard,
            times["lower before"] - guard,
            16.0 * MIB,
        ),
        (
            "lowered to 512 KiB/s",
            times["lower after"] + guard,
            last,
            512.0 * KIB,
        ),
    ];
    let mut measured = Vec::new();
    for (label, from, to, rate) in phases {
        let phase = done.between(from, to);
        let seconds = (to - from) as f64 / 1000.0;
        let bytes = phase.bytes() as f64;
        let least = (bytes - rate / 10.0 - 64.0 * KIB - in_flight) / rate;
        println!(
            "{label}: {bytes} bytes in {seconds:.3} s = {:.1} KiB/s (at least {least:.3} s)",
            bytes / KIB / seconds
        );
        assert!(
            seconds >= 0.9 * least,
            "{label}: {bytes} bytes in {seconds:.3} s"
        );
        measured.push(bytes / seconds);
    }
    // Raising the limit let more through than the old limit could: twice
    // the old rate (a low bar a loaded machine still clears; the ceilings
    // above are what load cannot break).
    assert!(measured[1] >= 2.0 * MIB, "raised: {} B/s", measured[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_throttled_requests_through_at_once() {
    // 64 KiB/s: the 4 MiB the client queues would take about a minute.
    let daemon = start("limits.bps-total=65536", &["t0"]);
    let mut qmp = daemon.connect().await;
    let uri = format!(
        "nbd+unix:///t0?socket={}",
        daemon.path("nbd.sock").display()
    );
    let mut client = tokio::process::Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(["-c", "aio_write -P 7 0 1M", "-c", "aio_write -P 7 1M 1M"])
        .args(["-c", "aio_write -P 7 2M 1M", "-c", "aio_write -P 7 3M 1M"])
        .args(["-c", "aio_flush", &uri])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("qemu-io");
    // The writes are queued at the filter once the first is through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A reopen drains the node; as in QEMU, queued requests then go
    // without waiting for the limits, and the drain ends at once.
    let started = std::time::Instant::now();
    ok(
        &mut qmp,
        "blockdev-reopen",
        json!({"options": [{"driver": "throttle", "node-name": "t0",
                            "throttle-group": "tg", "file": "file0"}]}),
    )
    .await;
    let waited = started.elapsed();
    let status = tokio::time::timeout(Duration::from_secs(60), client.wait())
        .await
        .expect("the client finished")
        .expect("qemu-io");
    assert!(status.success());
    // Far below the 60 s the limits alone would take, whatever the load.
    assert!(
        waited < Duration::from_secs(30),
        "the drain took {waited:?}"
    );
}

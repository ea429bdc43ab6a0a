//! The metrics endpoint (`--metrics`), scraped over HTTP and parsed with
//! the Prometheus client library's text-format parser
//! (tests/python/metrics_scrape.py): while `fio --ioengine=nbd` writes
//! over NBD the scrapes parse and the counters never go back; afterwards
//! the export's and the node's written bytes and requests are at least
//! what fio reports, the latency histograms count every request, requests
//! past the end count as invalid, an NBD client held open shows as a
//! client of its export, a finished backup
//! job shows its progress, and the process's memory and descriptors are
//! there. Bad requests get HTTP errors, a silent client is dropped, and a
//! bad option gets a clear message.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::jobs::wait_event;
use common::{ok, TestDaemon, PATIENCE};
use serde_json::{json, Value};

/// The disk's size: 16 MiB.
const DISK_SIZE: u64 = 16 << 20;

/// A port nothing listens on now (bound by the system, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// storaged serving a raw image (`disk` over `file0`) as NBD export `e0`
/// (name `disk`), a null target for a backup, and metrics on `port`.
fn start(port: u16) -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    common::sparse_file(&dir.path().join("disk.img"), DISK_SIZE);
    TestDaemon::start_in(dir, |dir: &Path| {
        vec![
            format!(
                "--blockdev=driver=file,node-name=file0,filename={}",
                dir.join("disk.img").display()
            ),
            "--blockdev=driver=raw,node-name=disk,file=file0".into(),
            format!("--blockdev=driver=null-co,node-name=target,size={DISK_SIZE}"),
            format!(
                "--nbd-server=addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export=type=nbd,id=e0,node-name=disk,writable=on".into(),
            format!(
                "--metrics=addr.type=inet,addr.host=127.0.0.1,addr.port={port},max-connections=4"
            ),
        ]
    })
}

/// One parsed scrape: sample name and labels (sorted, as text) to value.
type Samples = BTreeMap<String, f64>;

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// Scrapes and parses with prometheus_client; returns the samples and
/// each family's type.
fn scrape(port: u16) -> (Samples, BTreeMap<String, String>) {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/metrics_scrape.py"
    );
    // Not `tool`: the metrics' names contain "failed".
    let out = Command::new("python3")
        .args([script, &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scrape: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("scrape JSON");
    let mut samples = Samples::new();
    let mut types = BTreeMap::new();
    for family in parsed["families"].as_array().unwrap() {
        let name = family["name"].as_str().unwrap();
        types.insert(
            name.to_string(),
            family["type"].as_str().unwrap().to_string(),
        );
        for sample in family["samples"].as_array().unwrap() {
            let labels: Vec<(&str, &str)> = sample[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                .collect();
            let sample_name = sample[0].as_str().unwrap();
            samples.insert(key(sample_name, &labels), sample[2].as_f64().unwrap());
        }
    }
    (samples, types)
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = key(name, labels);
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

const EXPORT: [(&str, &str); 3] = [("export", "e0"), ("type", "nbd"), ("node", "disk")];

fn export_value(samples: &Samples, name: &str, op: &str) -> f64 {
    let mut labels = EXPORT.to_vec();
    labels.push(("op", op));
    value(samples, name, &labels)
}

/// Every counter of `before` is at most its value in `after`.
fn assert_monotonic(before: &Samples, after: &Samples, types: &BTreeMap<String, String>) {
    for (key, old) in before {
        let family = key.split('{').next().unwrap();
        let counter = types
            .iter()
            .any(|(name, kind)| kind == "counter" && family == format!("{name}_total"));
        if counter {
            assert!(
                after[key] >= *old,
                "{key} went from {old} to {}",
                after[key]
            );
        }
    }
}

/// Scrapes until `check` holds (a client connects or leaves in its own
/// time), for at most [`PATIENCE`].
fn scrape_until(port: u16, what: &str, check: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (samples, _) = scrape(port);
        if check(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {samples:#?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn scrapes_during_fio_count_what_fio_did() {
    let port = free_port();
    let daemon = start(port);
    let uri = format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    );

    let (first, types) = scrape(port);
    assert_eq!(types["storaged_export_requests"], "counter");
    assert_eq!(
        types["storaged_export_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(types["process_resident_memory_bytes"], "gauge");
    assert_eq!(
        export_value(&first, "storaged_export_bytes_total", "write"),
        0.0
    );

    let fio = Command::new("fio")
        .args([
            "--name=w",
            "--ioengine=nbd",
            "--thread",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            &format!("--size={DISK_SIZE}"),
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio");
    // Scrape while fio runs (however many times it takes).
    let mut fio = fio;
    let mut previous = first;
    while fio.try_wait().unwrap().is_none() {
        let (now, _) = scrape(port);
        assert_monotonic(&previous, &now, &types);
        previous = now;
    }
    let out = fio.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The engine prints "fio: connected to NBD server" before the JSON.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json_start = stdout.find('{').expect("fio JSON");
    let report: Value = serde_json::from_str(&stdout[json_start..]).expect("fio JSON");
    let written = report["jobs"][0]["write"]["io_bytes"].as_f64().unwrap();
    let requests = report["jobs"][0]["write"]["total_ios"].as_f64().unwrap();
    assert!(written >= DISK_SIZE as f64 && requests >= (DISK_SIZE / 4096) as f64);

    let (after, _) = scrape(port);
    assert_monotonic(&previous, &after, &types);
    let bytes = export_value(&after, "storaged_export_bytes_total", "write");
    let ops = export_value(&after, "storaged_export_requests_total", "write");
    assert!(bytes >= written, "export wrote {bytes}, fio {written}");
    assert!(ops >= requests, "export did {ops} writes, fio {requests}");
    assert_eq!(
        export_value(&after, "storaged_export_failed_requests_total", "write"),
        0.0
    );
    assert_eq!(
        export_value(&after, "storaged_export_invalid_requests_total", "write"),
        0.0
    );
    let mut histogram = EXPORT.to_vec();
    histogram.extend([("op", "write"), ("le", "+Inf")]);
    let name = "storaged_export_request_duration_seconds";
    assert_eq!(value(&after, &format!("{name}_bucket"), &histogram), ops);
    histogram.pop();
    assert_eq!(value(&after, &format!("{name}_count"), &histogram), ops);
    assert!(value(&after, &format!("{name}_sum"), &histogram) > 0.0);
    for node in ["disk", "file0"] {
        let labels = [("node", node), ("op", "write")];
        assert!(value(&after, "storaged_node_bytes_total", &labels) >= written);
    }
    let offset = value(
        &after,
        "storaged_node_write_highest_offset_bytes",
        &[("node", "disk")],
    );
    assert!(offset <= DISK_SIZE as f64 && offset > 0.0);
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&after, "process_open_fds", &[]) >= 3.0);
    assert_eq!(value(&after, "storaged_export_clients", &EXPORT), 0.0);

    // Requests past the end, sent by a client that does not check them
    // itself, are refused and counted as invalid (not as failed).
    let script = format!(
        "import nbd\n\
         h = nbd.NBD()\n\
         h.set_strict_mode(0)\n\
         h.connect_uri({uri:?})\n\
         for request in (lambda: h.pread(512, {DISK_SIZE}), lambda: h.pwrite(b'x' * 512, {DISK_SIZE}), lambda: h.trim(512, {DISK_SIZE})):\n\
         \x20   try:\n\
         \x20       request()\n\
         \x20       raise SystemExit('accepted')\n\
         \x20   except nbd.Error:\n\
         \x20       pass\n\
         h.shutdown()\n"
    );
    common::tool("/usr/bin/python3", &["-c", &script]);
    let (refused, _) = scrape(port);
    for op in ["read", "write", "unmap"] {
        let invalid = export_value(&refused, "storaged_export_invalid_requests_total", op);
        assert_eq!(invalid, 1.0, "{op}");
        let failed = export_value(&refused, "storaged_export_failed_requests_total", op);
        assert_eq!(failed, 0.0, "{op}");
    }

    // A client that stays connected counts, and stops counting when gone.
    let mut held = Command::new("/usr/bin/python3")
        .args([
            "-m",
            "nbd",
            "-u",
            &uri,
            "-c",
            "import sys; sys.stdin.read()",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nbdsh");
    scrape_until(port, "one client", |s| {
        value(s, "storaged_export_clients", &EXPORT) == 1.0
            && value(s, "storaged_nbd_server_connections", &[]) == 1.0
    });
    drop(held.stdin.take());
    assert!(held.wait().unwrap().success());
    scrape_until(port, "no client", |s| {
        value(s, "storaged_export_clients", &EXPORT) == 0.0
    });

    // A finished job's progress.
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "blockdev-backup",
        json!({"job-id": "b", "device": "disk", "target": "target", "sync": "full", "auto-dismiss": false}),
    )
    .await;
    wait_event(&mut client, "BLOCK_JOB_COMPLETED").await;
    let (done, _) = scrape(port);
    let job = [("job", "b"), ("type", "backup"), ("status", "concluded")];
    let total = value(&done, "storaged_job_progress_total", &job);
    assert_eq!(total, DISK_SIZE as f64);
    assert_eq!(value(&done, "storaged_job_progress_current", &job), total);
}

/// Sends `request` as it is and returns the status line of the answer.
fn status_of(port: u16, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.lines().next().unwrap_or_default().to_string()
}

#[test]
fn refuses_what_is_not_a_scrape() {
    let port = free_port();
    let _daemon = start(port);
    assert_eq!(
        status_of(port, b"GET / HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status_of(port, b"POST /metrics HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status_of(port, b"hello\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(16384));
    assert_eq!(
        status_of(port, huge.as_bytes()),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        status_of(port, b"GET /metrics HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn a_client_that_sends_nothing_is_dropped() {
    let port = free_port();
    let _daemon = start(port);
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // The server's 10 s connection timeout, well within PATIENCE.
    idle.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(idle.read(&mut byte).unwrap(), 0, "closed without an answer");
    assert_eq!(
        status_of(port, b"GET /metrics HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test]
async fn a_unix_socket_endpoint_serves_and_goes_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("metrics.sock");
    let option = format!("--metrics=addr.type=unix,addr.path={}", socket.display());
    let mut daemon = TestDaemon::start_in(dir, |_| vec![option]);
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("\nprocess_open_fds "), "{reply}");

    let mut client = daemon.connect().await;
    ok(&mut client, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    assert!(!socket.exists());
}

#[test]
fn bad_options_are_refused_clearly() {
    for (option, message) in [
        (
            "--metrics=addr.type=inet,addr.host=127.0.0.1,addr.port=x",
            "Failed to parse port 'x'",
        ),
        (
            "--metrics=addr.type=fd,addr.str=3",
            "Parameter 'addr.type' expects 'inet' or 'unix' for --metrics",
        ),
        (
            "--metrics=addr.type=unix,addr.path=/nonexistent/m.sock",
            "Failed to bind socket to /nonexistent/m.sock: No such file or directory",
        ),
        (
            "--metrics=addr.type=unix,addr.path=m.sock,max-connections=0",
            "Parameter 'max-connections' expects a value of at least 1",
        ),
        (
            "--metrics=addr.type=unix,addr.path=m.sock,x=1",
            "Parameter 'x' is unexpected",
        ),
    ] {
        let out = common::run(&[option]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{option}");
        assert!(
            stderr.contains(&format!("{option}: {message}")),
            "{option}: {stderr}"
        );
    }
}

//! The end of the daemon's life: SIGINT, SIGTERM, SIGHUP and `quit` stop
//! it with status 0, after answering `quit`, removing the monitor socket
//! and the pid file; the pid file holds the pid and is locked.

mod common;

use common::{ok, run, sparse_file, TestDaemon};
use serde_json::json;

#[test]
fn stop_signals_exit_0_and_clean_up() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let mut daemon = TestDaemon::start(&["--blockdev", "null-co,node-name=n0"]);
        assert!(daemon.qmp_socket.exists());
        daemon.signal(signal);
        let status = daemon.wait_exit();
        assert_eq!(
            status.code(),
            Some(0),
            "signal {signal}: {}",
            daemon.stderr()
        );
        assert!(!daemon.qmp_socket.exists(), "signal {signal}: socket left");
        assert!(!daemon.pidfile.exists(), "signal {signal}: pid file left");
    }
}

#[tokio::test]
async fn quit_answers_then_exits_0() {
    let mut daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    assert_eq!(ok(&mut client, "quit", json!({})).await, json!({}));
    // The monitor closes the connection once the reply is out.
    assert!(client.receive().await.is_err());
    assert_eq!(daemon.wait_exit().code(), Some(0));
    assert!(!daemon.pidfile.exists());
}

#[tokio::test]
async fn a_signal_stops_the_daemon_with_a_client_connected() {
    let mut daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    ok(&mut client, "query-version", json!({})).await;
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    assert!(client.receive().await.is_err(), "connection closed");
}

#[tokio::test]
async fn resized_image_is_on_disk_after_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("disk.img");
    sparse_file(&image, 1 << 20);
    let blockdev = format!("file,node-name=f0,filename={}", image.display());
    let mut daemon = TestDaemon::start_in(dir, |_| vec!["--blockdev".into(), blockdev]);
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "block_resize",
        json!({"node-name": "f0", "size": 3 << 20}),
    )
    .await;
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    assert_eq!(std::fs::metadata(&image).expect("image").len(), 3 << 20);
}

#[test]
fn pidfile_holds_the_pid_and_is_locked() {
    let daemon = TestDaemon::start(&[]);
    let text = std::fs::read_to_string(&daemon.pidfile).expect("pid file");
    assert_eq!(text, format!("{}\n", daemon.pid()));
    let pidfile = daemon.pidfile.to_str().expect("utf-8").to_owned();
    let output = run(&["--pidfile", &pidfile]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "storaged: cannot create PID file: Cannot lock pid file: Resource temporarily unavailable\n"
    );
    // The loser must not remove the winner's file.
    assert_eq!(
        std::fs::read_to_string(&daemon.pidfile).expect("pid file"),
        text
    );
}

#[test]
fn a_signal_during_startup_stops_cleanly() {
    // wait=on holds startup until a client connects; a signal ends it.
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("wait.sock");
    let chardev = format!("socket,id=w,path={},server=on", socket.display());
    let mut child = common::storaged()
        .args(["--chardev", &chardev, "--monitor", "w"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists());
}

#[test]
fn data_written_over_nbd_is_on_disk_after_each_stop_signal() {
    for (round, signal) in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.img");
        sparse_file(&image, 1 << 20);
        let socket = dir.path().join("nbd.sock");
        let blockdev = format!("file,node-name=f0,filename={}", image.display());
        let server = format!("addr.type=unix,addr.path={}", socket.display());
        let mut daemon = TestDaemon::start_in(dir, |_| {
            vec![
                "--blockdev".into(),
                blockdev,
                "--nbd-server".into(),
                server,
                "--export".into(),
                "nbd,id=e0,node-name=f0,writable=on".into(),
            ]
        });
        let pattern = 0x40 + round as u8;
        let uri = format!("nbd+unix:///f0?socket={}", socket.display());
        let status = std::process::Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                &format!("write -P {pattern} 4096 65536"),
                &uri,
            ])
            .output()
            .expect("qemu-io is installed");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        daemon.signal(signal);
        assert_eq!(daemon.wait_exit().code(), Some(0), "signal {signal}");
        let bytes = std::fs::read(&image).expect("image");
        assert!(bytes[..4096].iter().all(|&b| b == 0));
        assert!(
            bytes[4096..4096 + 65536].iter().all(|&b| b == pattern),
            "signal {signal}"
        );
        assert!(bytes[4096 + 65536..].iter().all(|&b| b == 0));
    }
}

/// A request that never completes (the flush at exit of a `null-co` node
/// that answers in about thirty years) holds an orderly stop; a second
/// signal ends the daemon at once, with status 1.
#[test]
fn a_second_signal_ends_a_stop_that_waits() {
    let mut daemon = TestDaemon::start(&[
        "--blockdev",
        "null-co,node-name=slow,latency-ns=1000000000000000000",
    ]);
    daemon.signal(libc::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(daemon.is_running(), "the stop did not wait for the flush");
    // Two signals close together may arrive as one: signal until it ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while daemon.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not end"
        );
        daemon.signal(libc::SIGTERM);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", daemon.stderr());
    assert!(
        daemon.stderr().contains("SIGTERM while stopping"),
        "{}",
        daemon.stderr()
    );
}

//! `--daemonize`: the parent returns only once the daemon is ready (exit
//! 0), or with the daemon's error (exit 1); the daemon runs on in its own
//! session with its standard streams detached.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run, storaged, PATIENCE};
use qmp::client::Client;
use serde_json::json;

/// Whether `pid` runs: it exists and is not a zombie waiting for init
/// (the daemon's parent) to reap it.
fn pid_alive(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !state.is_some_and(|rest| rest.starts_with('Z'))
}

#[tokio::test]
async fn parent_exits_0_once_the_daemon_is_ready() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("qmp.sock");
    let pidfile = dir.path().join("d.pid");
    let chardev = format!("socket,id=m,path={},server=on,wait=off", socket.display());
    let output = storaged()
        .args([
            "--daemonize",
            "--chardev",
            &chardev,
            "--monitor",
            "m",
            "--blockdev",
            "null-co,node-name=n0",
            "--pidfile",
            pidfile.to_str().expect("utf-8"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the parent");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `output()` read to the end of both pipes: the daemon let go of them.
    assert!(output.stdout.is_empty() && output.stderr.is_empty());
    // Ready means: pid file written and the monitor serving, already.
    let pid: libc::pid_t = std::fs::read_to_string(&pidfile)
        .expect("pid file exists when the parent returns")
        .trim()
        .parse()
        .expect("a pid");
    assert!(pid_alive(pid));
    // SAFETY: getsid has no memory-safety preconditions.
    let (daemon_session, our_session) = unsafe { (libc::getsid(pid), libc::getsid(0)) };
    assert_ne!(
        daemon_session, our_session,
        "the daemon has its own session"
    );
    assert_ne!(daemon_session, pid, "but does not lead it (no terminal)");
    let mut client = Client::connect_unix(&socket).await.expect("monitor");
    client.negotiate().await.expect("negotiate");
    let nodes = client
        .execute("query-named-block-nodes", json!({}))
        .await
        .expect("reply")
        .expect("success");
    assert_eq!(nodes[0]["node-name"], "n0");
    client
        .execute("quit", json!({}))
        .await
        .expect("reply")
        .expect("success");
    let deadline = Instant::now() + PATIENCE;
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "daemon did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pidfile.exists());
    assert!(!socket.exists());
}

#[test]
fn parent_exits_1_with_the_error_when_startup_fails() {
    let output = run(&["--daemonize", "--blockdev", "driver=bogus"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "storaged: --blockdev driver=bogus: Parameter 'driver' does not accept value 'bogus'\n"
    );
}

//! storaged under systemd: socket activation and the notification protocol.
//!
//! The example units in `docs/systemd/` run under the real
//! `systemd-socket-activate` (which needs no systemd as PID 1 and passes
//! sockets exactly as a `.socket` unit does: `LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`): their `ListenStream=` paths and `FileDescriptorName=`
//! names, and the service's `ExecStart=` with the binary and image paths
//! replaced. The first NBD client starts the daemon and gets its answer.
//! A Python stand-in for systemd's `NOTIFY_SOCKET` checks that `READY=1`
//! comes only once every export listens, and `STOPPING=1` at the end.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{tool, PATIENCE};
use serde_json::{json, Value};

/// The `Key=` values of a unit file, with `\`-continued lines joined.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new("docs/systemd").join(unit)).unwrap();
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

fn one_value(unit: &str, key: &str) -> String {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "{unit}: {key}=");
    values[0].clone()
}

/// The next notification, as its lines.
fn next_notification(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let len = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..len])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_units_run_under_systemd_socket_activate() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path();
    let image = runtime.join("disk0.img");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "raw", image.to_str().unwrap(), "4M"],
    );
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 64k",
            image.to_str().unwrap(),
        ],
    );

    // systemd-socket-activate's arguments from the units: a socket per
    // unit, in the service's Sockets= order, named as the unit names it.
    let mut activate = Command::new("systemd-socket-activate");
    let mut names = Vec::new();
    let mut paths = Vec::new();
    for unit in one_value("storaged.service", "Sockets").split_whitespace() {
        let path =
            one_value(unit, "ListenStream").replace("%t/storaged", runtime.to_str().unwrap());
        activate.args(["-l", &path]);
        names.push(one_value(unit, "FileDescriptorName"));
        paths.push(path);
    }
    assert_eq!(names, ["nbd", "qmp"]);
    assert_eq!(one_value("storaged.service", "Type"), "notify");
    let exec_start = one_value("storaged.service", "ExecStart")
        .replace("/usr/local/bin/storaged", env!("CARGO_BIN_EXE_storaged"))
        .replace("/var/lib/storaged", runtime.to_str().unwrap());
    let notify_path = runtime.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    activate
        .arg(format!("--fdname={}", names.join(":")))
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .args(exec_start.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut service = common::KillOnDrop(activate.spawn().unwrap());
    let service = &mut service.0;
    let (nbd, qmp) = (&paths[0], &paths[1]);
    // It says so once each socket listens.
    let mut log = std::io::BufReader::new(service.stderr.take().unwrap());
    for path in &paths {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut log, &mut line).unwrap();
        assert!(
            line.starts_with(&format!("Listening on {path} as ")),
            "{line}"
        );
    }

    // The first client's connection starts storaged, which answers it.
    let uri = format!("nbd+unix:///disk0?socket={nbd}");
    let size = tool("nbdinfo", &["--size", &uri]);
    assert_eq!(size.trim(), "4194304");
    let ready = next_notification(&notify);
    assert_eq!(
        ready,
        [
            "READY=1".to_string(),
            "STATUS=Serving 1 block export".to_string(),
            format!("MAINPID={}", service.id()),
        ],
        "storaged is the process systemd-socket-activate started"
    );
    tool(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x5a 0 64k", &uri],
    );

    // The monitor listens on the inherited QMP socket.
    let mut client = qmp::client::Client::connect_unix(qmp).await.unwrap();
    common::ok(&mut client, "qmp_capabilities", json!({})).await;
    let exports = common::ok(&mut client, "query-block-exports", json!({})).await;
    assert_eq!(exports[0]["id"], "disk0");
    common::ok(&mut client, "quit", json!({})).await;
    assert_eq!(
        next_notification(&notify),
        ["STOPPING=1", "STATUS=Stopping"]
    );
    let status = service.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// Starts storaged with a `NOTIFY_SOCKET` it listens on; the startup holds
/// at a monitor with `wait=on` between two exports, so that the script can
/// check that no `READY=1` came while the second export did not exist yet,
/// then that the second export answers as soon as `READY=1` arrives.
const NOTIFY_LISTENER: &str = r#"
import json, os, socket, subprocess, sys, time
exe, d = sys.argv[1], sys.argv[2]
note = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
note.bind(d + "/notify.sock")
env = dict(os.environ, NOTIFY_SOCKET=d + "/notify.sock")
daemon = subprocess.Popen([exe,
    "--blockdev", "null-co,node-name=n0,size=1048576",
    "--blockdev", "null-co,node-name=n1,size=2097152",
    "--nbd-server", "addr.type=unix,addr.path=" + d + "/nbd.sock",
    "--export", "nbd,id=e0,name=e0,node-name=n0",
    "--chardev", "socket,id=m,path=" + d + "/qmp.sock,server=on,wait=on",
    "--monitor", "m",
    "--export", "nbd,id=e1,name=e1,node-name=n1"], env=env)
result = {"pid": daemon.pid}
try:
    deadline = time.monotonic() + 20
    while not os.path.exists(d + "/qmp.sock"):
        assert daemon.poll() is None, "storaged exited"
        assert time.monotonic() < deadline, "the monitor never listened"
        time.sleep(0.02)
    # The monitor's socket exists: startup waits for its first client,
    # and e1 does not exist yet.
    note.setblocking(False)
    try:
        result["early"] = note.recv(4096).decode()
    except BlockingIOError:
        result["early"] = None
    qmp = socket.socket(socket.AF_UNIX)
    while True:
        try:
            qmp.connect(d + "/qmp.sock")
            break
        except OSError:
            # Bound, not yet listening.
            assert time.monotonic() < deadline, "the monitor never listened"
            time.sleep(0.02)
    monitor = qmp.makefile("rw")
    result["greeting"] = "QMP" in json.loads(monitor.readline())
    note.setblocking(True)
    note.settimeout(20)
    result["ready"] = note.recv(4096).decode().split("\n")
    size = subprocess.run(["nbdinfo", "--size", "nbd+unix:///e1?socket=" + d + "/nbd.sock"],
                          capture_output=True, text=True)
    result["e1"] = size.stdout.strip() or size.stderr
    for command in ("qmp_capabilities", "quit"):
        monitor.write(json.dumps({"execute": command}) + "\n")
        monitor.flush()
        reply = json.loads(monitor.readline())
        while "event" in reply:  # quit announces the exports it closes first
            reply = json.loads(monitor.readline())
        result[command] = reply
    result["stopping"] = note.recv(4096).decode().split("\n")
    result["status"] = daemon.wait(timeout=20)
finally:
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
print(json.dumps(result))
"#;

#[test]
fn ready_is_notified_only_once_every_export_listens() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .args(["-c", NOTIFY_LISTENER, env!("CARGO_BIN_EXE_storaged")])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["early"], Value::Null, "READY=1 before startup ended");
    assert_eq!(result["greeting"], true);
    let pid = result["pid"].as_u64().unwrap();
    assert_eq!(
        result["ready"],
        json!([
            "READY=1",
            "STATUS=Serving 2 block exports",
            format!("MAINPID={pid}")
        ])
    );
    assert_eq!(
        result["e1"], "2097152",
        "the last export answers at READY=1"
    );
    assert_eq!(result["quit"], json!({"return": {}}));
    assert_eq!(result["stopping"], json!(["STOPPING=1", "STATUS=Stopping"]));
    assert_eq!(result["status"], 0);
}

#[test]
fn socket_names_are_checked() {
    // Without socket activation a name is an unparsable number, as in QSD.
    let out = common::run(&["--nbd-server", "addr.type=fd,addr.str=nbd"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "storaged: --nbd-server addr.type=fd,addr.str=nbd: Unable to parse FD number nbd"
    );
    let out = common::run(&["--chardev", "socket,id=m,fd=qmp,server=on,wait=off"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "storaged: --chardev socket,id=m,fd=qmp,server=on,wait=off: Unable to parse FD number qmp"
    );
}

/// Passes two listening TCP sockets the way systemd does (descriptors 3
/// and 4, `LISTEN_PID` set by the shell that becomes storaged), naming
/// only the first; the NBD server takes it by name and the monitor the
/// second by number. Prints what clients got through each.
const TCP_SOCKETS: &str = r#"
import json, os, socket, subprocess, sys, time
exe = sys.argv[1]
nbd = socket.socket(); nbd.bind(("127.0.0.1", 0)); nbd.listen(16)
qmp = socket.socket(); qmp.bind(("127.0.0.1", 0)); qmp.listen(16)
ports = (nbd.getsockname()[1], qmp.getsockname()[1])
def place():
    # Copies first: the sockets may be descriptors 3 and 4 already.
    copies = os.dup(nbd.fileno()), os.dup(qmp.fileno())
    os.dup2(copies[0], 3)
    os.dup2(copies[1], 4)
env = dict(os.environ, LISTEN_FDS="2", LISTEN_FDNAMES="nbd")
daemon = subprocess.Popen(["sh", "-c", 'export LISTEN_PID=$$; exec "$0" "$@"', exe,
    "--blockdev", "null-co,node-name=n0,size=1048576",
    "--nbd-server", "addr.type=fd,addr.str=nbd",
    "--export", "nbd,id=e0,name=e0,node-name=n0",
    "--chardev", "socket,id=m,fd=4,server=on,wait=on",
    "--monitor", "m"], env=env, preexec_fn=place, close_fds=False)
nbd.close(); qmp.close()
result = {}
try:
    client = socket.create_connection(("127.0.0.1", ports[1]), timeout=20)
    monitor = client.makefile("rw")
    result["greeting"] = "QMP" in json.loads(monitor.readline())
    size = subprocess.run(["nbdinfo", "--size", "nbd://127.0.0.1:%d/e0" % ports[0]],
                          capture_output=True, text=True, timeout=20)
    result["size"] = size.stdout.strip() or size.stderr
    for command in ("qmp_capabilities", "quit"):
        monitor.write(json.dumps({"execute": command}) + "\n")
        monitor.flush()
        reply = json.loads(monitor.readline())
        while "event" in reply:  # quit announces the exports it closes first
            reply = json.loads(monitor.readline())
        result[command] = reply
    result["status"] = daemon.wait(timeout=20)
finally:
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
print(json.dumps(result))
"#;

#[test]
fn tcp_sockets_are_taken_by_name_and_by_number() {
    let out = Command::new("python3")
        .args(["-c", TCP_SOCKETS, env!("CARGO_BIN_EXE_storaged")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result,
        json!({
            "greeting": true,
            "size": "1048576",
            "qmp_capabilities": {"return": {}},
            "quit": {"return": {}},
            "status": 0
        })
    );
}

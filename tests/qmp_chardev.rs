//! The character device commands against qemu-storage-daemon: the same
//! chardevs (the test's monitor socket and a listening socket no monitor
//! uses) are listed alike, paths aside; the backends storaged lists are
//! among QSD's; chardevs added at run time (ring buffers, files, sockets
//! with clients coming and going, pipes, stdio) and the ring buffer
//! commands answer as QSD's.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{ok, storaged, transcript, TestDaemon};
use serde_json::{json, Value};

/// `query-chardev` of a daemon with a spare chardev, with its directory
/// written as `DIR`.
async fn chardevs(program: Command) -> (Value, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = TestDaemon::spawn(program, dir, |dir| {
        vec![
            "--chardev".into(),
            format!(
                "socket,id=spare,path={},server=on,wait=off",
                dir.join("spare.sock").display()
            ),
        ]
    });
    let mut client = daemon.connect().await;
    let rows = ok(&mut client, "query-chardev", json!({})).await;
    let mut rows: Vec<Value> = serde_json::from_str(
        &rows
            .to_string()
            .replace(&daemon.dir.path().display().to_string(), "DIR"),
    )
    .expect("JSON");
    rows.sort_by(|a, b| a["label"].as_str().cmp(&b["label"].as_str()));
    let backends = ok(&mut client, "query-chardev-backends", json!({})).await;
    (Value::Array(rows), backends)
}

#[tokio::test]
async fn chardevs_are_listed_as_qemu_storage_daemon_lists_them() {
    let (qsd_rows, qsd_backends) = chardevs(Command::new("qemu-storage-daemon")).await;
    let (rows, backends) = chardevs(storaged()).await;
    assert_eq!(rows, qsd_rows);
    assert_eq!(
        rows,
        json!([
            {"label": "qmp0", "filename": "unix:DIR/qmp.sock,server=on", "frontend-open": true},
            {"label": "spare", "filename": "disconnected:unix:DIR/spare.sock,server=on", "frontend-open": false},
        ])
    );
    let names = |list: &Value| -> BTreeSet<String> {
        list.as_array()
            .expect("a list")
            .iter()
            .map(|b| b["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let offered = [
        "socket", "stdio", "ringbuf", "memory", "null", "file", "pipe",
    ];
    assert_eq!(
        names(&backends),
        offered.iter().map(|n| n.to_string()).collect()
    );
    assert!(names(&backends).is_subset(&names(&qsd_backends)));
}

/// Chardevs added at run time (ringbuf, memory, null, file) and the ring
/// buffer commands: every reply equal to QSD's.
#[tokio::test]
async fn chardevs_added_at_run_time_answer_as_qemu_storage_daemon() {
    let add = |id: &str, kind: &str, data: Value| json!({"execute": "chardev-add", "arguments": {"id": id, "backend": {"type": kind, "data": data}}});
    let call =
        |command: &str, arguments: Value| json!({"execute": command, "arguments": arguments});
    let session = [
        add("r0", "ringbuf", json!({"size": 8})),
        add("r0", "null", json!({})),
        add("r1", "ringbuf", json!({"size": 6})),
        add("n0", "null", json!({})),
        add("f0", "file", json!({"out": "@DIR@/out.txt"})),
        add("m0", "memory", json!({})),
        call("query-chardev", json!({})),
        call(
            "ringbuf-write",
            json!({"device": "r0", "data": "hello world"}),
        ),
        call("ringbuf-read", json!({"device": "r0", "size": 4})),
        call("ringbuf-read", json!({"device": "r0", "size": 100})),
        call(
            "ringbuf-write",
            json!({"device": "r0", "data": "aGk=", "format": "base64"}),
        ),
        call(
            "ringbuf-read",
            json!({"device": "r0", "size": 10, "format": "base64"}),
        ),
        call(
            "ringbuf-write",
            json!({"device": "r0", "data": "!!!", "format": "base64"}),
        ),
        call("ringbuf-read", json!({"device": "r0", "size": -1})),
        call("ringbuf-write", json!({"device": "n0", "data": "x"})),
        call("ringbuf-read", json!({"device": "nope", "size": 1})),
        call("ringbuf-write", json!({"device": "qmp0", "data": "x"})),
        call("chardev-send-break", json!({"id": "r0"})),
        call("chardev-send-break", json!({"id": "nope"})),
        call(
            "chardev-change",
            json!({"id": "r0", "backend": {"type": "null", "data": {}}}),
        ),
        call(
            "chardev-change",
            json!({"id": "qmp0", "backend": {"type": "null", "data": {}}}),
        ),
        call(
            "chardev-change",
            json!({"id": "nope", "backend": {"type": "null", "data": {}}}),
        ),
        call("chardev-remove", json!({"id": "qmp0"})),
        call("chardev-remove", json!({"id": "r0"})),
        call("chardev-remove", json!({"id": "r0"})),
        call("query-chardev", json!({})),
    ];
    let qsd = transcript(Command::new("qemu-storage-daemon"), &session).await;
    let ours = transcript(storaged(), &session).await;
    for ((request, theirs), mine) in session.iter().zip(&qsd).zip(&ours) {
        assert_eq!(mine, theirs, "{request}");
    }
}

/// A `--chardev` socket no monitor uses listens as QSD's: a client is
/// shown connected, then gone; removing the chardev removes its file. A
/// monitor's socket with no client is shown disconnected.
#[tokio::test]
async fn a_command_line_socket_without_monitor_listens_as_qemu_storage_daemons() {
    let session = |program: Command| async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let daemon = TestDaemon::spawn(program, dir, |dir| {
            vec![
                "--chardev".into(),
                format!(
                    "socket,id=spare,path={},server=on,wait=off",
                    dir.join("spare.sock").display()
                ),
                // A monitor no client uses yet.
                "--chardev".into(),
                format!(
                    "socket,id=idle,path={},server=on,wait=off",
                    dir.join("idle.sock").display()
                ),
                "--monitor".into(),
                "idle".into(),
            ]
        });
        let mut client = daemon.connect().await;
        let dir = daemon.dir.path().display().to_string();
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(100));
        let mut outcomes = Vec::new();
        let peer = tokio::net::UnixStream::connect(daemon.path("spare.sock")).await;
        outcomes.push(json!({"connected": peer.is_ok()}));
        settle().await;
        outcomes.push(common::reply(&mut client, "query-chardev", json!({})).await);
        drop(peer);
        settle().await;
        outcomes.push(common::reply(&mut client, "query-chardev", json!({})).await);
        outcomes.push(common::reply(&mut client, "chardev-remove", json!({"id": "spare"})).await);
        outcomes.push(json!({"exists": daemon.path("spare.sock").exists()}));
        for outcome in &mut outcomes {
            if let Some(Value::Array(rows)) = outcome.get_mut("return") {
                rows.sort_by(|a, b| a["label"].as_str().cmp(&b["label"].as_str()));
            }
            *outcome =
                serde_json::from_str(&outcome.to_string().replace(&dir, "DIR")).expect("JSON");
        }
        outcomes
    };
    let qsd = session(Command::new("qemu-storage-daemon")).await;
    let ours = session(storaged()).await;
    assert_eq!(ours, qsd);
    assert_eq!(
        ours[1]["return"][0]["filename"],
        "disconnected:unix:DIR/idle.sock,server=on"
    );
    assert_eq!(
        ours[1]["return"][2]["filename"],
        "unix:DIR/spare.sock,server=on"
    );
    assert_eq!(
        ours[2]["return"][2]["filename"],
        "disconnected:unix:DIR/spare.sock,server=on"
    );
}

/// `--chardev` of the backends `chardev-add` creates (ring buffers, null,
/// a file, a pipe) gives the chardevs QSD gives: listed, written and
/// read, removed alike.
#[tokio::test]
async fn command_line_ring_buffers_files_and_pipes_answer_as_qemu_storage_daemon() {
    let session = |program: Command| async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = std::ffi::CString::new(dir.path().join("fifo").display().to_string()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let daemon = TestDaemon::spawn(program, dir, |dir| {
            let path = |name: &str| dir.join(name).display().to_string();
            [
                "ringbuf,id=r0,size=16".to_owned(),
                "memory,id=m0".to_owned(),
                "null,id=n0".to_owned(),
                format!("file,id=f0,path={}", path("out.txt")),
                format!("pipe,id=p0,path={}", path("fifo")),
            ]
            .into_iter()
            .flat_map(|chardev| ["--chardev".to_owned(), chardev])
            .collect()
        });
        let mut client = daemon.connect().await;
        let dir = daemon.dir.path().display().to_string();
        let requests = [
            ("query-chardev", json!({})),
            (
                "ringbuf-write",
                json!({"device": "r0", "data": "hello, world, again"}),
            ),
            ("ringbuf-read", json!({"device": "r0", "size": 100})),
            ("ringbuf-write", json!({"device": "p0", "data": "x"})),
            ("chardev-remove", json!({"id": "f0"})),
            (
                "chardev-change",
                json!({"id": "n0", "backend": {"type": "ringbuf", "data": {}}}),
            ),
            ("query-chardev", json!({})),
        ];
        let mut outcomes = vec![json!({"exists": daemon.path("out.txt").exists()})];
        for (command, arguments) in requests {
            let mut reply = common::reply(&mut client, command, arguments).await;
            if let Some(Value::Array(rows)) = reply.get_mut("return") {
                rows.sort_by(|a, b| a["label"].as_str().cmp(&b["label"].as_str()));
            }
            outcomes
                .push(serde_json::from_str(&reply.to_string().replace(&dir, "DIR")).expect("JSON"));
        }
        outcomes
    };
    let qsd = session(Command::new("qemu-storage-daemon")).await;
    let ours = session(storaged()).await;
    assert_eq!(ours, qsd);
    assert_eq!(ours[3], json!({"return": "lo, world, again"}));
}

/// A step of a session with socket, pipe and stdio chardevs: a request,
/// or something done beside the monitor whose outcome joins the replies.
enum Step {
    Request(Value),
    /// A client connects to a socket file (kept until `Hangup`).
    Connect(&'static str),
    Hangup,
    /// Whether a file of the daemon's directory exists.
    Exists(&'static str),
}

/// The outcomes of `steps` on a daemon started by `program`, with FIFOs
/// `fifo`, `duo.in` and `duo.out` in its directory: replies with the
/// directory written `DIR` and TCP peers' ports `PEER`, rows by label.
async fn socket_session(program: Command, steps: &[Step], port: u16) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    for fifo in ["fifo", "duo.in", "duo.out"] {
        let path = std::ffi::CString::new(dir.path().join(fifo).display().to_string()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    }
    let daemon = TestDaemon::spawn(program, dir, |_| Vec::new());
    let dir = daemon.dir.path().display().to_string();
    let mut client = daemon.connect().await;
    let mut peer = None;
    let mut outcomes = Vec::new();
    for step in steps {
        let outcome = match step {
            Step::Request(request) => {
                let request: Value =
                    serde_json::from_str(&request.to_string().replace("@DIR@", &dir))
                        .expect("JSON");
                // Let connections made or closed settle first.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                common::labelled_reply(&mut client, &request).await
            }
            Step::Connect(name) => {
                let stream = tokio::net::UnixStream::connect(daemon.path(name)).await;
                let connected = stream.is_ok();
                peer = stream.ok();
                json!({"connected": connected})
            }
            Step::Hangup => json!({"hung up": peer.take().is_some()}),
            Step::Exists(name) => json!({"exists": daemon.path(name).exists()}),
        };
        let text = outcome.to_string().replace(&dir, "DIR");
        let text = hide_peer_ports(&text, port);
        outcomes.push(serde_json::from_str(&text).expect("JSON"));
    }
    outcomes
}

/// `text` with every `127.0.0.1:N` but the listener's port written
/// `127.0.0.1:PEER`.
fn hide_peer_ports(text: &str, port: u16) -> String {
    let marker = "127.0.0.1:";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        out.push_str(&rest[..at + marker.len()]);
        rest = &rest[at + marker.len()..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let number = &rest[..digits];
        if !number.is_empty() && number != port.to_string() {
            out.push_str("PEER");
        } else {
            out.push_str(number);
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Socket chardevs (listening and connecting, Unix and TCP), pipes and
/// stdio added, changed and removed at run time, with clients coming and
/// going: every reply, `query-chardev` row and socket file as QSD's.
#[tokio::test]
async fn socket_pipe_and_stdio_chardevs_answer_as_qemu_storage_daemon() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let add = |id: &str, kind: &str, data: Value| {
        Step::Request(
            json!({"execute": "chardev-add", "arguments": {"id": id, "backend": {"type": kind, "data": data}}}),
        )
    };
    let unix = |path: &str| json!({"type": "unix", "data": {"path": path}});
    let inet = |port: String| json!({"type": "inet", "data": {"host": "127.0.0.1", "port": port}});
    let call = |command: &str, arguments: Value| {
        Step::Request(json!({"execute": command, "arguments": arguments}))
    };
    let query = || call("query-chardev", json!({}));
    let qom_get = |id: &str, property: &str| {
        call(
            "qom-get",
            json!({"path": format!("/chardevs/{id}"), "property": property}),
        )
    };
    let steps = [
        add(
            "s1",
            "socket",
            json!({"addr": unix("@DIR@/s1.sock"), "server": true, "wait": false}),
        ),
        add("s2", "socket", json!({"addr": unix("@DIR@/s2.sock")})),
        add(
            "c1",
            "socket",
            json!({"addr": unix("@DIR@/s1.sock"), "server": false}),
        ),
        add(
            "c0",
            "socket",
            json!({"addr": unix("@DIR@/none.sock"), "server": false}),
        ),
        add(
            "c2",
            "socket",
            json!({"addr": unix("@DIR@/none.sock"), "server": false, "reconnect-ms": 100}),
        ),
        add(
            "c3",
            "socket",
            json!({"addr": unix("@DIR@/none.sock"), "server": false, "reconnect": 1, "reconnect-ms": 100}),
        ),
        add(
            "x0",
            "socket",
            json!({"addr": unix("@DIR@/x0.sock"), "reconnect": 1}),
        ),
        add(
            "x1",
            "socket",
            json!({"addr": unix("/nonexistent/x1.sock")}),
        ),
        add("x2", "socket", json!({"addr": inet("notaport".into())})),
        add(
            "x3",
            "socket",
            json!({"addr": {"type": "fd", "data": {"str": "nosuch"}}}),
        ),
        add(
            "x4",
            "socket",
            json!({"addr": inet("1".into()), "server": false}),
        ),
        add("p0", "pipe", json!({"device": "@DIR@/nopipe"})),
        add("p1", "pipe", json!({"device": "@DIR@/fifo"})),
        add("p2", "pipe", json!({"device": "@DIR@/duo"})),
        add("st", "stdio", json!({})),
        add("st2", "stdio", json!({"signal": false})),
        add("s1", "null", json!({})),
        query(),
        qom_get("s1", "connected"),
        qom_get("c1", "connected"),
        qom_get("s2", "connected"),
        qom_get("qmp0", "connected"),
        qom_get("s1", "addr"),
        qom_get("c1", "addr"),
        qom_get("qmp0", "addr"),
        call(
            "qom-set",
            json!({"path": "/chardevs/s1", "property": "connected", "value": false}),
        ),
        call(
            "qom-get",
            json!({"path": "/chardevs/p1", "property": "connected"}),
        ),
        Step::Connect("s2.sock"),
        query(),
        Step::Hangup,
        query(),
        Step::Exists("s1.sock"),
        call("chardev-remove", json!({"id": "s1"})),
        Step::Exists("s1.sock"),
        query(),
        call("chardev-remove", json!({"id": "st"})),
        add("st3", "stdio", json!({})),
        call("chardev-remove", json!({"id": "p1"})),
        add("r0", "ringbuf", json!({})),
        call(
            "chardev-change",
            json!({"id": "r0", "backend": {"type": "socket", "data": {"addr": unix("@DIR@/r0.sock")}}}),
        ),
        call(
            "chardev-change",
            json!({"id": "s2", "backend": {"type": "null", "data": {}}}),
        ),
        Step::Exists("s2.sock"),
        Step::Exists("r0.sock"),
        add(
            "t0",
            "socket",
            json!({"addr": inet(port.to_string()), "wait": false}),
        ),
        add(
            "t1",
            "socket",
            json!({"addr": inet(port.to_string()), "server": false}),
        ),
        query(),
        call("qom-list", json!({"path": "/chardevs/t0"})),
        qom_get("t0", "addr"),
        qom_get("t0", "connected"),
        call(
            "qom-get",
            json!({"path": "/chardevs/p2", "property": "type"}),
        ),
        call("chardev-remove", json!({"id": "t0"})),
        call("chardev-remove", json!({"id": "t1"})),
        query(),
        // Last: QEMU also drops a chardev whose new backend fails.
        call(
            "chardev-change",
            json!({"id": "r0", "backend": {"type": "ringbuf", "data": {"size": 3}}}),
        ),
    ];
    let qsd = socket_session(Command::new("qemu-storage-daemon"), &steps, port).await;
    let ours = socket_session(storaged(), &steps, port).await;
    for ((step, theirs), mine) in steps.iter().zip(&qsd).zip(&ours) {
        let what = match step {
            Step::Request(request) => request.to_string(),
            Step::Connect(name) | Step::Exists(name) => (*name).to_owned(),
            Step::Hangup => "hang up".to_owned(),
        };
        assert_eq!(mine, theirs, "{what}");
    }
}

/// The nodes a client-mode monitor lists when its requests reach the
/// daemon while startup still waits: `program` connects to the test's
/// listener at the first `--chardev`, then a `wait=on` socket holds its
/// startup until the test connects there, after sending its requests; the
/// `--blockdev` comes last.
async fn nodes_seen_during_startup(mut program: Command) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let harness_path = dir.path().join("harness.sock");
    let gate_path = dir.path().join("gate.sock");
    let harness = tokio::net::UnixListener::bind(&harness_path).expect("listen");
    program
        .arg("--chardev")
        .arg(format!("socket,id=harness,path={}", harness_path.display()))
        .args(["--monitor", "chardev=harness", "--chardev"])
        .arg(format!(
            "socket,id=gate,path={},server=on,wait=on",
            gate_path.display()
        ))
        .args(["--monitor", "chardev=gate"])
        .args(["--blockdev", "null-co,node-name=n0"]);
    let _daemon = common::KillOnDrop(program.spawn().expect("start the daemon"));
    let (stream, _) = harness.accept().await.expect("the daemon connects");
    let mut client = qmp::client::Client::on_unix_stream(stream)
        .await
        .expect("greeting");
    let answers = tokio::spawn(async move {
        client.negotiate().await.expect("negotiate");
        ok(
            &mut client,
            "query-named-block-nodes",
            json!({"flat": true}),
        )
        .await
    });
    // The requests are on their way; now let startup go on.
    let gate = loop {
        match tokio::net::UnixStream::connect(&gate_path).await {
            Ok(gate) => break gate,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let nodes = answers.await.expect("the requests are answered");
    drop(gate);
    Value::Array(
        nodes
            .as_array()
            .expect("a list")
            .iter()
            .map(|node| node["node-name"].clone())
            .collect(),
    )
}

/// QSD answers nothing before its whole command line is applied, so a
/// monitor that connected early sees every node the command line adds.
#[tokio::test]
async fn a_client_mode_monitor_is_answered_once_startup_is_done() {
    let qsd = nodes_seen_during_startup(Command::new("qemu-storage-daemon")).await;
    assert_eq!(qsd, json!(["n0"]));
    assert_eq!(nodes_seen_during_startup(storaged()).await, qsd);
}

//! The command line: `--help`, `--version`, getopt's rules and messages,
//! option values in keyval and JSON form, command-line order, and errors
//! that end the process with status 1 before anything is served. Where
//! QSD is installed the error cases are run against it too and the
//! messages compared.

mod common;

use std::process::Command;

use common::{ok, run, sparse_file, TestDaemon};
use serde_json::{json, Value};

/// Bad command lines and the message (after `storaged: `) they produce.
/// `qemu-storage-daemon` prints the same after its own name.
const BAD_COMMAND_LINES: &[(&[&str], &str)] = &[
    (&["--bogus"], "unrecognized option '--bogus'"),
    (&["--bogus=1"], "unrecognized option '--bogus=1'"),
    (&["--blockdev"], "option '--blockdev' requires an argument"),
    (&["--help=x"], "option '--help' doesn't allow an argument"),
    (&["-x"], "invalid option -- 'x'"),
    (&["-T"], "option requires an argument -- 'T'"),
    (&["foo"], "foo: Unexpected argument"),
    (
        &["--blockdev", "driver=null-co,node-name=a,foo=bar"],
        "--blockdev driver=null-co,node-name=a,foo=bar: Parameter 'foo' is unexpected",
    ),
    (
        &["--blockdev=driver=null-co,node-name=a,foo=bar"],
        "--blockdev=driver=null-co,node-name=a,foo=bar: Parameter 'foo' is unexpected",
    ),
    (
        &["--blockdev", "driver=bogus"],
        "--blockdev driver=bogus: Parameter 'driver' does not accept value 'bogus'",
    ),
    (
        &["--blockdev", "null-co,node-name=a,size=abc"],
        "--blockdev null-co,node-name=a,size=abc: Parameter 'size' expects integer",
    ),
    (
        &["--blockdev", r#"{"driver":"null-co","node-name":"a","size":"x"}"#],
        r#"--blockdev {"driver":"null-co","node-name":"a","size":"x"}: Invalid parameter type for 'size', expected: integer"#,
    ),
    (
        &["--blockdev", r#"{"driver":"null-co","#],
        r#"--blockdev {"driver":"null-co",: JSON parse error, premature EOI"#,
    ),
    (
        &["--blockdev", "null-co,node-name=a", "--blockdev", "null-co,node-name=a"],
        "--blockdev null-co,node-name=a: Duplicate nodes with node-name='a'",
    ),
    (
        &["--blockdev", "raw,node-name=r,file=f", "--blockdev", "null-co,node-name=f"],
        "--blockdev raw,node-name=r,file=f: Cannot find device='f' nor node-name='f'",
    ),
    (
        &["--blockdev", "file,node-name=f,filename=/nonexistent/x"],
        "--blockdev file,node-name=f,filename=/nonexistent/x: Could not open '/nonexistent/x': No such file or directory",
    ),
    (
        &["--blockdev", "null-co,node-name=a,read-only=maybe"],
        "--blockdev null-co,node-name=a,read-only=maybe: Parameter 'read-only' expects 'on' or 'off'",
    ),
    (
        &["--blockdev", "null-co,node-name=a,size=1G"],
        "--blockdev null-co,node-name=a,size=1G: Parameter 'size' expects integer",
    ),
    (
        &["--blockdev", "null-co,node-name=a,cache.direct=on,cache=x"],
        "--blockdev null-co,node-name=a,cache.direct=on,cache=x: Parameters 'cache.*' used inconsistently",
    ),
    (
        &["--blockdev", "null-co,node-name=a,foo.bar=1"],
        "--blockdev null-co,node-name=a,foo.bar=1: Parameter 'foo' is unexpected",
    ),
    (
        &["--blockdev", "null-co,,node-name=a"],
        "--blockdev null-co,,node-name=a: Invalid parameter ''",
    ),
    (
        &["--blockdev", "null-co,node-name=a,=x"],
        "--blockdev null-co,node-name=a,=x: Invalid parameter ''",
    ),
    (
        &["--object", "throttle-group,id=t,limits.iops-total=1k"],
        "--object throttle-group,id=t,limits.iops-total=1k: Parameter 'limits.iops-total' expects integer",
    ),
    (
        &["--object", "secret,id=s,data=a,,b,keyid="],
        "--object secret,id=s,data=a,,b,keyid=: No secret with id ''",
    ),
    (&["--object", "secret"], "--object secret: Parameter 'id' is missing"),
    (
        &["--object", "secret,id=s0"],
        "--object secret,id=s0: Either 'file' or 'data' must be provided",
    ),
    (
        &["--object", "secret,id=s0,data=x", "--object", "secret,id=s0,data=y"],
        "--object secret,id=s0,data=y: attempt to add duplicate property 's0' to object (type 'container')",
    ),
    (
        &["--object", "bogus,id=x"],
        "--object bogus,id=x: Parameter 'qom-type' does not accept value 'bogus'",
    ),
    (
        &["--object", "throttle-group,id=tg,limits.iops-total=100,limits.iops-read=5"],
        "--object throttle-group,id=tg,limits.iops-total=100,limits.iops-read=5: bps/iops/max total values and read/write values cannot be used at the same time",
    ),
    (&["--monitor", "bogus"], "--monitor bogus: chardev \"bogus\" not found"),
    (
        &["--monitor", "chardev=m,bogus=1"],
        "--monitor chardev=m,bogus=1: Parameter 'bogus' is unexpected",
    ),
    (&["--monitor", "id=x"], "--monitor id=x: Parameter 'chardev' is missing"),
    (
        &["--chardev", "socket,path=/tmp/x.sock,server=on,wait=off"],
        "--chardev socket,path=/tmp/x.sock,server=on,wait=off: chardev: no id specified",
    ),
    (
        &["--chardev", "bogus,id=m"],
        "--chardev bogus,id=m: 'bogus' is not a valid char driver name",
    ),
    (
        &["--chardev", "socket,id=m,path=/tmp/x.sock,server=on,wait=off,foo=bar"],
        "--chardev socket,id=m,path=/tmp/x.sock,server=on,wait=off,foo=bar: Invalid parameter 'foo'",
    ),
    (
        &["--chardev", "socket,id=m,host=127.0.0.1,server=on,wait=off"],
        "--chardev socket,id=m,host=127.0.0.1,server=on,wait=off: chardev: socket: no port given",
    ),
    (
        &["--chardev", "socket,id=m,path=/nonexistent/m.sock,server=on,wait=off"],
        "--chardev socket,id=m,path=/nonexistent/m.sock,server=on,wait=off: Failed to bind socket to /nonexistent/m.sock: No such file or directory",
    ),
    (
        &["--chardev", "socket,id=m,path=/nonexistent/m.sock"],
        "--chardev socket,id=m,path=/nonexistent/m.sock: Failed to connect to '/nonexistent/m.sock': No such file or directory",
    ),
    (
        &["--chardev", "ringbuf,id=r,size=3"],
        "--chardev ringbuf,id=r,size=3: size of ringbuf chardev must be power of two",
    ),
    (
        &["--chardev", "file,id=f"],
        "--chardev file,id=f: chardev: file: no filename given",
    ),
    (
        &["--chardev", "pipe,id=p,path=/nonexistent/p"],
        "--chardev pipe,id=p,path=/nonexistent/p: Could not open '/nonexistent/p': No such file or directory",
    ),
    (
        &["--chardev", "stdio,id=m", "--daemonize"],
        "--chardev stdio,id=m: cannot use stdio with -daemonize",
    ),
    (
        &["--pidfile", "/nonexistent/x.pid"],
        "cannot create PID file: Could not create '/nonexistent/x.pid': No such file or directory",
    ),
];

#[test]
fn bad_command_lines_exit_1_naming_option_and_key() {
    for (args, message) in BAD_COMMAND_LINES {
        let output = run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            format!("storaged: {message}\n"),
            "{args:?}"
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn bad_command_lines_read_as_qemu_storage_daemon_reads_them() {
    for (args, _) in BAD_COMMAND_LINES {
        let qsd = Command::new("qemu-storage-daemon")
            .args(*args)
            .output()
            .expect("qemu-storage-daemon is installed (.ci/run installs it)");
        let ours = run(args);
        assert_eq!(ours.status.code(), qsd.status.code(), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&ours.stderr),
            String::from_utf8_lossy(&qsd.stderr).replace("qemu-storage-daemon:", "storaged:"),
            "{args:?}"
        );
    }
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    for flag in ["--help", "-h", "--hel", "-hV"] {
        let output = run(&[flag]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.starts_with("Usage: storaged [options]\n"),
            "{flag}: {text}"
        );
        for option in [
            "--blockdev",
            "--chardev",
            "--daemonize",
            "--export",
            "--monitor",
            "--nbd-server",
            "--object",
            "--pidfile",
            "--trace",
            "--version",
        ] {
            assert!(text.contains(option), "{flag} does not mention {option}");
        }
        assert!(output.stderr.is_empty());
    }
    for flag in ["--version", "-V", "-Vh"] {
        let output = run(&[flag]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!(
                "storaged version {} (qemu-storage-daemon 10.0.2 compatible)\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
    // Help is handled before any value is read, as in QSD.
    let output = run(&["--blockdev", "driver=nope", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    // But an earlier syntax error wins.
    let output = run(&["--bogus", "--help"]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_failed_start_serves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("qmp.sock");
    let pidfile = dir.path().join("pid");
    let nbd_socket = dir.path().join("nbd.sock");
    let chardev = format!("socket,id=m,path={},server=on,wait=off", socket.display());
    let nbd_server = format!("addr.type=unix,addr.path={}", nbd_socket.display());
    let output = run(&[
        "--chardev",
        &chardev,
        "--monitor",
        "m",
        "--nbd-server",
        &nbd_server,
        "--pidfile",
        pidfile.to_str().expect("utf-8"),
        "--blockdev",
        "null-co,node-name=n,bogus=1",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "storaged: --blockdev null-co,node-name=n,bogus=1: Parameter 'bogus' is unexpected\n"
    );
    assert!(!socket.exists(), "the monitor socket is removed");
    assert!(!nbd_socket.exists(), "the NBD server's socket is removed");
    assert!(
        !pidfile.exists(),
        "no pid file for a daemon that never got ready"
    );
}

/// The names of the nodes `query-named-block-nodes` lists.
fn node_names(nodes: &Value) -> Vec<String> {
    nodes
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| entry["node-name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn keyval_and_json_forms_on_the_real_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A file name with a comma, written `,,` in keyval.
    let comma_image = dir.path().join("a,b.img");
    sparse_file(&comma_image, 1024 * 1024);
    let plain_image = dir.path().join("plain.img");
    sparse_file(&plain_image, 2 * 1024 * 1024);
    let escaped = comma_image.display().to_string().replace(',', ",,");
    let plain = plain_image.display().to_string();
    let daemon = TestDaemon::start_in(dir, |_| {
        vec![
            "--object".into(),
            "secret,id=sec0,data=x".into(),
            "--object".into(),
            "throttle-group,id=tg0,limits.iops-total=100".into(),
            "--blockdev".into(),
            format!("driver=file,node-name=comma,filename={escaped}"),
            "--blockdev".into(),
            format!("raw,node-name=dotted,file.driver=file,file.filename={plain},file.node-name=dotted-file"),
            "--blockdev=null-co,node-name=implied,size=4096,read-only=on".into(),
            "--blockdev".into(),
            r#"{"driver": "null-co", "node-name": "json", "read-zeroes": true}"#.into(),
        ]
    });
    let mut client = daemon.connect().await;
    let nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
    assert_eq!(
        node_names(&nodes),
        ["json", "implied", "dotted", "dotted-file", "comma"]
    );
    let by_name = |name: &str| {
        nodes
            .as_array()
            .and_then(|list| list.iter().find(|entry| entry["node-name"] == name))
            .cloned()
            .expect("node")
    };
    assert_eq!(by_name("comma")["file"], comma_image.display().to_string());
    assert_eq!(by_name("dotted")["drv"], "raw");
    assert_eq!(by_name("dotted")["image"]["virtual-size"], 2 * 1024 * 1024);
    assert_eq!(by_name("implied")["ro"], true);
    assert_eq!(by_name("implied")["image"]["virtual-size"], 4096);
    // The objects exist: deleting them works.
    ok(&mut client, "object-del", json!({"id": "sec0"})).await;
    ok(&mut client, "object-del", json!({"id": "tg0"})).await;
}

/// `-T help` lists QEMU-named trace points; `-T` patterns turn them on,
/// and each event is one `name message` line in the `file=`.
#[tokio::test]
async fn trace_points_have_qemu_names_and_lines() {
    let help = run(&["-T", "help"]);
    assert!(help.status.success());
    let names = String::from_utf8_lossy(&help.stdout).into_owned();
    for name in [
        "nbd_negotiate_begin",
        "blk_co_preadv",
        "job_state_transition",
    ] {
        assert!(names.lines().any(|line| line == name), "{names}");
    }

    let log = tempfile::NamedTempFile::new().expect("temp file");
    let log_path = log.path().to_owned();
    let daemon = TestDaemon::start_in(tempfile::tempdir().expect("temp dir"), |dir| {
        vec![
            "-T".into(),
            "nbd_negotiate_begin".into(),
            "-T".into(),
            format!("enable=job_*,file={}", log_path.display()),
            "-T".into(),
            "handle_qmp_command".into(),
            "--blockdev".into(),
            "null-co,node-name=n0".into(),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "nbd,id=e0,node-name=n0".into(),
        ]
    });
    let uri = format!(
        "nbd+unix:///n0?socket={}",
        daemon.path("nbd.sock").display()
    );
    common::tool("nbdinfo", &[&uri]);
    let mut client = daemon.connect().await;
    let path = daemon.path("new.img");
    ok(
        &mut client,
        "blockdev-create",
        json!({"job-id": "j0", "options": {"driver": "file", "filename": path, "size": 1048576}}),
    )
    .await;
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log_path).expect("trace file");
        if text.contains("(concluded-->null)") || text.contains("-->concluded)") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"nbd_negotiate_begin Beginning negotiation"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("handle_qmp_command mon 0x")
                && line.contains(r#"req: {"execute":"blockdev-create","#)),
        "{text}"
    );
    assert!(
        lines.contains(&"job_state_transition job j0 (ret: 0) attempting allowed transition (undefined-->created)"),
        "{text}"
    );
    // Points not asked for stay off.
    assert!(!text.contains("blk_co_preadv"), "{text}");
}

/// `--object help`, `--object TYPE,help` and `--chardev help` print what
/// QSD prints, for the types and backends storaged has, and exit 0.
#[test]
fn help_options_list_types_as_qemu_storage_daemon() {
    let output = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().expect(program);
        assert!(out.status.success(), "{program} {args:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let storaged = env!("CARGO_BIN_EXE_storaged");
    let lines = |text: &str| -> Vec<String> { text.lines().map(str::to_owned).collect() };
    for kind in [
        "iothread",
        "secret",
        "throttle-group",
        "tls-creds-x509",
        "authz-list",
    ] {
        let option = format!("{kind},help");
        assert_eq!(
            output(storaged, &["--object", &option]),
            output("qemu-storage-daemon", &["--object", &option]),
            "{option}"
        );
    }
    for (option, header) in [
        (["--object", "help"], "List of user creatable objects:"),
        (["--chardev", "help"], "Available chardev backend types: "),
    ] {
        let ours = lines(&output(storaged, &option));
        let theirs = lines(&output("qemu-storage-daemon", &option));
        assert_eq!(ours[0], header);
        assert_eq!(theirs[0], header);
        assert!(ours.len() > 1, "{ours:?}");
        for entry in &ours[1..] {
            assert!(theirs.contains(entry), "{entry} is not in QSD's list");
        }
    }
}

/// `--chardev TYPE,help` for every backend QEMU names (those storaged
/// creates, those it does not, and an unknown one) and where `help` stands
/// among other items: standard output, standard error (warnings and
/// errors, after the program's name) and exit status as QSD's.
#[test]
fn chardev_option_help_is_qemu_storage_daemons() {
    let outcome = |program: &str, option: &str| {
        let out = Command::new(program)
            .args(["--chardev", option])
            .output()
            .expect(program);
        let name = program.rsplit('/').next().unwrap_or(program);
        let stderr = String::from_utf8_lossy(&out.stderr).replace(name, "PROGRAM");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        )
    };
    let storaged = env!("CARGO_BIN_EXE_storaged");
    let backends = [
        "socket", "stdio", "ringbuf", "memory", "null", "file", "pipe", "pty", "udp", "parallel",
        "serial", "mux", "hub", "bogus",
    ];
    let mut options: Vec<String> = backends.iter().map(|b| format!("{b},help")).collect();
    options.extend(
        [
            "socket,?",
            "id=x,help",
            "socket,id=x,help,path=/x",
            "socket,help,server=maybe",
            "socket,server=maybe,help",
            "socket,bogus=1,help",
            "socket,server,help",
            "socket,help,help",
            ",help",
            "socket,help,",
            "socket,path=a,,b,help",
            "socket,chardevs.0=x,help",
        ]
        .map(str::to_owned),
    );
    for option in &options {
        let theirs = outcome("qemu-storage-daemon", option);
        assert_eq!(outcome(storaged, option), theirs, "--chardev {option}");
    }
    let (status, list, _) = outcome(storaged, "socket,help");
    assert_eq!(status, Some(1));
    assert_eq!(list.lines().next(), Some("chardev options:"));
    assert!(list.contains("\n  reconnect-ms=<num>\n  reconnect=<num>\n"));
}

/// `--chardev ...,server=on` (`wait=on`) says on stderr, as QSD, where it
/// waits for its first client.
#[test]
fn waiting_for_a_first_client_is_announced_as_qemu_storage_daemon() {
    let announce = |program: &str| {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("w.sock");
        let child = Command::new(program)
            .args([
                "--chardev",
                &format!("socket,id=w,path={},server=on", socket.display()),
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect(program);
        let deadline = std::time::Instant::now() + common::PATIENCE;
        let client = loop {
            if let Ok(client) = std::os::unix::net::UnixStream::connect(&socket) {
                break client;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{program} never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        // SAFETY: signals the child this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        drop(client);
        let output = child.wait_with_output().expect("exit");
        let name = program.rsplit('/').next().unwrap_or(program);
        String::from_utf8_lossy(&output.stderr)
            .replace(name, "PROGRAM")
            .replace(&dir.path().display().to_string(), "DIR")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let ours = announce(env!("CARGO_BIN_EXE_storaged"));
    assert_eq!(ours, announce("qemu-storage-daemon"));
    assert_eq!(
        ours,
        "PROGRAM: --chardev socket,id=w,path=DIR/w.sock,server=on: info: QEMU waiting for connection on: disconnected:unix:DIR/w.sock,server=on"
    );
}

//! `query-qmp-schema` and `query-commands`, against qemu-storage-daemon
//! and with QEMU's own Python shell.
//!
//! The schema is compared with QSD's member by member for every command
//! and event both have (tests/python/qmp_schema_diff.py walks both sides
//! together: type names are opaque numbers in both). The differences left
//! are listed here, each for a reason: drivers, object types and image
//! formats storaged does not have, and qcow2 encryption.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{reply, storaged, TestDaemon};
use serde_json::{json, Value};

/// Drivers, object types and formats storaged has: a difference that
/// names one of them is never expected.
const IMPLEMENTED: &[&str] = &[
    "file",
    "raw",
    "qcow2",
    "null-co",
    "null-aio",
    "blkdebug",
    "throttle",
    "copy-on-read",
    "compress",
    "preallocate",
    "nbd",
    "throttle-group",
    "iothread",
    "secret",
    "tls-creds-x509",
    "tls-creds-psk",
    "tls-creds-anon",
    "authz-simple",
    "authz-list",
    "authz-listfile",
];

/// Where storaged's enum or union has fewer cases than QSD's because it
/// lacks the driver, object type or format.
const FEWER_CASES: &[&str] = &[
    "blockdev-add:arg",
    "blockdev-create:arg.options",
    "object-add:arg",
    "query-named-block-nodes:ret[].image.format-specific",
    "query-block:ret[].inserted.image.format-specific",
    "query-blockstats:ret[].driver-specific",
    "chardev-add:arg.backend",
    "chardev-change:arg.backend",
    "x-blockdev-amend:arg.options",
];

/// Other differences, each for a reason.
const EXPECTED: &[&str] = &[
    // qcow2 encryption (luks inside qcow2) is not supported.
    "blockdev-add:arg(qcow2).encrypt: missing",
    "blockdev-create:arg.options(qcow2).encrypt: missing",
    "query-named-block-nodes:ret[].image.format-specific(qcow2).data.encrypt: missing",
    // Read as any value and refused: there is nothing to amend it in.
    "x-blockdev-amend:arg.options(qcow2).encrypt: is builtin, reference object",
    "query-block:ret[].inserted.image.format-specific(qcow2).data.encrypt: missing",
    // Any name is read, and refused when it names no driver storaged has.
    "blockdev-create:arg.options(qcow2).backing-fmt: is builtin, reference enum",
    // QSD sets neither for any class storaged has; storaged never sends
    // them.
    "qom-list:ret[].default-value: missing",
    "qom-list:ret[].description: missing",
    "qom-list-properties:ret[].default-value: missing",
    "qom-list-properties:ret[].description: missing",
];

async fn schema_of(program: Command) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = TestDaemon::spawn(program, dir, |_| Vec::new());
    let mut client = daemon.connect().await;
    reply(&mut client, "query-qmp-schema", json!({})).await["return"].clone()
}

/// The lines of qmp_schema_diff.py for QSD's schema against storaged's.
fn differences(qsd: &Value, ours: &Value) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let qsd_path = dir.path().join("qsd.json");
    let our_path = dir.path().join("storaged.json");
    std::fs::write(&qsd_path, qsd.to_string()).expect("write");
    std::fs::write(&our_path, ours.to_string()).expect("write");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/qmp_schema_diff.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .args([&qsd_path, &our_path])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether `line` says storaged's union or enum lacks cases, all of them
/// drivers, object types or formats storaged does not have.
fn is_missing_case(line: &str) -> bool {
    let Some((path, what)) = line.split_once(": ") else {
        return false;
    };
    let lacked: Option<Vec<&str>> = if what == "missing variant" {
        path.strip_suffix(')')
            .and_then(|path| path.rsplit_once('('))
            .filter(|(prefix, _)| FEWER_CASES.contains(prefix))
            .map(|(_, case)| vec![case])
    } else if let Some(values) = what.strip_prefix("lacks values ") {
        path.rsplit_once('.')
            .filter(|(prefix, _)| FEWER_CASES.contains(prefix))
            .map(|_| {
                values
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(", ")
                    .map(|value| value.trim_matches('\''))
                    .collect()
            })
    } else {
        None
    };
    lacked.is_some_and(|cases| cases.iter().all(|case| !IMPLEMENTED.contains(case)))
}

fn names(schema: &Value, meta_type: &str) -> BTreeSet<String> {
    schema
        .as_array()
        .expect("a list")
        .iter()
        .filter(|entry| entry["meta-type"] == meta_type)
        .map(|entry| entry["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn the_schema_has_qsd_shapes_for_every_shared_command_and_event() {
    let qsd = schema_of(Command::new("qemu-storage-daemon")).await;
    let ours = schema_of(storaged()).await;
    let shared: Vec<String> = names(&qsd, "command")
        .intersection(&names(&ours, "command"))
        .cloned()
        .collect();
    assert!(shared.len() >= 50, "only {} shared commands", shared.len());
    assert_eq!(
        names(&qsd, "event")
            .intersection(&names(&ours, "event"))
            .count(),
        names(&ours, "event").len(),
        "every event storaged sends is one of QSD's"
    );
    let unexpected: Vec<String> = differences(&qsd, &ours)
        .into_iter()
        .filter(|line| !is_missing_case(line) && !EXPECTED.contains(&line.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "schema differences:\n{}",
        unexpected.join("\n")
    );
}

/// Every command of the schema is in `query-commands` and the reverse;
/// and each command refuses a call without a member its arguments
/// require, naming one: the schema says what the command reads.
#[tokio::test]
async fn the_schema_describes_what_the_commands_accept() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let schema = reply(&mut client, "query-qmp-schema", json!({})).await["return"].clone();
    let listed: BTreeSet<String> = reply(&mut client, "query-commands", json!({})).await["return"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|command| command["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(listed, names(&schema, "command"));

    let entries: std::collections::HashMap<&str, &Value> = schema
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| (entry["name"].as_str().expect("name"), entry))
        .collect();
    let mut checked = 0;
    for command in listed.iter().filter(|name| *name != "qmp_capabilities") {
        let arguments = entries[entries[command.as_str()]["arg-type"]
            .as_str()
            .expect("arg-type")];
        let required: Vec<&str> = arguments["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|member| member.get("default").is_none())
            .map(|member| member["name"].as_str().expect("name"))
            .collect();
        if required.is_empty() {
            continue;
        }
        let answer = reply(&mut client, command, json!({})).await;
        let desc = answer["error"]["desc"].as_str().unwrap_or_default();
        assert!(
            required
                .iter()
                .any(|name| desc == format!("Parameter '{name}' is missing")),
            "{command} without arguments: {answer} (required: {required:?})"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} commands checked");
}

/// QEMU's `qmp-shell` completes command names from `query-commands` and
/// runs commands through storaged's monitor.
#[test]
fn qmp_shell_completes_and_runs_commands() {
    let daemon = TestDaemon::start(&[]);
    let script = format!(
        r#"
from qemu.qmp.qmp_shell import QMPShell
shell = QMPShell({socket:?})
shell.connect()
print("completion", shell._completer.complete("query-qmp", 0))
print("completion", shell._completer.complete("block-job-s", 0))
shell.close()
"#,
        socket = daemon.qmp_socket.display().to_string()
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 (run .ci/test-deps.sh for qemu.qmp)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("completion query-qmp-schema\n"), "{stdout}");
    assert!(
        stdout.contains("completion block-job-set-speed\n"),
        "{stdout}"
    );

    let mut shell = Command::new("qmp-shell")
        .arg(&daemon.qmp_socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qmp-shell (run .ci/test-deps.sh for qemu.qmp)");
    use std::io::Write;
    shell
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"query-version\nblockdev-add driver=null-co node-name=n0 size=4096\nquery-named-block-nodes flat=true\n")
        .expect("write");
    let output = shell.wait_with_output().expect("qmp-shell");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(r#""package": "storaged"#), "{stdout}");
    assert!(stdout.contains(r#""node-name": "n0""#), "{stdout}");
}

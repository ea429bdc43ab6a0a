//! `query-chardev` and `query-chardev-backends` against
//! qemu-storage-daemon: the same chardevs (the test's monitor socket and a
//! listening socket no monitor uses) are listed alike, paths aside; the
//! backends storaged lists are among QSD's.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{ok, storaged, TestDaemon};
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
    assert_eq!(
        names(&backends),
        BTreeSet::from(["socket".into(), "stdio".into()])
    );
    assert!(names(&backends).is_subset(&names(&qsd_backends)));
}

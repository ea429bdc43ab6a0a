//! A monitor on the daemon's standard streams (`--chardev stdio`), the way
//! QEMU's iotests drive qemu-storage-daemon: requests on stdin, replies on
//! stdout, `quit` ends the daemon with status 0.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::storaged;
use serde_json::{json, Value};

#[test]
fn a_stdio_monitor_answers_on_stdout() {
    let mut child = storaged()
        .args([
            "--chardev",
            "stdio,id=stdio0",
            "--monitor",
            "chardev=stdio0",
            "--blockdev",
            "null-co,node-name=n0,size=4096",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn storaged");
    let mut input = child.stdin.take().expect("stdin");
    let mut output = BufReader::new(child.stdout.take().expect("stdout"));
    let mut next = || {
        let mut line = String::new();
        output.read_line(&mut line).expect("read a reply");
        serde_json::from_str::<Value>(&line).expect("a JSON line")
    };
    assert_eq!(next()["QMP"]["version"]["qemu"]["major"], 10);
    for request in [
        json!({"execute": "qmp_capabilities"}),
        json!({"execute": "query-named-block-nodes", "id": 1}),
        json!({"execute": "quit", "id": 2}),
    ] {
        writeln!(input, "{request}").expect("write a request");
    }
    assert_eq!(next(), json!({"return": {}}));
    let nodes = next();
    assert_eq!(nodes["id"], 1);
    assert_eq!(nodes["return"][0]["node-name"], "n0");
    assert_eq!(nodes["return"][0]["image"]["virtual-size"], 4096);
    assert_eq!(next(), json!({"return": {}, "id": 2}));
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

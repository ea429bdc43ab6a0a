//! The same bytes sent to qemu-storage-daemon and to a storaged monitor get
//! the same bytes back: greeting, negotiation, request checks, JSON errors
//! and their recovery, ids, out-of-band handling.
//!
//! Only commands whose answer does not depend on the daemon's command set
//! are used: qmp_capabilities, query-commands' argument check, and names
//! neither daemon has.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{Fake, Raw, PATIENCE};
use qmp::{EventBus, ListenAddress, MonitorOptions, Monitors, VersionInfo, VersionTriple};
use serde_json::Value;
use tokio::process::{Child, Command};

/// Inputs before negotiation, then the negotiation, then inputs after it.
const BEFORE_NEGOTIATION: &[&[u8]] = &[
    br#"{"execute":"query-version"}"#,
    br#"{"execute":"query-commands","id":1}"#,
    br#"{"execute":5,"id":1}"#,
    br#"{"foo":1,"execute":"x","id":2}"#,
    br#"{"exec-oob":"query-version","id":5}"#,
    br#"{"exec-oob":5,"id":5}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"enable":["foo"]},"id":4}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"enable":"oob"},"id":4}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"enable":[1]}}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"enable":null}}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"bar":1}}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"],"x":1,"y":2}}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"b":1,"c":2,"d":3,"e":4}}"#,
    b"[1,2]",
    b"\"str\"",
    b"42 ",
    b"42",
    br#"{"id":5}"#,
    br#"{"execute": @}"#,
    br#"{"execute":"a"}}"#,
    b"]",
    b"}",
    b":",
    br#"{"execute":"x" "id":1}"#,
    br#"{"execute":"x",}"#,
    br#"{"execute":"x","execute":"y"}"#,
    b"{1:2}",
    b"{[1]:2}",
    br#"{"a"}"#,
    br#"{"a":}"#,
    b"[1 2]",
    b"[1,]",
    b"[}",
    br#"{"a":1]"#,
    br#"{"execute":tru}"#,
    b"nul ",
    b"-",
    b"-x",
    b"01",
    b"1.",
    b"1.5e",
    b"1e+",
    b"\xff",
    b"\xfe\xfe",
    b"\x00",
    b"\x01",
    "é".as_bytes(),
    br#"{"execute":"\q"}"#,
    br#"{"execute":"\ud800"}"#,
    br#"{"execute":"\ud800\u0041"}"#,
    br#"{"execute":"\uffff"}"#,
    br#"{"execute":"\u12"}"#,
    br#"{"execute":"\u12x4"}"#,
    b"{\"execute\":\"\xc3\xa9\xf0\x9f\x98\x80\"}",
    b"{\"execute\":\"\xc0\x80\"}",
    b"{\"execute\":\"\xc3\"}",
    b"{\"execute\":\"\xed\xa0\x80\"}",
    b"{\"execute\":\"\xef\xbf\xbf\"}",
    b"{\"execute\":\"\x01\"}",
    b"{\"execute\":\"ab\ncd\"}",
    b"{\"execute\":\"x\"}\x00{\"execute\":\"y\"}",
    b"{'execute':'x\\'s'}",
    br#"{"execute":"\u00e9\ud83d\ude00\/\b\f\n\r\t\"\\"}"#,
    br#"{"execute":"x","id":0.1}"#,
    br#"{"execute":"x","id":[1e2,-0,18446744073709551615,18446744073709551616,-9223372036854775809,1.5e300,1e-7,123456789012345678901234567890,0.5,-1.25E-3]}"#,
    br#"{"execute":"x","id":{"b":[true,false,null],"a":{},"c":[]}}"#,
    br#"{"execute":"x","id":{"major":1,"minor":2,"micro":3}}"#,
    b"  \t\r\n  {\"execute\":\"x\",\"id\":1}  ",
];

const NEGOTIATION: &[u8] =
    br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":"neg"}"#;

const AFTER_NEGOTIATION: &[&[u8]] = &[
    br#"{"execute":"qmp_capabilities"}"#,
    br#"{"execute":"qmp_capabilities","arguments":{"bar":1}}"#,
    br#"{"execute":"query-commands","arguments":{"x":1}}"#,
    br#"{"execute":"query-commands","arguments":{"x":1,"y":2,"z":3}}"#,
    br#"{"execute":"query-commands","arguments":{"enable":1,"zz":2}}"#,
    br#"{"execute":"nope","id":[1,{"a":2}]}"#,
    b"{\"execute\":\"\xc3\xa9\"}",
    br#"{"exec-oob":"query-commands","id":1}"#,
    br#"{"exec-oob":"qmp_capabilities","id":1}"#,
    br#"{"exec-oob":"nope","id":1}"#,
    br#"{"exec-oob":5,"id":1}"#,
    br#"{"execute":"x","exec-oob":"y","id":6}"#,
    br#"{"exec-oob":"x","foo":1,"bar":2,"baz":3,"arguments":7}"#,
    br#"{"execute":"x","arguments":[],"id":2}"#,
    br#"{"execute":"x","arguments":{},"id":2,"extra":1}"#,
    br#"{"arguments":{},"id":2}"#,
];

/// Ends a pending number or keyword and resynchronises after garbage.
const NEWLINE: &[u8] = b"\n";

/// Also drops a half-read message: `0xFF` is an error wherever it comes,
/// and an error makes QEMU's parser start afresh (QEMU's documented way to
/// reset it).
const RESET: &[u8] = b"\n\xff\n";

/// Sends each input, then `separator` and a marker, and collects the lines
/// up to the marker's reply.
async fn transcript_with(
    raw: &mut Raw,
    inputs: &[&[u8]],
    first_marker: usize,
    separator: &[u8],
) -> Vec<String> {
    let mut lines = Vec::new();
    for (n, input) in inputs.iter().enumerate() {
        let marker = format!("\"sync-{}\"", first_marker + n);
        raw.send(input).await;
        raw.send(separator).await;
        raw.send(format!("{{\"execute\":\"sync-marker\",\"id\":{marker}}}").as_bytes())
            .await;
        lines.push(format!("--- {}", String::from_utf8_lossy(input)));
        loop {
            let next =
                tokio::time::timeout(std::time::Duration::from_secs(60), raw.next_line_or_end());
            let Some(line) = next.await.expect("a line from the monitor in time") else {
                // The daemon went away (QSD aborts when too many requests
                // queue up on a busy machine: its QMP_REQ_QUEUE_LEN_MAX
                // assertion).
                lines.push(CLOSED.to_string());
                return lines;
            };
            let done = line.contains(&marker);
            lines.push(line);
            if done {
                break;
            }
        }
    }
    lines
}

/// The last line of a transcript whose daemon closed the connection.
const CLOSED: &str = "--- connection closed";

async fn transcript(raw: &mut Raw, inputs: &[&[u8]], first_marker: usize) -> Vec<String> {
    transcript_with(raw, inputs, first_marker, NEWLINE).await
}

async fn full_transcript(socket: &Path) -> Vec<String> {
    let mut raw = Raw::connect(socket).await;
    let mut lines = vec![raw.line().await];
    lines.extend(transcript(&mut raw, BEFORE_NEGOTIATION, 0).await);
    lines.extend(transcript(&mut raw, &[NEGOTIATION], 1000).await);
    lines.extend(transcript(&mut raw, AFTER_NEGOTIATION, 2000).await);
    lines
}

struct Qsd {
    _child: Child,
    socket: std::path::PathBuf,
}

async fn start_qsd(dir: &Path) -> Qsd {
    let socket = dir.join("qsd.sock");
    let child = Command::new("qemu-storage-daemon")
        .arg("--chardev")
        .arg(format!(
            "socket,id=m,path={},server=on,wait=off",
            socket.display()
        ))
        .args(["--monitor", "chardev=m"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-storage-daemon must be installed (see .ci/run)");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !socket.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "QSD did not create its socket"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Qsd {
        _child: child,
        socket,
    }
}

/// QSD's version, so that both greetings can be compared byte for byte.
async fn version_of(qsd: &Qsd) -> VersionInfo {
    let mut raw = Raw::connect(&qsd.socket).await;
    let greeting: Value = serde_json::from_str(&raw.line().await).expect("QSD greeting");
    let version = &greeting["QMP"]["version"];
    let number = |key: &str| version["qemu"][key].as_i64().unwrap_or(-1);
    VersionInfo {
        qemu: VersionTriple {
            major: number("major"),
            minor: number("minor"),
            micro: number("micro"),
        },
        package: version["package"].as_str().unwrap_or_default().to_string(),
    }
}

/// QSD and a storaged monitor with QSD's version, side by side.
struct Pair {
    qsd: Qsd,
    ours: std::path::PathBuf,
    _monitors: Monitors,
    _dir: tempfile::TempDir,
}

async fn start_pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let qsd = start_qsd(dir.path()).await;
    let events = EventBus::new();
    let monitors = Monitors::new(Fake::new(events.clone()), version_of(&qsd).await, events);
    let ours = dir.path().join("storaged.sock");
    monitors
        .listen(
            &ListenAddress::Unix(ours.clone()),
            false,
            MonitorOptions::default(),
        )
        .await
        .unwrap();
    Pair {
        qsd,
        ours,
        _monitors: monitors,
        _dir: dir,
    }
}

#[tokio::test]
async fn same_bytes_in_same_bytes_out() {
    let Pair { qsd, ours, .. } = &start_pair().await;
    let theirs = full_transcript(&qsd.socket).await;
    let mine = full_transcript(ours).await;
    for (n, (expected, got)) in theirs.iter().zip(&mine).enumerate() {
        assert_eq!(got, expected, "line {n}; QSD's transcript: {theirs:#?}");
    }
    assert_eq!(mine.len(), theirs.len());
}

#[tokio::test]
async fn same_nesting_limit() {
    let Pair { qsd, ours, .. } = &start_pair().await;
    let deep = |depth: usize| {
        format!(
            "{{\"execute\":\"x\",\"id\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    };
    let inputs = [deep(1023), deep(1024), deep(1100)];
    let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let mut from_qsd = Raw::connect(&qsd.socket).await;
    from_qsd.line().await;
    let mut from_us = Raw::connect(ours).await;
    from_us.line().await;
    assert_eq!(
        transcript(&mut from_us, &inputs, 0).await,
        transcript(&mut from_qsd, &inputs, 0).await
    );
}

/// Requests to mutate. No command either daemon has, except
/// `qmp_capabilities` (QSD's other commands would answer differently).
const SEEDS: &[&[u8]] = &[
    br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#,
    br#"{"execute":"zz-nope","arguments":{"a":[1,2.5,"s"],"b":{"c":null}},"id":"x"}"#,
    br#"{'exec-oob':'zz-nope','id':[true,false]}"#,
    br#"{"execute":"zz-nope","id":"\u00e9\ud83d\ude00\n"}"#,
    br#"[{"execute":"zz-nope"},{"id":-12e3}]"#,
    br#"{"execute":"qmp_capabilities","arguments":{"enable":"oob","x":1}}"#,
];

/// Bytes worth inserting: structure, quotes, escapes, number and keyword
/// pieces, control bytes, bytes that are never valid UTF-8.
const INTERESTING: &[u8] =
    b"{}[]:,\"'\\ \n\t0123456789-+.eEuatrfnl\x00\x01\x7f\x80\xc3\xa9\xfe\xff";

/// xorshift64*: a fixed seed gives the same cases on every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(random: &mut Random, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..=random.below(3) {
        let at = random.below(bytes.len() + 1);
        match random.below(5) {
            0 => bytes.insert(at, INTERESTING[random.below(INTERESTING.len())]),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 if at < bytes.len() => bytes[at] = INTERESTING[random.below(INTERESTING.len())],
            3 => bytes.truncate(at),
            _ => {
                let end = (at + random.below(8)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    bytes
}

#[tokio::test]
async fn same_answers_to_mutated_requests() {
    let Pair { qsd, ours, .. } = &start_pair().await;
    let mut random = Random(0x005E_ED0F_5708_A6ED);
    let cases: Vec<Vec<u8>> = (0..600)
        .map(|n| mutate(&mut random, SEEDS[n % SEEDS.len()]))
        .collect();
    let inputs: Vec<&[u8]> = cases.iter().map(Vec::as_slice).collect();
    let mut from_qsd = Raw::connect(&qsd.socket).await;
    let mut from_us = Raw::connect(ours).await;
    assert_eq!(from_us.line().await, from_qsd.line().await);
    let theirs = transcript_with(&mut from_qsd, &inputs, 0, RESET).await;
    let mine = transcript_with(&mut from_us, &inputs, 0, RESET).await;
    assert!(
        !mine.contains(&CLOSED.to_string()),
        "storaged closed the monitor"
    );
    // Where QSD aborted, the comparison covers what it answered before.
    let compared = theirs.iter().take_while(|line| *line != CLOSED);
    for (n, (expected, got)) in compared.zip(&mine).enumerate() {
        assert_eq!(got, expected, "line {n}");
    }
    if theirs.last().is_some_and(|line| line == CLOSED) {
        eprintln!(
            "qemu-storage-daemon aborted after {} lines",
            theirs.len() - 1
        );
    } else {
        assert_eq!(mine.len(), theirs.len());
    }
}

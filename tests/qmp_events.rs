//! Events reach every negotiated client of every monitor at once, with
//! QEMU's timestamp, and none reach a client still negotiating. The event
//! is `BLOCK_EXPORT_DELETED`, which `block-export-del` emits.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ok, TestDaemon};
use qmp::client::Client;
use serde_json::{json, Value};

/// How long to wait for an event that must come.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// How long to watch for an event that must not come.
const QUIET_WAIT: Duration = Duration::from_millis(300);

fn monitor_args(dir: &std::path::Path, id: &str) -> Vec<String> {
    vec![
        "--chardev".into(),
        format!(
            "socket,id={id},path={},server=on,wait=off",
            dir.join(format!("{id}.sock")).display()
        ),
        "--monitor".into(),
        id.into(),
    ]
}

fn assert_export_deleted(event: &Value, id: &str) {
    assert_eq!(event["event"], "BLOCK_EXPORT_DELETED", "{event}");
    assert_eq!(event["data"], json!({ "id": id }), "{event}");
    let seconds = event["timestamp"]["seconds"].as_u64().expect("seconds");
    let micros = event["timestamp"]["microseconds"]
        .as_u64()
        .expect("microseconds");
    assert!(micros < 1_000_000);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        seconds.abs_diff(now) < 60,
        "timestamp {seconds} vs now {now}"
    );
}

#[tokio::test]
async fn an_event_reaches_two_monitors_at_once() {
    let daemon = TestDaemon::start_in(tempfile::tempdir().expect("temp dir"), |dir| {
        let mut args = vec![
            "--blockdev".to_owned(),
            "null-co,node-name=n0".to_owned(),
            "--nbd-server".to_owned(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".to_owned(),
            "nbd,id=e0,node-name=n0".to_owned(),
            "--export".to_owned(),
            "nbd,id=e1,node-name=n0,name=other".to_owned(),
        ];
        args.extend(monitor_args(dir, "second"));
        args.extend(monitor_args(dir, "third"));
        args
    });
    let mut first = daemon.connect().await;
    let mut second = Client::connect_unix(daemon.path("second.sock"))
        .await
        .expect("second monitor");
    second.negotiate().await.expect("negotiate");
    // Connected, greeted, but not negotiated: gets no events.
    let mut pending = Client::connect_unix(daemon.path("third.sock"))
        .await
        .expect("third monitor");

    ok(&mut first, "block-export-del", json!({"id": "e0"})).await;
    let on_first = first
        .next_event(EVENT_WAIT)
        .await
        .expect("read")
        .expect("event on first");
    let on_second = second
        .next_event(EVENT_WAIT)
        .await
        .expect("read")
        .expect("event on second");
    assert_export_deleted(&on_first, "e0");
    assert_eq!(on_first, on_second, "the same event, the same timestamp");
    assert_eq!(
        pending.next_event(QUIET_WAIT).await.expect("read"),
        None,
        "no events before negotiation"
    );

    // Once negotiated, that client gets the next one too.
    pending.negotiate().await.expect("negotiate");
    ok(&mut second, "block-export-del", json!({"id": "e1"})).await;
    for client in [&mut first, &mut second, &mut pending] {
        let event = client
            .next_event(EVENT_WAIT)
            .await
            .expect("read")
            .expect("event");
        assert_export_deleted(&event, "e1");
    }
    let exports = ok(&mut first, "query-block-exports", json!({})).await;
    assert_eq!(exports, json!([]));
}

//! Several monitors and clients: turns, events, disconnects, slow readers,
//! shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Raw, Setup, GREETING, PATIENCE, QUIET};
use qmp::client::Client;
use qmp::{BoundAddress, ListenAddress, MonitorOptions, MAX_QUEUED_MESSAGES};
use serde_json::json;
use tokio::io::AsyncWriteExt;

async fn tcp_monitor(setup: &Setup) -> BoundAddress {
    let address = ListenAddress::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    };
    setup
        .monitors
        .listen(&address, false, MonitorOptions::default())
        .await
        .expect("listen on TCP")
}

#[tokio::test]
async fn two_monitors_serve_at_once() {
    let setup = Setup::new().await;
    let tcp = tcp_monitor(&setup).await;
    let mut unix = Client::connect(&setup.address()).await.unwrap();
    let mut tcp = Client::connect(&tcp).await.unwrap();
    assert_eq!(unix.greeting(), tcp.greeting());
    unix.negotiate().await.unwrap();
    tcp.negotiate().await.unwrap();
    assert_eq!(
        unix.execute("echo", json!({"via": "unix"})).await.unwrap(),
        Ok(json!({"via": "unix"}))
    );
    assert_eq!(
        tcp.execute("echo", json!({"via": "tcp"})).await.unwrap(),
        Ok(json!({"via": "tcp"}))
    );
}

#[tokio::test]
async fn second_client_waits_for_the_first_then_negotiates_afresh() {
    let setup = Setup::new().await;
    let mut first = setup.negotiated_raw().await;
    let mut second = setup.raw().await;
    second
        .send(br#"{"execute":"qmp_capabilities","id":"second"}"#)
        .await;
    second.assert_quiet().await;
    assert_eq!(
        first.exchange(br#"{"execute":"nothing","id":1}"#, 1).await,
        ["{\"return\": {}, \"id\": 1}\r\n"]
    );
    drop(first);
    assert_eq!(second.line().await, GREETING);
    assert_eq!(
        second.line().await,
        "{\"return\": {}, \"id\": \"second\"}\r\n"
    );
}

#[tokio::test]
async fn many_clients_in_turn() {
    let setup = Setup::new().await;
    for turn in 0..50 {
        let mut client = Client::connect(&setup.address()).await.unwrap();
        client.negotiate().await.unwrap();
        assert_eq!(
            client.execute("echo", json!({"turn": turn})).await.unwrap(),
            Ok(json!({"turn": turn}))
        );
    }
}

#[tokio::test]
async fn events_reach_negotiated_clients_of_every_monitor_only() {
    let setup = Setup::new().await;
    let tcp = tcp_monitor(&setup).await;
    let mut emitter = Client::connect(&setup.address()).await.unwrap();
    emitter.negotiate().await.unwrap();
    let mut listener = Client::connect(&tcp).await.unwrap();
    // Not negotiated yet: gets nothing.
    emitter
        .execute("emit", json!({"name": "EARLY"}))
        .await
        .unwrap()
        .unwrap();
    listener.negotiate().await.unwrap();
    emitter
        .execute(
            "emit",
            json!({"name": "BLOCK_JOB_READY", "data": {"device": "j"}}),
        )
        .await
        .unwrap()
        .unwrap();
    for client in [&mut emitter, &mut listener] {
        let first = client.next_event(PATIENCE).await.unwrap().unwrap();
        if first["event"] == "EARLY" {
            let second = client.next_event(PATIENCE).await.unwrap().unwrap();
            assert_eq!(second["event"], "BLOCK_JOB_READY");
            continue;
        }
        assert_eq!(first["event"], "BLOCK_JOB_READY");
        assert_eq!(first["data"], json!({"device": "j"}));
        assert!(first["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
        assert!(first["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
        assert_eq!(client.next_event(QUIET).await.unwrap(), None);
    }
}

#[tokio::test]
async fn event_emitted_by_a_command_precedes_its_reply_in_qemus_form() {
    let setup = Setup::new().await;
    let mut raw = setup.negotiated_raw().await;
    raw.send(br#"{"execute":"emit","arguments":{"name":"X","data":{"id":"e"}},"id":1}"#)
        .await;
    let event = raw.line().await;
    assert!(
        event.starts_with("{\"timestamp\": {\"seconds\": "),
        "{event}"
    );
    assert!(
        event.ends_with(", \"event\": \"X\", \"data\": {\"id\": \"e\"}}\r\n"),
        "{event}"
    );
    assert_eq!(raw.line().await, "{\"return\": {}, \"id\": 1}\r\n");
    raw.send(br#"{"execute":"emit","arguments":{"name":"STOP"}}"#)
        .await;
    assert!(raw.line().await.ends_with("}, \"event\": \"STOP\"}\r\n"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_not_waited_for() {
    let setup = Setup::new().await;
    let mut sleeper = setup.negotiated_raw().await;
    // A second monitor whose client emits while the first never reads.
    let tcp = tcp_monitor(&setup).await;
    let mut emitter = Client::connect(&tcp).await.unwrap();
    emitter.negotiate().await.unwrap();
    let big = "x".repeat(1024);
    let mut sent = 0;
    // Socket buffers take some; then the queue fills and the sleeper is cut.
    while sent < 3 * MAX_QUEUED_MESSAGES {
        emitter
            .execute("emit", json!({"name": "BIG", "data": {"s": big}}))
            .await
            .unwrap()
            .unwrap();
        sent += 1;
        // Drain our own copies so that we are not the slow one.
        while emitter.next_event(Duration::ZERO).await.unwrap().is_some() {}
    }
    // The sleeper gets what was written before the cut, then end of input.
    let mut lines = 0;
    loop {
        match tokio::time::timeout(PATIENCE, sleeper.next_line_or_end()).await {
            Ok(Some(_)) => lines += 1,
            Ok(None) => break,
            Err(_) => panic!("the slow client was not disconnected"),
        }
    }
    assert!(lines < sent, "{lines} of {sent} events");
    // The emitter was never blocked and still works.
    assert_eq!(
        emitter.execute("nothing", json!({})).await.unwrap(),
        Ok(json!({}))
    );
}

#[tokio::test]
async fn a_client_that_disconnects_mid_command_disturbs_nobody() {
    let setup = Setup::new().await;
    let tcp = tcp_monitor(&setup).await;
    let mut other = Client::connect(&tcp).await.unwrap();
    other.negotiate().await.unwrap();
    let mut leaver = setup.negotiated_raw().await;
    leaver
        .send(br#"{"execute":"sleep","arguments":{"ms":300}}{"execute":"sleep","arguments":{"ms":300}}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(leaver);
    // The other monitor's commands wait for the running one (one command at
    // a time), then run.
    assert_eq!(
        other.execute("sleep", json!({"ms": 10})).await.unwrap(),
        Ok(json!({"overlapped": false}))
    );
    // The running command completed; the queued one was dropped or ran,
    // but never at the same time as another.
    let mut next = Client::connect(&setup.address()).await.unwrap();
    next.negotiate().await.unwrap();
    assert_eq!(
        next.execute("echo", json!({"n": 1})).await.unwrap(),
        Ok(json!({"n": 1}))
    );
    assert!(setup.fake.completed.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn commands_never_overlap_across_monitors() {
    let setup = Setup::new().await;
    let tcp = tcp_monitor(&setup).await;
    let mut a = Client::connect(&setup.address()).await.unwrap();
    let mut b = Client::connect(&tcp).await.unwrap();
    a.negotiate().await.unwrap();
    b.negotiate().await.unwrap();
    let (ra, rb) = tokio::join!(
        a.execute("sleep", json!({"ms": 200})),
        b.execute("sleep", json!({"ms": 200}))
    );
    assert_eq!(ra.unwrap(), Ok(json!({"overlapped": false})));
    assert_eq!(rb.unwrap(), Ok(json!({"overlapped": false})));
}

#[tokio::test]
async fn everything_sent_before_end_of_input_is_answered() {
    let setup = Setup::new().await;
    let mut raw = setup.raw().await;
    raw.send(
        br#"{"execute":"qmp_capabilities"}{"execute":"echo","arguments":{"n":1}}{"execute":"nothing","id":2}"#,
    )
    .await;
    raw.stream.shutdown().await.unwrap();
    assert_eq!(raw.line().await, GREETING);
    assert_eq!(raw.line().await, "{\"return\": {}}\r\n");
    assert_eq!(raw.line().await, "{\"return\": {\"n\": 1}}\r\n");
    assert_eq!(raw.line().await, "{\"return\": {}, \"id\": 2}\r\n");
    assert!(raw.closed().await);
}

#[tokio::test]
async fn quit_reply_is_written_before_shutdown_completes_and_socket_removed() {
    let setup = Setup::new().await;
    let tcp = tcp_monitor(&setup).await;
    let mut idle = Client::connect(&tcp).await.unwrap();
    let mut raw = setup.negotiated_raw().await;
    let fake = setup.fake.clone();
    let quit = fake.quit_requested.notified();
    raw.send(br#"{"execute":"quit","id":"bye"}"#).await;
    quit.await;
    setup.monitors.shutdown().await;
    assert_eq!(raw.line().await, "{\"return\": {}, \"id\": \"bye\"}\r\n");
    assert!(raw.closed().await);
    assert!(!setup.socket.exists(), "socket file left behind");
    assert!(Raw::try_connect(&setup.socket).await.is_err());
    assert!(idle.receive().await.is_err(), "idle client not closed");
}

#[tokio::test]
async fn wait_on_returns_once_the_first_client_is_connected() {
    let setup = Setup::new().await;
    let path = setup.dir.path().join("wait.sock");
    let monitors = &setup.monitors;
    let address = ListenAddress::Unix(path.clone());
    let listening = monitors.listen(&address, true, MonitorOptions::default());
    tokio::pin!(listening);
    // Not done until a client comes.
    assert!(tokio::time::timeout(QUIET, &mut listening).await.is_err());
    assert!(path.exists());
    let connecting = Client::connect_unix(&path);
    let (listened, client) = tokio::join!(listening, connecting);
    assert_eq!(listened.unwrap(), BoundAddress::Unix(path));
    let mut client = client.unwrap();
    client.negotiate().await.unwrap();
    assert_eq!(
        client.execute("nothing", json!({})).await.unwrap(),
        Ok(json!({}))
    );
}

#[tokio::test]
async fn a_stream_monitor_serves_one_session_like_stdio() {
    let setup = Setup::new().await;
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (input, output) = tokio::io::split(ours);
    setup
        .monitors
        .serve_stream(input, output, MonitorOptions::default());
    let (mut from_monitor, mut to_monitor) = tokio::io::split(theirs);
    to_monitor
        .write_all(
            br#"{"execute":"qmp_capabilities"}{"execute":"echo","arguments":{"via":"stdio"}}"#,
        )
        .await
        .unwrap();
    to_monitor.shutdown().await.unwrap();
    let mut everything = String::new();
    tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_string(&mut from_monitor, &mut everything),
    )
    .await
    .expect("the session ends after end of input")
    .unwrap();
    assert_eq!(
        everything,
        format!("{GREETING}{{\"return\": {{}}}}\r\n{{\"return\": {{\"via\": \"stdio\"}}}}\r\n")
    );
}

#[tokio::test]
async fn empty_host_listens_on_every_address() {
    let setup = Setup::new().await;
    let address = ListenAddress::Tcp {
        host: String::new(),
        port: 0,
    };
    let bound = setup
        .monitors
        .listen(&address, false, MonitorOptions::default())
        .await
        .unwrap();
    let BoundAddress::Tcp(bound) = bound else {
        panic!("TCP listen gave {bound:?}");
    };
    assert!(bound.ip().is_unspecified());
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], bound.port()));
    let mut client = Client::connect_tcp(loopback).await.unwrap();
    client.negotiate().await.unwrap();
}

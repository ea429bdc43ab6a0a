//! Bad input does not hurt the daemon: malformed JSON is answered and the
//! connection kept, huge messages are bounded, wrong argument types get
//! QEMU's messages, a client that vanishes in the middle of a command
//! does not stop the others, and two monitors serve at once.

mod common;

use std::time::{Duration, Instant};

use common::{error, ok, sparse_file, TestDaemon, PATIENCE};
use qmp::client::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

fn generic(desc: &str) -> (String, String) {
    ("GenericError".to_owned(), desc.to_owned())
}

/// Sends raw bytes and returns the next message.
async fn raw(client: &mut Client, bytes: &[u8]) -> Value {
    client.send_raw(bytes).await.expect("send");
    client.receive().await.expect("a reply")
}

#[tokio::test]
async fn malformed_json_is_answered_and_the_session_continues() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let cases: &[(&[u8], &str)] = &[
        (b"{bad json}\n", "JSON parse error, invalid keyword 'bad'"),
        (b"[]\n", "QMP input must be a JSON object"),
        (b"\"text\"\n", "QMP input must be a JSON object"),
        (
            b"{\"execute\": 1}\n",
            "QMP input member 'execute' must be a string",
        ),
        (
            b"{\"execute\": \"query-version\", \"arguments\": []}\n",
            "QMP input member 'arguments' must be an object",
        ),
        (b"{\"foo\": 1}\n", "QMP input member 'foo' is unexpected"),
    ];
    for (bytes, desc) in cases {
        let reply = raw(&mut client, bytes).await;
        assert_eq!(reply["error"]["class"], "GenericError", "{reply}");
        assert_eq!(reply["error"]["desc"], *desc, "{reply}");
    }
    ok(&mut client, "query-version", json!({})).await;
}

#[tokio::test]
async fn wrong_argument_types_get_qemu_messages() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let cases = [
        (
            "blockdev-add",
            json!({"driver": "null-co", "node-name": 5}),
            "Invalid parameter type for 'node-name', expected: string",
        ),
        (
            "blockdev-add",
            json!({"driver": "null-co", "node-name": "n", "read-only": "on"}),
            "Invalid parameter type for 'read-only', expected: boolean",
        ),
        (
            "blockdev-add",
            json!({"driver": "null-co", "node-name": "n", "cache": {"direct": 1}}),
            "Invalid parameter type for 'cache.direct', expected: boolean",
        ),
        (
            "block_resize",
            json!({"node-name": "n", "size": "1G"}),
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            "object-add",
            json!({"qom-type": "secret", "id": ["s"], "data": "x"}),
            "Invalid parameter type for 'id', expected: string",
        ),
    ];
    for (command, arguments, desc) in cases {
        assert_eq!(
            error(&mut client, command, arguments.clone()).await,
            generic(desc),
            "{command} {arguments}"
        );
    }
}

/// Connects, negotiates, sends `payload` followed by a `query-version`
/// with id "after" and the end of input, reading all the while (the
/// daemon answers as it goes, and stops reading from a client that does
/// not read its answers), and returns every reply after the negotiation.
async fn send_reading_replies(socket: &std::path::Path, payload: Vec<u8>) -> Vec<Value> {
    let stream = UnixStream::connect(socket).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        let mut replies = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            replies.push(serde_json::from_str::<Value>(&line).expect("JSON from the monitor"));
        }
        replies
    });
    write
        .write_all(br#"{"execute": "qmp_capabilities"}"#)
        .await
        .expect("negotiate");
    write.write_all(&payload).await.expect("payload");
    write
        .write_all(b"\n{\"execute\": \"query-version\", \"id\": \"after\"}\n")
        .await
        .expect("query");
    write.shutdown().await.expect("end of input");
    let mut replies = reader.await.expect("reader");
    // The greeting and the negotiation's reply.
    assert!(replies[0]["QMP"].is_object());
    assert_eq!(replies[1], json!({"return": {}}));
    replies.drain(..2);
    replies
}

/// Every reply is a `GenericError`, and there are few of them: a few per
/// limit's worth of input, not one per byte.
fn assert_bounded_errors(errors: &[Value], input_size: usize) {
    assert!(!errors.is_empty());
    for error in errors {
        assert_eq!(error["error"]["class"], "GenericError", "{error}");
    }
    assert!(
        errors.len() < input_size / 1000,
        "{} errors for {input_size} bytes",
        errors.len()
    );
}

#[tokio::test]
async fn huge_messages_are_refused_and_the_daemon_keeps_serving() {
    // The bystander uses a second monitor: a monitor serves one client at
    // a time.
    let dir = tempfile::tempdir().expect("temp dir");
    let second = dir.path().join("second.sock");
    let chardev = format!(
        "socket,id=second,path={},server=on,wait=off",
        second.display()
    );
    let daemon = TestDaemon::start_in(dir, |_| {
        vec![
            "--chardev".into(),
            chardev,
            "--monitor".into(),
            "second".into(),
        ]
    });
    let mut bystander = Client::connect_unix(&second).await.expect("second monitor");
    bystander.negotiate().await.expect("negotiate");

    // 4 MiB inside one JSON string: beyond the per-message limit. The
    // stream is clean again after it, so the next request is answered.
    let request = json!({"execute": "blockdev-add",
                         "arguments": {"driver": "null-co", "node-name": "n".repeat(4 << 20)}});
    let payload = format!("{request}\n").into_bytes();
    let size = payload.len();
    let replies = send_reading_replies(&daemon.qmp_socket, payload).await;
    let (answer, errors) = replies.split_last().expect("replies");
    assert_eq!(answer["id"], "after");
    assert!(answer["return"]["qemu"].is_object(), "{answer}");
    assert_bounded_errors(errors, size);

    // 3 MiB of brackets that never close: errors at each nesting limit,
    // and the rest (with the request) stays an unfinished message, as in
    // QEMU, until the client goes.
    let size = 3 << 20;
    let replies = send_reading_replies(&daemon.qmp_socket, vec![b'['; size]).await;
    assert_bounded_errors(&replies, size);

    // Nothing was created, and other clients were served all along.
    let nodes = ok(&mut bystander, "query-named-block-nodes", json!({})).await;
    assert_eq!(nodes, json!([]));
}

#[tokio::test]
async fn a_client_leaving_mid_command_does_not_stop_the_others() {
    let daemon = TestDaemon::start(&[]);
    let image = daemon.path("disk.img");
    sparse_file(&image, 1 << 20);
    for round in 0..20 {
        let mut leaver = daemon.connect().await;
        let request = json!({"execute": "blockdev-add", "id": round,
            "arguments": {"driver": "file", "node-name": format!("f{round}"), "filename": image,
                          "locking": "off"}});
        leaver
            .send_raw(format!("{request}\n").as_bytes())
            .await
            .expect("send");
        drop(leaver);
    }
    // Half a request, then gone.
    let mut partial = daemon.connect().await;
    partial
        .send_raw(br#"{"execute": "blockdev-add", "arguments": {"dri"#)
        .await
        .expect("send");
    drop(partial);
    let mut client = daemon.connect().await;
    // Every command that was received ran to its end, reply or not.
    let deadline = Instant::now() + PATIENCE;
    let mut nodes = Value::Null;
    while Instant::now() < deadline {
        nodes = ok(&mut client, "query-named-block-nodes", json!({})).await;
        if nodes.as_array().map(Vec::len) == Some(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(nodes.as_array().map(Vec::len), Some(20));
}

#[tokio::test]
async fn two_monitors_serve_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let second = dir.path().join("second.sock");
    let chardev = format!(
        "socket,id=second,path={},server=on,wait=off",
        second.display()
    );
    let daemon = TestDaemon::start_in(dir, |_| {
        vec![
            "--chardev".into(),
            chardev,
            "--monitor".into(),
            "chardev=second,pretty=on".into(),
        ]
    });
    let mut first = daemon.connect().await;
    let mut other = Client::connect_unix(&second).await.expect("second monitor");
    other.negotiate().await.expect("negotiate");
    ok(
        &mut first,
        "blockdev-add",
        json!({"driver": "null-co", "node-name": "from-first"}),
    )
    .await;
    let nodes = ok(&mut other, "query-named-block-nodes", json!({})).await;
    assert_eq!(nodes[0]["node-name"], "from-first");
    ok(
        &mut other,
        "blockdev-del",
        json!({"node-name": "from-first"}),
    )
    .await;
    let nodes = ok(&mut first, "query-named-block-nodes", json!({})).await;
    assert_eq!(nodes, json!([]));
}

#[tokio::test]
async fn a_tcp_monitor_works() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let chardev = format!("socket,id=tcp,host=127.0.0.1,port={port},server=on,wait=off");
    let daemon = TestDaemon::start(&["--chardev", &chardev, "--monitor", "tcp"]);
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut client = Client::connect_tcp(address).await.expect("tcp monitor");
    client.negotiate().await.expect("negotiate");
    ok(&mut client, "query-version", json!({})).await;
    drop(daemon);
}

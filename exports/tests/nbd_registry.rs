//! The export registry as QMP drives it (`block-export-add/del`,
//! `nbd-server-add/remove/start/stop`, `query-block-exports`), with
//! connected clients, and QSD 10.0's messages.

mod common;

use std::time::Duration;

use common::raw::Raw;
use common::{registry, server_options, ExportSpec, Harness};
use exports::nbd::proto::*;
use schema::export::BlockExportRemoveMode::{Hard, Safe};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn desc<T: std::fmt::Debug>(r: Result<T, schema::QmpError>) -> String {
    r.unwrap_err().desc
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

/// `block-export-add` with JSON arguments.
fn add(h: &Harness, args: Value) -> Result<(), schema::QmpError> {
    h.exports.add(&h.graph, &schema::from_json(args)?, None)
}

/// `nbd-server-add` with JSON arguments.
fn nbd_server_add(h: &Harness, args: Value) -> Result<(), schema::QmpError> {
    h.exports
        .nbd_server_add(&h.graph, &schema::from_json(args)?)
}

fn query(h: &Harness) -> Value {
    serde_json::to_value(h.exports.query()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_checks_and_query() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", MIB);
    h.node("file0", &image).await;
    let ro = h.image("ro.raw", MIB);
    let options = schema::from_json(
        json!({"driver": "file", "node-name": "ro", "filename": ro, "read-only": true}),
    )
    .unwrap();
    h.graph.blockdev_add(&options).await.unwrap();

    add(&h, json!({"type": "nbd", "id": "e0", "node-name": "file0"})).unwrap();
    add(&h, json!({"type": "nbd", "id": "e1", "node-name": "file0", "name": "x", "description": "d", "writable": true})).unwrap();
    assert_eq!(
        query(&h),
        json!([
            {"id": "e1", "type": "nbd", "node-name": "file0", "shutting-down": false},
            {"id": "e0", "type": "nbd", "node-name": "file0", "shutting-down": false},
        ])
    );
    let cases = [
        (
            json!({"type": "nbd", "id": "e0", "node-name": "file0"}),
            "Block export id 'e0' is already in use".to_string(),
        ),
        (
            json!({"type": "nbd", "id": "", "node-name": "file0"}),
            "Invalid block export id".to_string(),
        ),
        (
            json!({"type": "nbd", "id": "a b", "node-name": "file0"}),
            "Invalid block export id".to_string(),
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "nope"}),
            "Cannot find device='' nor node-name='nope'".to_string(),
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "file0"}),
            "NBD server already has export named 'file0'".to_string(),
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "ro", "writable": true}),
            "Cannot export read-only node as writable".to_string(),
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "ro", "bitmaps": ["b0"]}),
            "Bitmap 'b0' is not found".to_string(),
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "ro", "bitmaps": [{"node": "file0", "name": "b"}]}),
            "Dirty bitmap 'b' not found".to_string(),
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "ro", "name": "y".repeat(4097)}),
            format!("export name '{}' too long", "y".repeat(4097)),
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "ro", "description": "z".repeat(4097)}),
            format!("description '{}' too long", "z".repeat(4097)),
        ),
    ];
    for (args, message) in cases {
        assert_eq!(desc(add(&h, args.clone())), message, "{args}");
    }
    // Failed adds leave no trace (and release the node).
    assert_eq!(query(&h).as_array().unwrap().len(), 2);
    add(&h, json!({"type": "nbd", "id": "e2", "node-name": "ro"})).unwrap();

    assert_eq!(
        desc(h.exports.del("nope", Safe)),
        "Export 'nope' is not found"
    );
    h.exports.del("e1", Safe).unwrap();
    assert_eq!(h.deleted(), ["e1"]);
    let remove = schema::from_json(json!({"name": "e2"})).unwrap();
    h.exports.nbd_server_remove(&remove).unwrap();
    assert_eq!(h.deleted(), ["e1", "e2"]);
    assert_eq!(query(&h).as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_nbd_server_add() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", MIB);
    h.node("file0", &image).await;
    let ro = h.image("ro.raw", MIB);
    let options = schema::from_json(
        json!({"driver": "file", "node-name": "ro", "filename": ro, "read-only": true}),
    )
    .unwrap();
    h.graph.blockdev_add(&options).await.unwrap();

    assert_eq!(
        desc(nbd_server_add(&h, json!({"device": "nope"}))),
        "Cannot find device='nope' nor node-name='nope'"
    );
    nbd_server_add(&h, json!({"device": "file0"})).unwrap();
    assert_eq!(
        desc(nbd_server_add(&h, json!({"device": "file0"}))),
        "Block export id 'file0' is already in use"
    );
    // A read-only node is exported read-only instead of refused.
    nbd_server_add(
        &h,
        json!({"device": "ro", "name": "legacy", "writable": true}),
    )
    .unwrap();
    assert_eq!(query(&h)[0]["id"], "legacy");
    let mut c = Raw::connect(&h.socket).await;
    let (_, flags) = c.go("legacy").await;
    assert_ne!(flags & FLAG_READ_ONLY, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_and_hard_delete_with_clients() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", MIB);
    h.node("n", &image).await;
    h.export(&ExportSpec::new("disk"), "n");
    let mut client = Raw::connect(&h.socket).await;
    client.go("disk").await;
    // A client still in the handshake does not hold the export.
    let _handshaking = Raw::connect(&h.socket).await;
    let server = h.exports.nbd_server().unwrap();
    assert_eq!(server.exports().find("disk").unwrap().client_count(), 1);
    assert_eq!(server.connection_count(), 2);
    assert_eq!(
        desc(h.exports.del("disk", Safe)),
        "export 'disk' still in use"
    );
    h.exports.del("disk", Hard).unwrap();
    assert!(client.closed().await);
    wait_until(|| h.deleted().len() == 1).await;
    assert_eq!(query(&h), json!([]));
    // The name and the id are free again.
    h.export(&ExportSpec::new("disk"), "n");
    let mut again = Raw::connect(&h.socket).await;
    again.go("disk").await;
    again.request(0, CMD_READ, 1, 0, 512, &[]).await;
    assert_eq!(again.chunk().await.cookie, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_export_is_unknown_to_new_clients() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", MIB);
    h.node("n", &image).await;
    h.export(&ExportSpec::new("keep"), "n");
    h.export(&ExportSpec::new("gone"), "n");
    let mut keep = Raw::connect(&h.socket).await;
    keep.go("keep").await;
    h.exports.del("gone", Safe).unwrap();
    let mut c = Raw::connect(&h.socket).await;
    let mut data = Vec::new();
    data.extend_from_slice(&4u32.to_be_bytes());
    data.extend_from_slice(b"gone");
    data.extend_from_slice(&0u16.to_be_bytes());
    let replies = c.option(OPT_GO, &data).await;
    assert_eq!(replies[0].kind, REP_ERR_UNKNOWN);
    assert_eq!(replies[0].data, b"export 'gone' not present");
    keep.request(0, CMD_FLUSH, 5, 0, 0, &[]).await;
    assert_eq!(keep.chunk().await.cookie, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_start_and_stop() {
    let (exports, deleted) = registry();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let graph = block::BlockGraph::new();
    let image = dir.path().join("disk.raw");
    std::fs::File::create(&image).unwrap().set_len(MIB).unwrap();
    let node =
        schema::from_json(json!({"driver": "file", "node-name": "n", "filename": image})).unwrap();
    graph.blockdev_add(&node).await.unwrap();
    let export = |id: &str, name: &str| {
        schema::from_json(
            json!({"type": "nbd", "id": id, "node-name": "n", "name": name, "writable": true}),
        )
        .unwrap()
    };

    assert_eq!(
        desc(exports.nbd_server_stop().await),
        "NBD server not running"
    );
    assert_eq!(
        desc(exports.add(&graph, &export("e0", "a"), None)),
        "NBD server not running"
    );
    let mut tls = server_options(&socket, 0, 10);
    tls.tls_creds = Some("tls0".into());
    assert!(desc(exports.nbd_server_start(&tls, None).await).contains("TLS"));
    assert!(!socket.exists(), "no plain-text listener for a TLS server");
    let options = server_options(&socket, 0, 10);
    exports.nbd_server_start(&options, None).await.unwrap();
    assert_eq!(
        desc(exports.nbd_server_start(&options, None).await),
        "NBD server already running"
    );
    exports.add(&graph, &export("e0", "a"), None).unwrap();
    exports.add(&graph, &export("e1", "b"), None).unwrap();
    let mut client = Raw::connect(&socket).await;
    client.go("a").await;
    exports.nbd_server_stop().await.unwrap();
    assert_eq!(*deleted.lock().unwrap(), ["e1", "e0"]);
    assert!(exports.query().is_empty());
    assert!(client.closed().await);
    assert!(!socket.exists(), "socket file removed");
    // It can start again, on the same path, and the node is free again.
    exports.nbd_server_start(&options, None).await.unwrap();
    exports.add(&graph, &export("e0", "a"), None).unwrap();
    let mut client = Raw::connect(&socket).await;
    client.go("a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listen_options() {
    let (exports, _) = registry();
    // A port range whose first port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let options = schema::from_json(json!({
        "addr": {"type": "inet", "host": "127.0.0.1", "port": port.to_string(),
                 "to": port + 20, "ipv4": true, "keep-alive": true},
    }))
    .unwrap();
    exports.nbd_server_start(&options, None).await.unwrap();
    let bound = exports.nbd_server().unwrap().local_addr().unwrap();
    assert!(bound.port() > port && bound.port() <= port + 20, "{bound}");
    let mut stream = tokio::net::TcpStream::connect(bound).await.unwrap();
    let mut greeting = [0; 18];
    use tokio::io::AsyncReadExt;
    stream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    exports.nbd_server_stop().await.unwrap();
    // IPv6 only, on an IPv4 host: nothing to bind.
    let v6 = schema::from_json(json!({
        "addr": {"type": "inet", "host": "127.0.0.1", "port": "0", "ipv6": true},
    }))
    .unwrap();
    assert!(desc(exports.nbd_server_start(&v6, None).await).starts_with("Failed to bind socket"));
}

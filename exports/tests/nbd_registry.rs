//! The export registry as QMP sees it: ids, `query-block-exports`, safe and
//! hard deletion with connected clients, the deletion hook, and
//! `nbd-server-stop` (messages as QSD 10.0 words them).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::raw::Raw;
use common::{ExportSpec, FileBackend, Harness};
use exports::nbd::proto::*;
use exports::nbd::{ListenAddress, NbdExportConfig, NbdServerConfig};
use exports::{BlockExports, RemoveMode};

const MIB: u64 = 1 << 20;

fn desc(r: Result<(), schema::QmpError>) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_names_and_query() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", MIB);
    h.export(&ExportSpec::new("e0"), &image);
    h.export(
        &ExportSpec {
            id: "e1".into(),
            ..ExportSpec::new("other")
        },
        &image,
    );
    let ids: Vec<String> = h.exports.query().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["e1", "e0"], "newest first");
    let backend = FileBackend::open(&image, false, true);
    let config = |name: &str| NbdExportConfig {
        name: name.into(),
        ..NbdExportConfig::default()
    };
    assert_eq!(
        desc(h.exports.add_nbd("e0", "n", backend.clone(), config("x"))),
        "Block export id 'e0' is already in use"
    );
    assert_eq!(
        desc(h.exports.add_nbd("", "n", backend.clone(), config("x"))),
        "Invalid block export id"
    );
    assert_eq!(
        desc(h.exports.add_nbd("a b", "n", backend.clone(), config("x"))),
        "Invalid block export id"
    );
    assert_eq!(
        desc(
            h.exports
                .add_nbd("e2", "n", backend.clone(), config("other"))
        ),
        "NBD server already has export named 'other'"
    );
    let long = "y".repeat(4097);
    assert_eq!(
        desc(h.exports.add_nbd("e2", "n", backend.clone(), config(&long))),
        format!("export name '{long}' too long")
    );
    let writable = NbdExportConfig {
        writable: true,
        ..config("w")
    };
    assert_eq!(
        desc(h.exports.add_nbd("e2", "n", backend, writable)),
        "Cannot export read-only node as writable"
    );
    assert_eq!(
        desc(h.exports.del("nope", RemoveMode::Safe)),
        "Export 'nope' is not found"
    );
    h.exports.del("e1", RemoveMode::Safe).unwrap();
    assert_eq!(*h.deleted.lock().unwrap(), ["e1"]);
    assert_eq!(h.exports.query().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_and_hard_delete_with_clients() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", MIB);
    h.export(&ExportSpec::new("disk"), &image);
    let mut client = Raw::connect(&h.socket).await;
    client.go("disk").await;
    // A client still in the handshake does not hold the export.
    let _handshaking = Raw::connect(&h.socket).await;
    assert_eq!(
        desc(h.exports.del("disk", RemoveMode::Safe)),
        "export 'disk' still in use"
    );
    h.exports.del("disk", RemoveMode::Hard).unwrap();
    assert!(client.closed().await);
    wait_until(|| h.deleted.lock().unwrap().len() == 1).await;
    assert!(h.exports.query().is_empty());
    // The name and the id are free again.
    h.export(&ExportSpec::new("disk"), &image);
    let mut again = Raw::connect(&h.socket).await;
    again.go("disk").await;
    again.request(0, CMD_READ, 1, 0, 512, &[]).await;
    assert_eq!(again.chunk().await.cookie, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_export_is_unknown_to_new_clients() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", MIB);
    h.export(&ExportSpec::new("keep"), &image);
    h.export(&ExportSpec::new("gone"), &image);
    let mut keep = Raw::connect(&h.socket).await;
    keep.go("keep").await;
    h.exports.del("gone", RemoveMode::Safe).unwrap();
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
    let deleted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = Arc::clone(&deleted);
    let exports = BlockExports::new(Arc::new(move |id: &str| {
        record.lock().unwrap().push(id.into())
    }));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let config = NbdServerConfig {
        address: ListenAddress::Unix {
            path: socket.clone(),
            abstract_name: false,
        },
        max_connections: 0,
        handshake_max_seconds: 10,
        tls_creds: None,
        tls_authz: None,
    };
    assert_eq!(
        desc(exports.nbd_server_stop().await),
        "NBD server not running"
    );
    let image = dir.path().join("disk.raw");
    std::fs::File::create(&image).unwrap().set_len(MIB).unwrap();
    let backend = FileBackend::open(&image, true, true);
    let named = |name: &str| NbdExportConfig {
        name: name.into(),
        writable: true,
        ..NbdExportConfig::default()
    };
    assert_eq!(
        desc(exports.add_nbd("e0", "n", backend.clone(), named("a"))),
        "NBD server not running"
    );
    let tls = NbdServerConfig {
        tls_creds: Some("tls0".into()),
        ..config.clone()
    };
    assert!(desc(exports.nbd_server_start(tls).await).contains("TLS"));
    assert!(!socket.exists(), "no plain-text listener for a TLS server");
    exports.nbd_server_start(config.clone()).await.unwrap();
    assert_eq!(
        desc(exports.nbd_server_start(config.clone()).await),
        "NBD server already running"
    );
    exports
        .add_nbd("e0", "n", backend.clone(), named("a"))
        .unwrap();
    exports
        .add_nbd("e1", "n", backend.clone(), named("b"))
        .unwrap();
    let mut client = Raw::connect(&socket).await;
    client.go("a").await;
    exports.nbd_server_stop().await.unwrap();
    assert_eq!(*deleted.lock().unwrap(), ["e1", "e0"]);
    assert!(exports.query().is_empty());
    assert!(client.closed().await);
    assert!(!socket.exists(), "socket file removed");
    // It can start again, on the same path.
    exports.nbd_server_start(config).await.unwrap();
    exports.add_nbd("e0", "n", backend, named("a")).unwrap();
    let mut client = Raw::connect(&socket).await;
    client.go("a").await;
}

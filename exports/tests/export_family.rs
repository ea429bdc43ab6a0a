//! The export family: an export type defined here, in a few dozen lines,
//! is added, listed, deleted safe and hard, and closed with everything
//! else, through the registry alone (nothing in the registry knows it).

use std::sync::{Arc, Mutex};

use block::{BackendPerms, BlockBackend, BlockGraph, IoBuf};
use exports::life::{ExportLife, LifeGuard};
use exports::{BlockExport, BlockExports, ExportContext, ExportDriver};
use schema::export::{BlockExportOptions, BlockExportRemoveMode, BlockExportType};
use schema::QmpError;
use serde_json::json;

/// A test export: it keeps its backend, hands out clients on demand and
/// holds a "mount" that its shutdown releases.
struct Probe {
    backend: BlockBackend,
    life: ExportLife,
    mount: Mutex<Option<LifeGuard>>,
}

/// The probes created, for the test to act as their clients.
static CREATED: Mutex<Vec<Arc<Probe>>> = Mutex::new(Vec::new());

impl BlockExport for Probe {
    fn life(&self) -> &ExportLife {
        &self.life
    }

    fn shutdown(&self) {
        self.mount.lock().unwrap().take();
    }
}

fn create_probe(cx: &ExportContext<'_>) -> Result<Arc<dyn BlockExport>, QmpError> {
    let backend = cx.attach(BackendPerms::export(cx.writable()), false)?;
    let life = ExportLife::new(None);
    let mount = Mutex::new(Some(life.hold()));
    let probe = Arc::new(Probe {
        backend,
        life,
        mount,
    });
    CREATED.lock().unwrap().push(Arc::clone(&probe));
    Ok(probe)
}

/// The probe type stands in for VDUSE, which the daemon does not have.
const PROBE: ExportDriver = ExportDriver {
    kind: BlockExportType::VduseBlk,
    create: create_probe,
};

fn options(id: &str, node: &str) -> BlockExportOptions {
    schema::from_json(json!({
        "type": "vduse-blk", "id": id, "node-name": node, "name": id, "writable": true,
    }))
    .expect("options")
}

fn probe(id_index: usize) -> Arc<Probe> {
    Arc::clone(&CREATED.lock().unwrap()[id_index])
}

#[tokio::test]
async fn a_test_export_type_lives_the_whole_life_cycle() {
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&deleted);
    let events = Arc::new(move |e: schema::event::Event| {
        record.lock().unwrap().push((e.event, e.data["id"].clone()));
    });
    let exports = BlockExports::with_drivers(events, &[PROBE]);
    let graph = BlockGraph::new();
    let node = json!({"driver": "null-co", "node-name": "null", "size": 1 << 20});
    graph
        .blockdev_add(&schema::from_json(node).unwrap())
        .await
        .unwrap();

    // Types outside the table are refused with QEMU's message.
    let nbd: BlockExportOptions =
        schema::from_json(json!({"type": "nbd", "id": "n", "node-name": "null"})).unwrap();
    let err = exports.add(&graph, &nbd, None).unwrap_err();
    assert_eq!(err.desc, "No driver found for the requested export type");

    exports.add(&graph, &options("p0", "null"), None).unwrap();
    exports.add(&graph, &options("p1", "null"), None).unwrap();
    let err = exports
        .add(&graph, &options("p1", "null"), None)
        .unwrap_err();
    assert_eq!(err.desc, "Block export id 'p1' is already in use");
    let listed = serde_json::to_value(exports.query()).unwrap();
    assert_eq!(
        listed,
        json!([
            {"id": "p1", "type": "vduse-blk", "node-name": "null", "shutting-down": false},
            {"id": "p0", "type": "vduse-blk", "node-name": "null", "shutting-down": false},
        ])
    );

    // The backend works, and a client makes the export in use.
    let p0 = probe(0);
    let buf = IoBuf::zeroed(4096);
    p0.backend.read(0, &buf).await.unwrap();
    let client = p0.life.attach_client().unwrap();
    let err = exports.del("p0", BlockExportRemoveMode::Safe).unwrap_err();
    assert_eq!(err.desc, "export 'p0' still in use");
    assert!(deleted.lock().unwrap().is_empty());

    // A hard delete tells the client to go; the export is listed as
    // shutting down until it has.
    exports.del("p0", BlockExportRemoveMode::Hard).unwrap();
    assert!(p0.life.disconnect_token().is_cancelled());
    assert!(p0.life.attach_client().is_none());
    assert!(exports
        .query()
        .iter()
        .any(|e| e.id == "p0" && e.shutting_down));
    let err = exports.del("p0", BlockExportRemoveMode::Hard).unwrap_err();
    assert_eq!(err.desc, "Export 'p0' is already shutting down");
    drop(client);
    assert_eq!(
        *deleted.lock().unwrap(),
        [("BLOCK_EXPORT_DELETED".to_string(), json!("p0"))]
    );

    // A safe delete of an idle export; its mount is released on shutdown.
    exports.del("p1", BlockExportRemoveMode::Safe).unwrap();
    assert!(probe(1).mount.lock().unwrap().is_none());
    assert_eq!(deleted.lock().unwrap().len(), 2);
    assert!(exports.query().is_empty());

    // Closing everything (daemon exit) waits for clients to go.
    exports.add(&graph, &options("p2", "null"), None).unwrap();
    let p2 = probe(2);
    let client = p2.life.attach_client().unwrap();
    let closing = tokio::spawn({
        let exports = exports.clone();
        async move { exports.close_all().await }
    });
    p2.life.disconnect_token().cancelled().await;
    drop(client);
    closing.await.unwrap();
    assert!(exports.query().is_empty());
    assert_eq!(deleted.lock().unwrap().last().unwrap().1, json!("p2"));
    // The node is free again once every export let go of it.
    drop((p0, p2));
    CREATED.lock().unwrap().clear();
    graph.blockdev_del("null").await.unwrap();
}

//! Inactive nodes refuse writes at the node itself, whoever sends them: a
//! backend that allows an inactive node (an `allow-inactive` export) keeps
//! its handle through `blockdev-set-active false`, and a write that reaches
//! the node then (one that waited out the drained hand-off, say) fails
//! with `EPERM` and leaves the image as it was; after activation it
//! writes again.

mod common;

use block::{
    BackendMode, BackendPerms, BlockGraph, ErrorKind, ExportAttach, IoBuf, WriteFlags, ZeroFlags,
};
use common::{add, image, pattern};
use serde_json::json;

#[tokio::test]
async fn an_inactive_node_refuses_writes_that_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0",
               "file": {"driver": "file", "filename": path}}),
    )
    .await;
    let backend = graph
        .attach_export_backend(&ExportAttach {
            node_name: "r0",
            perms: BackendPerms::export(true),
            allow_inactive: true,
            mode: BackendMode::default(),
        })
        .unwrap();
    let ones = || IoBuf::from_vec(vec![1u8; 4096]);
    backend
        .write(0, &ones(), WriteFlags::default())
        .await
        .unwrap();

    graph.set_active(None, false).await.unwrap();
    let before = std::fs::read(&path).unwrap();
    let refused = [
        backend.write(4096, &ones(), WriteFlags::default()).await,
        backend.write_zeroes(0, 4096, ZeroFlags::default()).await,
    ];
    for result in refused {
        let error = result.unwrap_err();
        assert_eq!(error.kind, ErrorKind::PermissionDenied, "{error}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
    let read = IoBuf::zeroed(4096);
    backend.read(0, &read).await.unwrap();
    assert_eq!(read.to_vec(), [1u8; 4096], "reads go on");

    graph.set_active(None, true).await.unwrap();
    backend
        .write(4096, &ones(), WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap()[4096..8192], [1u8; 4096]);
}

//! A backend's modes, whatever the export above it: writethrough makes
//! every write and write-zeroes FUA and follows a discard with a flush;
//! growable grows the node for a write past the end (and concurrent ones
//! never shrink what another grew), otherwise such a write is refused.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use block::{
    BackendMode, BackendPerms, BlockDriver, BlockGraph, BlockResult, ErrorKind, ExportAttach,
    IoBuf, NodeChild, Perm, WriteFlags, ZeroFlags,
};
use common::{add, image, pattern};
use serde_json::json;

/// Passes requests on, noting each with its FUA flag.
struct FuaRecorder {
    child: Arc<NodeChild>,
    seen: Arc<Mutex<Vec<(&'static str, bool)>>>,
}

#[async_trait]
impl BlockDriver for FuaRecorder {
    fn format_name(&self) -> &'static str {
        "fua-recorder"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.child)
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.seen.lock().unwrap().push(("write", flags.fua));
        self.child.write(offset, buf, flags).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.seen.lock().unwrap().push(("zeroes", flags.fua));
        self.child.write_zeroes(offset, len, flags).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.seen.lock().unwrap().push(("discard", false));
        self.child.discard(offset, len).await
    }

    async fn flush(&self) -> BlockResult<()> {
        self.seen.lock().unwrap().push(("flush", false));
        self.child.flush().await
    }
}

fn attach(graph: &BlockGraph, node: &str, perm: Perm, mode: BackendMode) -> block::BlockBackend {
    graph
        .attach_export_backend(&ExportAttach {
            node_name: node,
            perms: BackendPerms {
                perm,
                shared: Perm::ALL,
            },
            allow_inactive: false,
            mode,
        })
        .unwrap()
}

#[tokio::test]
async fn writethrough_forces_writes_to_the_medium() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 1 << 20, pattern);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "file", "node-name": "f", "filename": path}),
    )
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    graph
        .add_filter(Some("rec"), "f", move |child| {
            Ok(Box::new(FuaRecorder {
                child,
                seen: record,
            }))
        })
        .await
        .unwrap();
    let rw = Perm::CONSISTENT_READ | Perm::WRITE;
    let through = BackendMode {
        writethrough: true,
        growable: false,
    };
    for (mode, expected) in [
        (
            BackendMode::default(),
            vec![("write", false), ("zeroes", false), ("discard", false)],
        ),
        (
            through,
            vec![
                ("write", true),
                ("zeroes", true),
                ("discard", false),
                ("flush", false),
            ],
        ),
    ] {
        let backend = attach(&graph, "rec", rw, mode);
        assert_eq!(backend.mode(), mode);
        let data = IoBuf::from_vec(vec![7; 4096]);
        backend
            .write(0, &data, WriteFlags::default())
            .await
            .unwrap();
        let zero = ZeroFlags::default();
        backend.write_zeroes(4096, 4096, zero).await.unwrap();
        backend.discard(8192, 4096).await.unwrap();
        assert_eq!(std::mem::take(&mut *seen.lock().unwrap()), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growable_backends_grow_and_others_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 65536, pattern);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "file", "node-name": "f", "filename": path}),
    )
    .await;
    let rw = Perm::CONSISTENT_READ | Perm::WRITE;
    let fixed = attach(&graph, "f", rw, BackendMode::default());
    let data = IoBuf::from_vec(vec![9; 4096]);
    let err = fixed.write(65536, &data, WriteFlags::default()).await;
    assert_eq!(err.unwrap_err().kind, ErrorKind::NoSpace);
    drop(fixed);

    let growable = BackendMode {
        writethrough: false,
        growable: true,
    };
    let backend = attach(&graph, "f", rw | Perm::RESIZE, growable);
    // Writes past the end at once, from the farthest: the node ends up
    // as large as the farthest one, never smaller.
    let writes = (0..8u64).rev().map(|i| {
        let backend = backend.clone();
        let data = IoBuf::from_vec(vec![i as u8 + 1; 4096]);
        tokio::spawn(async move {
            let offset = 65536 + i * 8192;
            backend.write(offset, &data, WriteFlags::default()).await
        })
    });
    for write in writes.collect::<Vec<_>>() {
        write.await.unwrap().unwrap();
    }
    assert_eq!(backend.size(), 65536 + 7 * 8192 + 4096);
    backend
        .write_zeroes(backend.size(), 512, ZeroFlags::default())
        .await
        .unwrap();
    assert_eq!(backend.size(), 65536 + 7 * 8192 + 4096 + 512);
    let back = IoBuf::zeroed(4096);
    backend.read(65536 + 3 * 8192, &back).await.unwrap();
    assert!(back.to_vec().iter().all(|&b| b == 4));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        65536 + 7 * 8192 + 4096 + 512
    );
}

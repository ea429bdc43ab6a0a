//! The write chokepoint: observers attached to a node see every write,
//! write-zeroes, discard and resize before and after the driver does it,
//! can refuse one (and nothing is written), and see nothing once detached.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use block::{
    BlockError, BlockGraph, BlockResult, ErrorKind, IoBuf, Node, WriteFlags, WriteKind,
    WriteObserver, WriteRequest, ZeroFlags,
};
use common::{add, image, pattern};
use serde_json::json;

const MIB: usize = 1 << 20;

/// Records what it sees; refuses writes at `refuse_at` if set.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(&'static str, WriteRequest, bool)>>,
    refuse_at: Option<u64>,
}

#[async_trait]
impl WriteObserver for Recorder {
    async fn before_write(&self, node: &Node, request: &WriteRequest) -> BlockResult<()> {
        assert_eq!(node.name(), "f0");
        self.seen.lock().unwrap().push(("before", *request, true));
        if self.refuse_at == Some(request.offset) {
            return Err(BlockError::new(ErrorKind::Io, "refused by the observer"));
        }
        Ok(())
    }

    fn after_write(&self, _node: &Node, request: &WriteRequest, result: &BlockResult<()>) {
        self.seen
            .lock()
            .unwrap()
            .push(("after", *request, result.is_ok()));
    }
}

fn request(kind: WriteKind, offset: u64, len: u64) -> WriteRequest {
    WriteRequest { kind, offset, len }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_see_every_write_side_request_of_their_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB, pattern);
    let graph = BlockGraph::new();
    let node = add(
        &graph,
        json!({"driver": "file", "node-name": "f0", "filename": path,
               "discard": "unmap", "detect-zeroes": "on"}),
    )
    .await;
    let recorder = Arc::new(Recorder::default());
    let observer: Arc<dyn WriteObserver> = recorder.clone();
    node.attach_write_observer(observer.clone());
    let backend = graph.attach_backend("f0", true).unwrap();
    let plain = WriteFlags::default();
    backend
        .write(4096, &IoBuf::copy_of(&[1; 512]), plain)
        .await
        .unwrap();
    // detect-zeroes turns a zero buffer into write-zeroes.
    backend
        .write(8192, &IoBuf::zeroed(512), plain)
        .await
        .unwrap();
    backend
        .write_zeroes(0, 1024, ZeroFlags::default())
        .await
        .unwrap();
    backend.discard(65536, 65536).await.unwrap();
    // Reads and flushes are not writes.
    backend.read(0, &IoBuf::zeroed(512)).await.unwrap();
    backend.flush().await.unwrap();
    // An export shares everything but resize: it goes for `block_resize`.
    drop(backend);
    graph
        .resize(None, Some("f0"), 2 * MIB as i64)
        .await
        .unwrap();
    let expected: Vec<WriteRequest> = vec![
        request(WriteKind::Write, 4096, 512),
        request(WriteKind::Zeroes, 8192, 512),
        request(WriteKind::Zeroes, 0, 1024),
        request(WriteKind::Discard, 65536, 65536),
        request(WriteKind::Resize, 2 * MIB as u64, 0),
    ];
    let seen = recorder.seen.lock().unwrap().clone();
    let pairs: Vec<(&str, WriteRequest, bool)> = expected
        .iter()
        .flat_map(|r| [("before", *r, true), ("after", *r, true)])
        .collect();
    assert_eq!(seen, pairs);

    node.detach_write_observer(&observer);
    let backend = graph.attach_backend("f0", true).unwrap();
    backend
        .write(0, &IoBuf::copy_of(&[2; 512]), plain)
        .await
        .unwrap();
    assert_eq!(recorder.seen.lock().unwrap().len(), pairs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_that_refuses_a_write_leaves_the_data_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB, pattern);
    let graph = BlockGraph::new();
    let node = add(
        &graph,
        json!({"driver": "file", "node-name": "f0", "filename": path}),
    )
    .await;
    let recorder = Arc::new(Recorder {
        refuse_at: Some(4096),
        ..Recorder::default()
    });
    node.attach_write_observer(recorder.clone());
    // The format above writes through the file node: the observer of the
    // file sees the format's writes too.
    add(
        &graph,
        json!({"driver": "raw", "node-name": "fmt", "file": "f0"}),
    )
    .await;
    let backend = graph.attach_backend("fmt", true).unwrap();
    let err = backend
        .write(4096, &IoBuf::copy_of(&[9; 4096]), WriteFlags::default())
        .await
        .unwrap_err();
    assert_eq!(err.message, "refused by the observer");
    let data = std::fs::read(&path).unwrap();
    assert!(data[4096..8192]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(4096 + i)));
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        [("before", request(WriteKind::Write, 4096, 4096), true)]
    );
}

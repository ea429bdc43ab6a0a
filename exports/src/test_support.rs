//! What the unit tests of several export types share: a node to export.

/// A `file` node over `data` in a file on tmpfs (whose reads never wait,
/// so they can be spliced), and a backend on it, `writable` or not; the
/// directory holds the file until dropped.
pub async fn tmpfs_backend(
    data: &[u8],
    writable: bool,
) -> (tempfile::TempDir, block::BlockBackend) {
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs directory");
    let path = dir.path().join("data");
    std::fs::write(&path, data).unwrap();
    let graph = block::BlockGraph::new();
    let options = schema::from_json(serde_json::json!({
        "driver": "file", "node-name": "f", "filename": path,
    }))
    .unwrap();
    graph.blockdev_add(&options).await.unwrap();
    (dir, graph.attach_backend("f", writable).unwrap())
}

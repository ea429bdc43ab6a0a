//! qcow2 nodes in the graph: the image and its backing chain open as QSD
//! opens them (node order, read-only backing, permissions, locks), data
//! flows through, and deleting the node closes the chain cleanly.

mod bytes_io;
mod common;
mod qcow2_support;

use bytes_io::BytesIo;
use std::path::Path;
use std::process::Command;

use block::{BlockGraph, WriteFlags};
use common::{add, add_err, pattern};
use qcow2_support::qemu_img;
use serde_json::json;

const MIB: usize = 1 << 20;

/// `base.raw` (1 MiB of the test pattern) under `top.qcow2`.
fn chain(dir: &Path) -> (String, String) {
    let base = common::image(dir, "base.raw", MIB, pattern);
    let top = dir.join("top.qcow2");
    let (base, top) = (
        base.to_str().unwrap().to_string(),
        top.to_str().unwrap().to_string(),
    );
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", &top,
    ]);
    (base, top)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qcow2_image_opens_its_backing_chain_like_qsd() {
    let dir = tempfile::tempdir().unwrap();
    let (base, top) = chain(dir.path());
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "qcow2", "node-name": "q0", "file": {"driver": "file", "filename": top}}),
    )
    .await;

    let info = serde_json::to_value(graph.query_named_block_nodes(false)).unwrap();
    let nodes = info.as_array().unwrap();
    // QSD's order: the backing chain opens after the format node.
    let summary: Vec<(String, bool, String)> = nodes
        .iter()
        .map(|n| {
            (
                n["drv"].as_str().unwrap().to_string(),
                n["ro"].as_bool().unwrap(),
                n["file"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("raw".to_string(), true, base.clone()),
            ("file".to_string(), true, base.clone()),
            ("qcow2".to_string(), false, top.clone()),
            ("file".to_string(), false, top.clone()),
        ]
    );
    let q0 = &nodes[2];
    assert_eq!(q0["node-name"], "q0");
    assert_eq!(q0["backing_file"], base.as_str());
    assert_eq!(q0["backing_file_depth"], 1);
    assert_eq!(q0["image"]["full-backing-filename"], base.as_str());
    assert_eq!(q0["image"]["cluster-size"], 65536);
    assert_eq!(q0["image"]["dirty-flag"], false);
    assert_eq!(q0["image"]["backing-image"]["format"], "raw");
    assert_eq!(q0["image"]["backing-image"]["filename"], base.as_str());

    let graph_json = serde_json::to_value(graph.debug_block_graph()).unwrap();
    assert_eq!(
        graph_json["edges"],
        json!([
            {"parent": 3, "child": 4, "name": "file", "perm": [],
             "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"]},
            {"parent": 2, "child": 1, "name": "file",
             "perm": ["resize", "write", "consistent-read"],
             "shared-perm": ["write-unchanged", "consistent-read"]},
            {"parent": 2, "child": 3, "name": "backing", "perm": [],
             "shared-perm": ["resize", "write-unchanged", "write", "consistent-read"]}
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_flows_through_the_chain_and_the_image_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (base, top) = chain(dir.path());
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "file", "node-name": "image", "filename": top}),
    )
    .await;
    add(
        &graph,
        json!({"driver": "qcow2", "node-name": "q0", "file": "image"}),
    )
    .await;
    let backend = graph.attach_backend("q0", true).unwrap();
    let mut buf = vec![0u8; 8192];
    backend.read_into(100_000, &mut buf).await.unwrap();
    assert!(buf
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(100_000 + i)));

    backend
        .write_from(100_000, &[0xAB; 5000], WriteFlags::default())
        .await
        .unwrap();
    backend.flush().await.unwrap();
    backend.read_into(99_000, &mut buf).await.unwrap();
    for (i, &b) in buf.iter().enumerate() {
        let offset = 99_000 + i;
        let expected = if (100_000..105_000).contains(&offset) {
            0xAB
        } else {
            pattern(offset)
        };
        assert_eq!(b, expected, "offset {offset}");
    }
    // The base is never written.
    assert!(std::fs::read(&base)
        .unwrap()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i)));

    // While the image is open for writing, qemu-io cannot write it.
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write 0 512", &top])
        .output()
        .unwrap();
    assert!(!io.status.success());
    assert!(String::from_utf8_lossy(&io.stderr).contains("lock"));

    drop(backend);
    graph.blockdev_del("q0").await.unwrap();
    assert_eq!(
        graph.node_names(),
        ["image"],
        "the backing chain closed with q0"
    );
    graph.blockdev_del("image").await.unwrap();
    assert!(qemu_img(&["check", &top]).contains("No errors were found"));
    let map = qemu_img(&["map", "--output=json", "-f", "qcow2", &top]);
    assert!(map.contains("\"depth\": 0"), "{map}");
}

#[tokio::test]
async fn backing_options_override_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let (_base, top) = chain(dir.path());
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "qcow2", "node-name": "q0", "backing": null, "read-only": true,
               "file": {"driver": "file", "filename": top}}),
    )
    .await;
    let backend = graph.attach_backend("q0", false).unwrap();
    let mut buf = vec![0xFFu8; 4096];
    backend.read_into(0, &mut buf).await.unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "no backing: unallocated reads zeroes"
    );
    assert_eq!(graph.node_names().len(), 2);
    assert_eq!(
        add_err(
            &graph,
            json!({"driver": "qcow2", "node-name": "q1", "backing": "nope",
                   "file": {"driver": "file", "filename": top, "read-only": true}, "read-only": true}),
        )
        .await,
        "Cannot find device='nope' nor node-name='nope'"
    );
    assert_eq!(graph.node_names().len(), 2, "the failed open left nothing");
}

#[tokio::test]
async fn a_missing_backing_file_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("orphan.qcow2");
    let top = top.to_str().unwrap();
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", "gone.raw", "-F", "raw", top, "1M",
    ]);
    let graph = BlockGraph::new();
    let message = add_err(
        &graph,
        json!({"driver": "qcow2", "node-name": "q0", "file": {"driver": "file", "filename": top}}),
    )
    .await;
    assert!(
        message.starts_with("Could not open backing file: Could not open '")
            && message.ends_with("gone.raw': No such file or directory"),
        "{message}"
    );
    assert!(graph.node_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_all_leaves_images_clean_and_unlocked() {
    let dir = tempfile::tempdir().unwrap();
    let (_base, top) = chain(dir.path());
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "qcow2", "node-name": "q0", "file": {"driver": "file", "filename": top}}),
    )
    .await;
    let backend = graph.attach_backend("q0", true).unwrap();
    backend
        .write_from(0, &[7u8; 70_000], WriteFlags::default())
        .await
        .unwrap();
    drop(backend);
    graph.close_all().await;
    assert!(graph.node_names().is_empty());
    assert!(qemu_img(&["check", &top]).contains("No errors were found"));
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 7 0 70000", &top])
        .output()
        .unwrap();
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_is_reported_as_an_event() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("bad.qcow2");
    let image = image.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", image, "1M"]);
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 5 0 4096", image])
        .output()
        .unwrap();
    assert!(io.status.success());
    // Point the first L1 entry at an unaligned L2 table.
    let mut bytes = std::fs::read(image).unwrap();
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
    bytes[l1..l1 + 8].copy_from_slice(&(0x8000_0000_0001_0200u64).to_be_bytes());
    std::fs::write(image, bytes).unwrap();

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let graph = BlockGraph::with_events(Arc::new(move |e: schema::event::Event| {
        sink.lock().unwrap().push(e)
    }));
    add(
        &graph,
        json!({"driver": "qcow2", "node-name": "q0", "file": {"driver": "file", "filename": image}}),
    )
    .await;
    let backend = graph.attach_backend("q0", false).unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(backend.read_into(0, &mut buf).await.is_err());
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "BLOCK_IMAGE_CORRUPTED");
    assert_eq!(events[0].data["node-name"], "q0");
    assert_eq!(events[0].data["device"], "");
    assert_eq!(events[0].data["fatal"], true);
}

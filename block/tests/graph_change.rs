//! The graph changing under load: drained sections hold new requests and
//! wait for those in flight; a node replaced for its users and a child
//! edge moved while writers run lose nothing; changes whose permissions
//! conflict leave everything as it was.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use block::{BlockGraph, ChildRole, ErrorKind, IoBuf, WriteFlags};
use common::{add, file_node, image, pattern};
use serde_json::json;

const MIB: usize = 1 << 20;

fn raw_over(name: &str, file: &str) -> serde_json::Value {
    json!({"driver": "raw", "node-name": name, "file": file})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_section_waits_for_requests_in_flight_and_holds_new_ones() {
    let graph = BlockGraph::new();
    // Every request takes 50 ms.
    let node = add(
        &graph,
        json!({"driver": "null-co", "node-name": "slow", "latency-ns": 50_000_000}),
    )
    .await;
    let backend = graph.attach_backend("slow", false).unwrap();
    let reader = |backend: block::BlockBackend| {
        tokio::spawn(async move { backend.read(0, &IoBuf::zeroed(512)).await })
    };
    let first = reader(backend.clone());
    while node.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let drained = graph.drained(std::slice::from_ref(&node)).await;
    // The request in flight finished before the section began.
    assert_eq!(node.in_flight(), 0);
    let held = reader(backend.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!held.is_finished(), "a request entered a drained section");
    assert_eq!(node.in_flight(), 0);
    drop(drained);
    held.await.unwrap().unwrap();
    first.await.unwrap().unwrap();
}

/// Writers that write and read back their own ranges until told to stop;
/// returns how many rounds they completed.
fn start_writers(
    backend: &block::BlockBackend,
    count: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..count)
        .map(|writer| {
            let backend = backend.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let offset = (writer * 64 + round % 64) * 4096;
                    let byte = (writer * 31 + round) as u8;
                    let data = IoBuf::copy_of(&[byte; 4096]);
                    backend
                        .write(offset, &data, WriteFlags::default())
                        .await
                        .unwrap();
                    let back = IoBuf::zeroed(4096);
                    backend.read(offset, &back).await.unwrap();
                    assert!(back.to_vec().iter().all(|&b| b == byte), "lost a write");
                    round += 1;
                }
                round
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaced_under_writers_takes_over_their_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 4 * MIB, pattern);
    let graph = BlockGraph::new();
    add(&graph, file_node("file0", &path)).await;
    add(&graph, raw_over("a", "file0")).await;
    add(&graph, raw_over("b", "file0")).await;
    let backend = graph.attach_backend("a", true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&backend, 4, &stop);
    for (from, to) in [("a", "b"), ("b", "a"), ("a", "b")] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        graph.replace_node(from, to).await.unwrap();
        assert_eq!(backend.node_name(), to);
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        assert!(writer.await.unwrap() > 0);
    }
    assert_eq!(graph.node("b").unwrap().in_flight(), 0);
    // The old node has no user left but the monitor: it can go.
    graph.blockdev_del("a").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_inserted_and_removed_below_a_format_under_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 4 * MIB, pattern);
    let graph = BlockGraph::new();
    add(&graph, file_node("file0", &path)).await;
    add(&graph, raw_over("fmt", "file0")).await;
    // A pass-through node over the same file, to put between them.
    add(&graph, raw_over("mid", "file0")).await;
    let backend = graph.attach_backend("fmt", true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&backend, 4, &stop);
    let fmt = graph.node("fmt").unwrap();
    for below in ["mid", "file0", "mid", "file0"] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        graph
            .set_child("fmt", ChildRole::File, below)
            .await
            .unwrap();
        assert_eq!(fmt.child(ChildRole::File).unwrap().name(), below);
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        assert!(writer.await.unwrap() > 0);
    }
    // Untouched bytes are the file's own.
    let tail = IoBuf::zeroed(4096);
    backend.read(3 * MIB as u64, &tail).await.unwrap();
    assert_eq!(
        tail.to_vec()[..4],
        (3 * MIB..3 * MIB + 4).map(pattern).collect::<Vec<_>>()[..]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_child_edge_moved_to_another_file_reads_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let first = image(dir.path(), "first.img", MIB, |_| 1);
    let second = image(dir.path(), "second.img", MIB, |_| 2);
    let graph = BlockGraph::new();
    add(&graph, file_node("f1", &first)).await;
    add(&graph, file_node("f2", &second)).await;
    add(&graph, raw_over("fmt", "f1")).await;
    let backend = graph.attach_backend("fmt", false).unwrap();
    graph.set_child("fmt", ChildRole::File, "f2").await.unwrap();
    let buf = IoBuf::zeroed(4096);
    backend.read(0, &buf).await.unwrap();
    assert!(buf.to_vec().iter().all(|&b| b == 2));
    // f1 lost its only parent; f2 cannot be deleted while fmt uses it.
    graph.blockdev_del("f1").await.unwrap();
    assert!(graph.blockdev_del("f2").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_permissions_conflict_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB, pattern);
    let other = image(dir.path(), "other.img", MIB, pattern);
    let graph = BlockGraph::new();
    add(&graph, file_node("file0", &path)).await;
    add(
        &graph,
        json!({"driver": "file", "node-name": "ro", "filename": other, "read-only": true}),
    )
    .await;
    add(&graph, raw_over("fmt", "file0")).await;
    let backend = graph.attach_backend("fmt", true).unwrap();
    // A writable export cannot move onto a read-only node, nor can the
    // format's file edge (which the export writes through).
    let err = graph.replace_node("fmt", "ro").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    assert_eq!(backend.node_name(), "fmt");
    let err = graph
        .set_child("fmt", ChildRole::File, "ro")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    let fmt = graph.node("fmt").unwrap();
    assert_eq!(fmt.child(ChildRole::File).unwrap().name(), "file0");
    backend
        .write(0, &IoBuf::copy_of(b"still"), WriteFlags::default())
        .await
        .unwrap();
    // A cycle is refused before anything moves.
    let err = graph
        .set_child("fmt", ChildRole::File, "fmt")
        .await
        .unwrap_err();
    assert!(err.message.contains("cycle"), "{err}");
}

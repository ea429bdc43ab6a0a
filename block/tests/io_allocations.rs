//! Heap allocations per 4 KiB read through the block stack (backend, node,
//! driver), counted by a global allocator: a raw file node and a qcow2
//! node over one, on tmpfs so that every read completes inline. The
//! bounds guard against allocations creeping into the request path.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use block::{BlockBackend, BlockGraph, IoBuf};
use common::{add, file_node, image, pattern};
use serde_json::json;

struct CountingAllocator;

thread_local! {
    /// Allocations made by this thread while counting.
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counter is a thread-local cell without a destructor.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get().map(|n| n + 1)));
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const READS: u64 = 1000;

/// Allocations per 4 KiB read of `backend`, one buffer reused for all.
async fn allocations_per_read(backend: &BlockBackend) -> f64 {
    let buf = IoBuf::zeroed(4096);
    // Warm up caches (qcow2's L2 table) before counting.
    backend.read(0, &buf).await.unwrap();
    COUNT.with(|c| c.set(Some(0)));
    for i in 0..READS {
        backend.read((i % 256) * 4096, &buf).await.unwrap();
    }
    let count = COUNT.with(|c| c.take()).unwrap();
    assert_eq!(
        buf.to_vec()[..16],
        (0..16).map(pattern).collect::<Vec<_>>()[..]
    );
    count as f64 / READS as f64
}

fn tmpfs_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(Path::new("/dev/shm")).expect("tmpfs")
}

#[tokio::test(flavor = "current_thread")]
async fn a_raw_file_read_allocates_once() {
    let dir = tmpfs_dir();
    let path = image(dir.path(), "disk.img", 1 << 20, |i| pattern(i % 4096));
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    let backend = graph.attach_backend("f0", false).unwrap();
    let per_read = allocations_per_read(&backend).await;
    println!("file: {per_read:.2} allocations per 4 KiB read");
    assert!(per_read <= 1.0, "{per_read} allocations per read");
}

#[tokio::test(flavor = "current_thread")]
async fn a_qcow2_read_allocates_a_few_times() {
    let dir = tmpfs_dir();
    let raw = image(dir.path(), "disk.raw", 1 << 20, |i| pattern(i % 4096));
    let qcow2 = dir.path().join("disk.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .expect("qemu-img runs");
    assert!(status.success());
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "qcow2", "node-name": "q0", "file": file_node("f0", &qcow2)}),
    )
    .await;
    let backend = graph.attach_backend("q0", false).unwrap();
    let per_read = allocations_per_read(&backend).await;
    println!("qcow2: {per_read:.2} allocations per 4 KiB read");
    assert!(per_read <= 4.0, "{per_read} allocations per read");
}

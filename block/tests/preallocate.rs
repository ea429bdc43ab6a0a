//! The `preallocate` filter under a user that grows its file, as a format
//! does (here a test filter that shows a large virtual size and writes
//! past the end of its child): the file grows ahead by `prealloc-size`,
//! the node's size follows the data, zeroes written into the grown tail
//! cost nothing, growing by `block_resize` gives the exact size, and when
//! the user goes the file is cut back to the data and the filter lets go
//! of it. Refused options change nothing.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use block::{BackendPerms, BlockDriver, BlockGraph, IoBuf, NodeChild, Perm, WriteFlags, ZeroFlags};
use common::{add, add_err, file_node, sparse_image};
use serde_json::json;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A user that may write anywhere in 64 MiB and takes resize, as a qcow2
/// node over its file does.
struct Growing(Arc<NodeChild>);

#[async_trait]
impl BlockDriver for Growing {
    fn format_name(&self) -> &'static str {
        "growing"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.0)
    }

    fn size(&self) -> u64 {
        64 * MIB
    }

    fn child_perm(
        &self,
        _child: &NodeChild,
        _writable: bool,
        perm: Perm,
        shared: Perm,
    ) -> (Perm, Perm) {
        (perm | Perm::RESIZE, shared)
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// Waits (at most 5 s) until `path` is `len` bytes long.
async fn wait_len(path: &Path, len: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while file_len(path) != len {
        assert!(
            Instant::now() < deadline,
            "{} is {} bytes, not {len}",
            path.display(),
            file_len(path)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A 64 KiB file under a `preallocate` node (1 MiB ahead, 64 KiB aligned)
/// under a growing user.
async fn setup(dir: &Path) -> (BlockGraph, std::path::PathBuf) {
    let image = sparse_image(dir, "disk.img", 64 * KIB);
    let graph = BlockGraph::new();
    add(&graph, file_node("f", &image)).await;
    add(
        &graph,
        json!({"driver": "preallocate", "node-name": "p", "file": "f",
               "prealloc-size": MIB, "prealloc-align": 64 * KIB}),
    )
    .await;
    graph
        .add_filter(Some("grow"), "p", |child| Ok(Box::new(Growing(child))))
        .await
        .expect("user added");
    (graph, image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_grows_ahead_and_is_cut_back_to_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, image) = setup(dir.path()).await;
    let p = graph.node("p").unwrap();
    let user = graph.attach_backend("grow", true).unwrap();
    let write = |offset: u64, byte: u8| {
        let user = &user;
        async move {
            user.write(
                offset,
                &IoBuf::from_vec(vec![byte; 4096]),
                WriteFlags::default(),
            )
            .await
            .unwrap()
        }
    };

    // Past the end: the file grows to 1 MiB past the write, 64 KiB aligned.
    write(64 * KIB, 0x11).await;
    assert_eq!(file_len(&image), MIB + 128 * KIB);
    assert_eq!(p.size(), 68 * KIB);
    // Inside the grown file: no growth, the node's size follows the data.
    write(100 * KIB, 0x22).await;
    assert_eq!(file_len(&image), MIB + 128 * KIB);
    assert_eq!(p.size(), 104 * KIB);
    // Zeroes in the grown tail are there already.
    user.write_zeroes(200 * KIB, 4096, ZeroFlags::default())
        .await
        .unwrap();
    assert_eq!(p.size(), 204 * KIB);
    // Past the grown end: grows again.
    write(2 * MIB, 0x33).await;
    assert_eq!(file_len(&image), 3 * MIB + 64 * KIB);

    // Nobody else may write to or resize the file meanwhile.
    let Err(refused) = graph.attach_backend("f", true) else {
        panic!("a writer on the file was let in");
    };
    assert!(
        refused.message.contains("Permission conflict on node 'f'"),
        "{}",
        refused.message
    );

    // The user goes: the file is cut back to the data, the filter lets go.
    user.flush().await.unwrap();
    drop(user);
    graph.blockdev_del("grow").await.unwrap();
    wait_len(&image, 2 * MIB + 4 * KIB).await;
    let other = graph.attach_backend("f", true).expect("the file is free");
    let data = std::fs::read(&image).unwrap();
    assert_eq!(data[64 * KIB as usize], 0x11);
    assert_eq!(data[100 * KIB as usize], 0x22);
    assert_eq!(data[2 * MIB as usize + 4095], 0x33);
    assert!(data[104 * KIB as usize..2 * MIB as usize]
        .iter()
        .all(|&b| b == 0));
    drop(other);
    graph.blockdev_del("p").await.unwrap();
    assert_eq!(file_len(&image), 2 * MIB + 4 * KIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_and_resizing_drop_the_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, image) = setup(dir.path()).await;
    // A user that lets `block_resize` resize under it.
    let perms = BackendPerms {
        perm: Perm::CONSISTENT_READ | Perm::WRITE,
        shared: Perm::ALL,
    };
    let user = graph.attach_backend_with("grow", perms).unwrap();
    user.write(64 * KIB, &IoBuf::zeroed(4096), WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(file_len(&image), MIB + 128 * KIB);

    // `block_resize` through the filter: the file gets exactly the new
    // size.
    graph
        .resize(None, Some("grow"), (512 * KIB) as i64)
        .await
        .unwrap();
    assert_eq!(file_len(&image), 512 * KIB);
    assert_eq!(graph.node("p").unwrap().size(), 512 * KIB);

    // Growing again, then closing everything: cut back at close.
    user.write(
        600 * KIB,
        &IoBuf::from_vec(vec![7; 4096]),
        WriteFlags::default(),
    )
    .await
    .unwrap();
    assert_eq!(file_len(&image), MIB + 640 * KIB);
    drop(user);
    graph.close_all().await;
    assert_eq!(file_len(&image), 604 * KIB);
    assert!(graph.node_names().is_empty());
}

#[tokio::test]
async fn bad_options_are_refused_with_qemus_messages() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), "disk.img", MIB);
    let graph = BlockGraph::new();
    add(&graph, file_node("f", &image)).await;
    add(
        &graph,
        json!({"driver": "file", "node-name": "direct", "filename": image,
               "cache": {"direct": true}, "force-share": true, "read-only": true}),
    )
    .await;
    let direct_align = graph.node("direct").unwrap().limits().request_alignment;
    assert!(
        direct_align > 512,
        "O_DIRECT aligns to the file system's block"
    );
    for (options, message) in [
        (
            json!({"prealloc-align": -1, "prealloc-size": -1}),
            "Value '-1' is out of range for parameter 'prealloc-align'",
        ),
        (
            json!({"prealloc-size": -1, "prealloc-align": 100}),
            "Value '-1' is out of range for parameter 'prealloc-size'",
        ),
        (
            json!({"prealloc-align": 100}),
            "prealloc-align parameter of preallocate filter is not aligned to 512",
        ),
        (
            json!({"file": "direct", "prealloc-align": 512}),
            &format!("prealloc-align parameter of preallocate filter is not aligned to underlying node request alignment ({direct_align})"),
        ),
    ] {
        let mut options = options;
        options["driver"] = json!("preallocate");
        options["node-name"] = json!("p");
        if options.get("file").is_none() {
            options["file"] = json!("f");
        }
        assert_eq!(add_err(&graph, options).await, message);
        assert!(graph.node("p").is_none());
    }
    // The file was left as it was, and is free.
    assert_eq!(file_len(&image), MIB);
    drop(
        graph
            .attach_backend("f", true)
            .expect("nothing holds the file"),
    );
}

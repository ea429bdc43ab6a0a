//! A filter in a few lines, inserted above a node that an NBD export is
//! serving and removed again: a pass-through that hides block status, as
//! nbdkit's `noextents` filter does. Everything it does not change (data,
//! writes, size, flush, zeroes) passes through to its child; `nbdinfo`
//! sees the map change while the export stays up.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use block::{BlockDriver, BlockResult, Extent, NodeChild};
use common::{fill, read, run_ok, ExportSpec, Harness};

const MIB: u64 = 1 << 20;

/// Reports every range as data: clients can no longer skip holes.
struct NoExtents(Arc<NodeChild>);

#[async_trait]
impl BlockDriver for NoExtents {
    fn format_name(&self) -> &'static str {
        "noextents"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.0)
    }

    async fn block_status(&self, _offset: u64, len: u64) -> BlockResult<Extent> {
        Ok(Extent {
            length: len,
            data: true,
            zero: false,
            depth: 1,
        })
    }
}

/// `nbdinfo --map` rows as (offset, length, type).
async fn map(uri: &str) -> Vec<[String; 3]> {
    let out = run_ok("nbdinfo", &["--map", uri]).await;
    out.lines()
        .map(|line| {
            let mut words = line.split_whitespace().map(str::to_string);
            [(); 3].map(|_| words.next().expect("map column"))
        })
        .collect()
}

fn row(offset: u64, length: u64, kind: u32) -> [String; 3] {
    [offset.to_string(), length.to_string(), kind.to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_inserted_above_an_exported_node_changes_only_what_it_filters() {
    let h = Harness::start().await;
    let image = h.image("sparse.raw", 4 * MIB);
    fill(&image, MIB, 64 << 10, 0x77);
    h.node("file0", &image).await;
    h.export(&ExportSpec::new("disk"), "file0");
    let uri = h.uri("disk");
    let holes = vec![
        row(0, MIB, 3),
        row(MIB, 64 << 10, 0),
        row(MIB + (64 << 10), 3 * MIB - (64 << 10), 3),
    ];
    assert_eq!(map(&uri).await, holes);

    h.graph
        .add_filter(Some("hide"), "file0", |child| {
            Ok(Box::new(NoExtents(child)))
        })
        .await
        .unwrap();
    h.graph.replace_node("file0", "hide").await.unwrap();
    assert_eq!(map(&uri).await, vec![row(0, 4 * MIB, 0)]);
    // Data, writes, zeroes and flushes pass through to the file.
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x77 1M 64k",
            "-c",
            "write -P 0x55 2M 4k",
            "-c",
            "write -z 1M 4k",
            "-c",
            "flush",
            &uri,
        ],
    )
    .await;
    assert_eq!(read(&image, 2 * MIB, 4096), vec![0x55; 4096]);
    assert_eq!(read(&image, MIB, 4096), vec![0; 4096]);

    // Removed again: the export uses the file directly, the filter goes.
    h.graph.replace_node("hide", "file0").await.unwrap();
    let rows = map(&uri).await;
    assert_eq!(rows[0], row(0, MIB, 3), "{rows:?}");
    h.graph.blockdev_del("hide").await.unwrap();
    assert!(h.graph.node("hide").is_none());
}

//! The `copy-on-read` filter above a qcow2 overlay, exported over NBD:
//! what `qemu-io` reads through it comes from the backing file and lands
//! in the overlay, as `qemu-img map` shows once the nodes are closed;
//! what was not read stays in the backing file.

mod common;

use std::path::Path;

use common::{run_ok, ExportSpec, Harness};
use schema::export::BlockExportRemoveMode::Hard;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// `qemu-img map --output=json` of `image`: (start, length, depth, data).
async fn map(image: &Path) -> Vec<(u64, u64, u64, bool)> {
    // `-U`: the daemon may hold the image open meanwhile.
    let out = run_ok(
        "qemu-img",
        &["map", "-U", "--output=json", image.to_str().unwrap()],
    )
    .await;
    let entries: Vec<Value> = serde_json::from_str(&out).expect("map JSON");
    entries
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["depth"].as_u64().unwrap(),
                e["data"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_copy_on_read_populate_the_overlay() {
    let h = Harness::start().await;
    let base = h.dir.path().join("base.raw");
    let top = h.dir.path().join("top.qcow2");
    let (base_arg, top_arg) = (base.to_str().unwrap(), top.to_str().unwrap());
    run_ok("qemu-img", &["create", "-f", "raw", base_arg, "4M"]).await;
    let out = run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x3c 0 4M", base_arg],
    )
    .await;
    assert!(!out.contains("fail"), "{out}");
    run_ok(
        "qemu-img",
        &[
            "create", "-f", "qcow2", "-b", base_arg, "-F", "raw", top_arg,
        ],
    )
    .await;
    for options in [
        json!({"driver": "qcow2", "node-name": "top",
               "file": {"driver": "file", "filename": top}}),
        json!({"driver": "copy-on-read", "node-name": "cor", "file": "top"}),
    ] {
        let options = schema::from_json(options).expect("blockdev options");
        h.graph.blockdev_add(&options).await.expect("node opens");
    }
    h.export(&ExportSpec::new("disk"), "cor");
    // Before any read, the overlay holds nothing.
    assert_eq!(map(&top).await, [(0, 4 * MIB, 1, true)]);
    let uri = h.uri("disk");
    let out = run_ok(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x3c 0 64k",
            "-c",
            "read -P 0x3c 1M 128k",
            &uri,
        ],
    )
    .await;
    assert!(!out.contains("fail"), "{out}");
    h.exports.del("disk", Hard).expect("export deleted");
    h.wait_idle().await;
    h.graph.blockdev_del("cor").await.unwrap();
    h.graph.blockdev_del("top").await.unwrap();
    assert_eq!(
        map(&top).await,
        [
            (0, 64 << 10, 0, true),
            (64 << 10, MIB - (64 << 10), 1, true),
            (MIB, 128 << 10, 0, true),
            (MIB + (128 << 10), 3 * MIB - (128 << 10), 1, true),
        ]
    );
    // The overlay's copies are the base's bytes.
    let out = run_ok("qemu-io", &["-r", "-c", "read -P 0x3c 1M 128k", top_arg]).await;
    assert!(!out.contains("fail"), "{out}");
    run_ok("qemu-img", &["check", top_arg]).await;
}

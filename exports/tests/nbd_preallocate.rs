//! The `preallocate` filter between a qcow2 image and its file, written
//! over NBD by `qemu-io`: while the image is open its file is grown ahead
//! of the data; once the nodes close it is cut back, and QEMU finds the
//! image clean with the data written.

mod common;

use common::{run_ok, ExportSpec, Harness};
use schema::export::BlockExportRemoveMode::Hard;
use serde_json::json;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_qcow2_file_is_preallocated_and_cut_back_on_close() {
    let h = Harness::start().await;
    let image = h.dir.path().join("disk.qcow2");
    let image_arg = image.to_str().unwrap();
    run_ok("qemu-img", &["create", "-f", "qcow2", image_arg, "64M"]).await;
    let created = std::fs::metadata(&image).unwrap().len();
    for options in [
        json!({"driver": "file", "node-name": "f0", "filename": image}),
        json!({"driver": "preallocate", "node-name": "pre", "file": "f0",
               "prealloc-size": 8 * MIB}),
        json!({"driver": "qcow2", "node-name": "q0", "file": "pre"}),
    ] {
        let options = schema::from_json(options).expect("blockdev options");
        h.graph.blockdev_add(&options).await.expect("node opens");
    }
    h.export(&ExportSpec::new("disk"), "q0");
    let uri = h.uri("disk");
    let out = run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x61 0 1M",
            "-c",
            "write -P 0x62 32M 64k",
            "-c",
            "flush",
            &uri,
        ],
    )
    .await;
    assert!(!out.contains("fail"), "{out}");
    // The data ends a little past 1 MiB of clusters; the file, 8 MiB on.
    let grown = std::fs::metadata(&image).unwrap().len();
    assert!(grown >= created + 8 * MIB, "file {grown} bytes while open");
    h.exports.del("disk", Hard).expect("export deleted");
    h.wait_idle().await;
    h.graph.blockdev_del("q0").await.unwrap();
    h.graph.blockdev_del("pre").await.unwrap();
    h.graph.blockdev_del("f0").await.unwrap();
    let closed = std::fs::metadata(&image).unwrap().len();
    assert!(
        closed < grown && closed < created + 2 * MIB,
        "file {closed} bytes after close"
    );
    run_ok("qemu-img", &["check", image_arg]).await;
    let out = run_ok(
        "qemu-io",
        &[
            "-r",
            "-c",
            "read -P 0x61 0 1M",
            "-c",
            "read -P 0x62 32M 64k",
            "-c",
            "read -P 0 2M 1M",
            image_arg,
        ],
    )
    .await;
    assert!(!out.contains("fail"), "{out}");
}

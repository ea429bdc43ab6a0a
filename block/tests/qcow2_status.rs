//! Block status of a backing chain: for every range, data or zero and the
//! depth where it was found, as `qemu-img map` reports them (its 0-based
//! depth of a present range is our depth minus one; absent ranges are our
//! depth 0).

mod bytes_io;
mod qcow2_support;

use block::BlockDriver;
use qcow2_support::{arg, create_qcow2, open_chain, options, qemu_img, qemu_io};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn status_follows_the_backing_chain_like_qemu_img_map() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", arg(&base), "4M"]);
    qemu_io(&base, "qcow2", &["write -P 1 0 1M", "write -z 3M 64k"]);
    create_qcow2(
        &mid,
        &["-o", "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2"],
        "5M",
    );
    qemu_io(
        &mid,
        "qcow2",
        &["write -P 2 1M 1M", "write -z 2M 8k", "write -P 2 4M 12k"],
    );
    create_qcow2(&top, &["-b", "mid.qcow2", "-F", "qcow2"], "6M");
    qemu_io(&top, "qcow2", &["write -P 3 512k 64k", "write -z 5M 64k"]);

    let map: Value = serde_json::from_str(&qemu_img(&["map", "--output=json", arg(&top)])).unwrap();
    let qcow2 = open_chain(&top, options(false)).await;
    for extent in map.as_array().unwrap() {
        let start = extent["start"].as_u64().unwrap();
        let end = start + extent["length"].as_u64().unwrap();
        let present = extent["present"].as_bool().unwrap();
        let depth = if present {
            extent["depth"].as_u64().unwrap() as u32 + 1
        } else {
            0
        };
        let mut offset = start;
        while offset < end {
            let ours = qcow2.block_status(offset, end - offset).await.unwrap();
            assert!(ours.length > 0 && ours.length <= end - offset);
            assert_eq!(
                (ours.data, ours.zero, ours.depth),
                (
                    extent["data"].as_bool().unwrap(),
                    extent["zero"].as_bool().unwrap(),
                    depth
                ),
                "at {offset} in {extent}"
            );
            offset += ours.length;
        }
    }
}

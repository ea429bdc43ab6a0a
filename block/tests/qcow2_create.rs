//! Images made by the driver's `create` (what `blockdev-create` runs):
//! `qemu-img check` finds them clean, `qemu-img info` shows the options
//! asked, and QEMU can write to them.

mod bytes_io;
mod qcow2_support;

use bytes_io::BytesIo;
use std::path::Path;

use block::qcow2::{
    create, BackingSpec, CompressionType, CreateOptions, Preallocation, Qcow2Version,
};
use qcow2_support::{
    arg, assert_check_clean, assert_same, file_child, open_chain, options, qemu_img, qemu_io,
    raw_contents, read_all,
};
use serde_json::Value;

async fn create_image(path: &Path, options: &CreateOptions) {
    std::fs::write(path, b"").unwrap();
    create(file_child(path, true), options)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

fn info(path: &Path) -> Value {
    serde_json::from_str(&qemu_img(&["info", "--output=json", arg(path)])).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn created_images_have_the_options_asked() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            Qcow2Version::V3,
            65536u64,
            16u32,
            false,
            CompressionType::Zlib,
            1u64 << 30,
        ),
        (
            Qcow2Version::V3,
            512,
            1,
            true,
            CompressionType::Zstd,
            8 << 30,
        ),
        (
            Qcow2Version::V3,
            2 << 20,
            64,
            false,
            CompressionType::Zlib,
            1 << 40,
        ),
        (
            Qcow2Version::V2,
            4096,
            16,
            false,
            CompressionType::Zlib,
            100 << 30,
        ),
    ];
    for (i, (version, cluster_size, refcount_bits, lazy, compression, size)) in
        cases.into_iter().enumerate()
    {
        let path = dir.path().join(format!("created{i}.qcow2"));
        let mut o = CreateOptions::new(size);
        o.version = version;
        o.cluster_size = cluster_size;
        o.refcount_bits = refcount_bits;
        o.lazy_refcounts = lazy;
        o.compression_type = compression;
        create_image(&path, &o).await;
        assert_check_clean(&path);
        let info = info(&path);
        assert_eq!(info["virtual-size"], size, "{info}");
        assert_eq!(info["cluster-size"], cluster_size, "{info}");
        assert_eq!(info["dirty-flag"], false, "{info}");
        let data = &info["format-specific"]["data"];
        assert_eq!(data["refcount-bits"], refcount_bits, "{info}");
        assert_eq!(data["compression-type"], compression.name(), "{info}");
        match version {
            Qcow2Version::V3 => {
                assert_eq!(data["compat"], "1.1", "{info}");
                assert_eq!(data["lazy-refcounts"], lazy, "{info}");
                assert_eq!(data["corrupt"], false, "{info}");
            }
            Qcow2Version::V2 => assert_eq!(data["compat"], "0.10", "{info}"),
        }
        // QEMU writes into it; the driver reads what QEMU wrote.
        qemu_io(
            &path,
            "qcow2",
            &["write -P 0x3c 12345 300000", "write -z 1M 128k"],
        );
        assert_check_clean(&path);
        let qcow2 = open_chain(&path, options(false)).await;
        let mut buf = vec![0u8; 300_000];
        qcow2.read_into(12345, &mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0x3c));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backing_file_and_format_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", arg(&base), "4M"]);
    qemu_io(&base, "qcow2", &["write -P 0x42 0 4M"]);
    let top = dir.path().join("top.qcow2");
    let mut o = CreateOptions::new(8 << 20);
    o.backing = Some(BackingSpec {
        file: "base.qcow2".into(),
        format: Some("qcow2".into()),
    });
    create_image(&top, &o).await;
    assert_check_clean(&top);
    let info = info(&top);
    assert_eq!(info["backing-filename"], "base.qcow2", "{info}");
    assert_eq!(info["backing-filename-format"], "qcow2", "{info}");
    let mut expected = vec![0x42u8; 4 << 20];
    expected.resize(8 << 20, 0);
    assert_same(
        &raw_contents(&top, dir.path()),
        &expected,
        "through the backing file",
    );
    let qcow2 = open_chain(&top, options(false)).await;
    assert_same(
        &read_all(&qcow2, 1 << 20).await,
        &expected,
        "read by the driver",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_preallocation_maps_every_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prealloc.qcow2");
    let mut o = CreateOptions::new(20 << 20);
    o.cluster_size = 4096;
    o.preallocation = Preallocation::Metadata;
    create_image(&path, &o).await;
    assert_check_clean(&path);
    let map: Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", arg(&path)])).unwrap();
    for extent in map.as_array().unwrap() {
        assert_eq!(extent["data"], true, "{extent}");
        assert_eq!(extent["present"], true, "{extent}");
    }
    assert!(raw_contents(&path, dir.path()).iter().all(|&b| b == 0));
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size >= 20 << 20, "file covers the data clusters: {size}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_options_are_refused_with_qemu_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.qcow2");
    std::fs::write(&path, b"").unwrap();
    let mut o = CreateOptions::new(1 << 20);
    o.backing = Some(BackingSpec {
        file: "base".into(),
        format: None,
    });
    o.preallocation = Preallocation::Metadata;
    let err = create(file_child(&path, true), &o).await.unwrap_err();
    assert_eq!(
        err.message,
        "Backing file and preallocation can only be used at the same time if extended_l2 is on"
    );
    let mut o = CreateOptions::new(1 << 20);
    o.refcount_bits = 3;
    let err = create(file_child(&path, true), &o).await.unwrap_err();
    assert_eq!(
        err.message,
        "Refcount width must be a power of two and may not exceed 64 bits"
    );
}

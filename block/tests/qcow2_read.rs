//! Images written by QEMU (`qemu-img create/convert`, `qemu-io`) read by
//! the qcow2 driver exactly as `qemu-img convert -O raw` reads them: every
//! cluster size, versions 2 and 3, zero clusters, compressed clusters
//! (deflate and zstd), backing chains of depth three.

mod bytes_io;
mod qcow2_support;

use std::path::Path;

use block::BlockDriver;
use qcow2_support::{
    arg, assert_same, create_qcow2, open_chain, options, qemu_img, qemu_io, raw_contents, read_all,
    Rng,
};

/// Reads `image` through the driver in pieces of several sizes and
/// compares with QEMU's view.
async fn assert_reads_like_qemu(image: &Path, dir: &Path, chunks: &[usize]) {
    let expected = raw_contents(image, dir);
    let qcow2 = open_chain(image, options(false)).await;
    assert_eq!(qcow2.size() as usize, expected.len());
    for &chunk in chunks {
        let ours = read_all(&qcow2, chunk).await;
        assert_same(
            &ours,
            &expected,
            &format!("{} read in {chunk}-byte pieces", image.display()),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_every_cluster_size_and_version() {
    let dir = tempfile::tempdir().unwrap();
    for cluster_size in [512u64, 4096, 65536, 2 << 20] {
        for compat in ["0.10", "1.1"] {
            let image = dir.path().join(format!("c{cluster_size}-{compat}.qcow2"));
            let size = (16u64 << 20).max(8 * cluster_size);
            create_qcow2(
                &image,
                &[
                    "-o",
                    &format!("cluster_size={cluster_size},compat={compat}"),
                ],
                &size.to_string(),
            );
            qemu_io(
                &image,
                "qcow2",
                &[
                    "write -P 0x11 0 4096",
                    "write -P 0x22 5000 70000",
                    "write -P 0x33 1M 3M",
                    "write -z 2M 512k",
                    "write -P 0x44 9999999 12345",
                    "discard 3M 64k",
                    &format!("write -P 0x55 {} 1", size - 1),
                ],
            );
            assert_reads_like_qemu(&image, dir.path(), &[4096 + 512, 65536 * 3 + 4608, 1 << 21])
                .await;
        }
    }
}

/// Raw data that compresses somewhat: repeated runs and random bytes.
fn compressible_raw(path: &Path, size: usize, rng: &mut Rng) {
    let mut data = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let run = (rng.below(20_000) as usize + 1).min(size - pos);
        match rng.below(3) {
            0 => rng.fill(&mut data[pos..pos + run]),
            1 => data[pos..pos + run].fill(rng.below(256) as u8),
            _ => {
                for (i, b) in data[pos..pos + run].iter_mut().enumerate() {
                    *b = b"storaged qcow2 "[i % 15];
                }
            }
        }
        pos += run;
    }
    std::fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_compressed_clusters_deflate_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::for_test("reads_compressed_clusters_deflate_and_zstd");
    let raw = dir.path().join("source.raw");
    compressible_raw(&raw, 6 << 20, &mut rng);
    for compression in ["zlib", "zstd"] {
        for cluster_size in [512u64, 4096, 65536, 2 << 20] {
            let image = dir
                .path()
                .join(format!("{compression}-{cluster_size}.qcow2"));
            qemu_img(&[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster_size},compression_type={compression}"),
                arg(&raw),
                arg(&image),
            ]);
            // Small pieces of large compressed clusters decompress the same
            // cluster over and over: keep them to the small cluster sizes.
            let small = if cluster_size <= 65536 {
                4096 + 512
            } else {
                1 << 20
            };
            assert_reads_like_qemu(&image, dir.path(), &[small, 1 << 21]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_backing_chains_of_depth_three() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    // The base is shorter than the images above it: past its end reads
    // as zeroes.
    qemu_img(&["create", "-q", "-f", "raw", arg(&base), "3M"]);
    qemu_io(&base, "raw", &["write -P 0xb1 0 3M"]);
    create_qcow2(
        &mid,
        &["-o", "cluster_size=4096", "-b", "base.raw", "-F", "raw"],
        "5M",
    );
    qemu_io(
        &mid,
        "qcow2",
        &[
            "write -P 0xd2 1M 1M",
            "write -z 2M 4096",
            "write -P 0xd3 4M 100k",
        ],
    );
    create_qcow2(&top, &["-b", "mid.qcow2", "-F", "qcow2"], "8M");
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0xe4 1536k 8k",
            "write -z 0 512",
            "write -P 0xe5 7M 64k",
            "discard 1M 64k",
        ],
    );
    assert_reads_like_qemu(&top, dir.path(), &[4096 + 512, 65536 * 3 + 4608, 1 << 21]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_what_it_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let extl2 = dir.path().join("extl2.qcow2");
    create_qcow2(&extl2, &["-o", "extended_l2=on"], "1M");
    let file = qcow2_support::file_child(&extl2, false);
    let err = block::qcow2::Qcow2::open(file, None, options(false))
        .await
        .err()
        .expect("refused");
    assert!(err.message.contains("extended L2"), "{}", err.message);

    let not_qcow2 = dir.path().join("plain.raw");
    std::fs::write(&not_qcow2, vec![0u8; 4096]).unwrap();
    let file = qcow2_support::file_child(&not_qcow2, false);
    let err = block::qcow2::Qcow2::open(file, None, options(false))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.message, "Image is not in qcow2 format");
}

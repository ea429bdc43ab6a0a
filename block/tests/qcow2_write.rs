//! Writes through the qcow2 driver, checked against a plain reference and
//! by QEMU: thousands of random writes, write-zeroes, discards, flushes and
//! reopenings must leave an image that `qemu-img compare` finds equal to
//! the reference and `qemu-img check` finds clean. Seeds are printed;
//! `QCOW2_TEST_SEED=<n>` replays one.

mod bytes_io;
mod qcow2_support;

use bytes_io::BytesIo;
use std::path::Path;
use std::sync::Arc;

use block::qcow2::Qcow2;
use block::{BlockDriver, WriteFlags, ZeroFlags};
use qcow2_support::{
    arg, assert_check_clean, assert_same, close_and_compare, create_qcow2, open_chain, options,
    qemu_img, qemu_io, raw_contents, read_all, Rng,
};

/// One image configuration of the differential test.
struct Config {
    cluster_size: u64,
    compat: &'static str,
    refcount_bits: u32,
    size: u64,
    with_backing: bool,
    ops: usize,
}

impl Config {
    fn v3(&self) -> bool {
        self.compat == "1.1"
    }
}

/// The guest view a discard leaves in the reference: whole clusters read
/// as zeroes (v3) or as the backing image again (v2).
fn discard_reference(reference: &mut [u8], backing: &[u8], offset: u64, len: u64, config: &Config) {
    let cs = config.cluster_size;
    let start = offset.div_ceil(cs) * cs;
    let end = if offset + len >= config.size {
        config.size
    } else {
        (offset + len) / cs * cs
    };
    if start >= end {
        return;
    }
    let (start, end) = (start as usize, end as usize);
    if config.v3() {
        reference[start..end].fill(0);
    } else {
        for (i, byte) in reference[start..end].iter_mut().enumerate() {
            *byte = backing.get(start + i).copied().unwrap_or(0);
        }
    }
}

/// Creates the image (and its backing file) for `config`; returns the
/// initial guest contents and what the backing file holds.
fn make_image(dir: &Path, config: &Config, rng: &mut Rng) -> (std::path::PathBuf, Vec<u8>) {
    let image = dir.join("image.qcow2");
    let mut create_options = format!(
        "cluster_size={},compat={},refcount_bits={}",
        config.cluster_size, config.compat, config.refcount_bits
    );
    let mut backing = Vec::new();
    if config.with_backing {
        // A backing file shorter than the image, with data everywhere.
        let base = dir.join("base.raw");
        backing = vec![0u8; (config.size * 3 / 4) as usize];
        rng.fill(&mut backing);
        std::fs::write(&base, &backing).unwrap();
        create_options.push_str(",backing_file=base.raw,backing_fmt=raw");
    }
    create_qcow2(&image, &["-o", &create_options], &config.size.to_string());
    (image, backing)
}

async fn differential(config: Config, rng: &mut Rng) {
    let dir = tempfile::tempdir().unwrap();
    let (image, backing) = make_image(dir.path(), &config, rng);
    let mut reference = raw_contents(&image, dir.path());
    let mut qcow2 = open_chain(&image, options(true)).await;
    let cs = config.cluster_size;
    let max_len = (4 * cs).max(256 << 10);
    let mut data = vec![0u8; max_len as usize];
    for op in 0..config.ops {
        let offset = rng.below(config.size);
        let len = (rng.below(max_len) + 1).min(config.size - offset);
        // Aligned requests are common: make them likely.
        let (offset, len) = if rng.below(2) == 0 {
            let o = offset / cs * cs;
            (o, (len.div_ceil(cs) * cs).min(config.size - o))
        } else {
            (offset, len)
        };
        let range = offset as usize..(offset + len) as usize;
        match rng.below(100) {
            0..=59 => {
                let buf = &mut data[..len as usize];
                rng.fill(buf);
                qcow2
                    .write_from(
                        offset,
                        buf,
                        WriteFlags {
                            fua: rng.below(20) == 0,
                            ..WriteFlags::default()
                        },
                    )
                    .await
                    .unwrap_or_else(|e| panic!("op {op}: write {offset}+{len}: {e}"));
                reference[range].copy_from_slice(buf);
            }
            60..=74 => {
                let flags = ZeroFlags {
                    may_unmap: rng.below(2) == 0,
                    no_fallback: false,
                    fua: false,
                };
                qcow2
                    .write_zeroes(offset, len, flags)
                    .await
                    .unwrap_or_else(|e| panic!("op {op}: write-zeroes {offset}+{len}: {e}"));
                reference[range].fill(0);
            }
            75..=84 => {
                qcow2
                    .discard(offset, len)
                    .await
                    .unwrap_or_else(|e| panic!("op {op}: discard {offset}+{len}: {e}"));
                discard_reference(&mut reference, &backing, offset, len, &config);
            }
            85..=92 => {
                let mut buf = vec![0u8; len as usize];
                qcow2
                    .read_into(offset, &mut buf)
                    .await
                    .unwrap_or_else(|e| panic!("op {op}: read {offset}+{len}: {e}"));
                assert_same(
                    &buf,
                    &reference[range],
                    &format!("op {op}: read {offset}+{len}"),
                );
            }
            93..=97 => qcow2.flush().await.expect("flush"),
            _ => {
                qcow2.close().await.expect("close");
                drop(qcow2);
                qcow2 = open_chain(&image, options(true)).await;
            }
        }
    }
    let ours = read_all(&qcow2, 1 << 20).await;
    assert_same(&ours, &reference, "whole image through the driver");
    qcow2.close().await.expect("close");
    drop(qcow2);
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, &reference).unwrap();
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        arg(&image),
        arg(&expected),
    ]);
    assert_check_clean(&image);
}

#[tokio::test(flavor = "multi_thread")]
async fn random_operations_match_a_raw_reference() {
    let mut rng = Rng::for_test("random_operations_match_a_raw_reference");
    let configs = [
        (65536, "1.1", 16, 64 << 20, false, 1500),
        (65536, "1.1", 16, 64 << 20, true, 1000),
        (4096, "1.1", 64, 32 << 20, false, 1000),
        (512, "1.1", 16, 24 << 20, false, 800),
        (512, "1.1", 1, 4 << 20, true, 500),
        (65536, "0.10", 16, 32 << 20, true, 800),
        (2 << 20, "1.1", 8, 64 << 20, true, 300),
    ];
    for (cluster_size, compat, refcount_bits, size, with_backing, ops) in configs {
        eprintln!(
            "cluster_size={cluster_size} compat={compat} refcount_bits={refcount_bits} backing={with_backing}"
        );
        let config = Config {
            cluster_size,
            compat,
            refcount_bits,
            size,
            with_backing,
            ops,
        };
        differential(config, &mut rng).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_into_shared_clusters_all_land() {
    let mut rng = Rng::for_test("concurrent_writes_into_shared_clusters_all_land");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.qcow2");
    let base = dir.path().join("base.raw");
    let size = 8u64 << 20;
    let mut expected = vec![0u8; size as usize];
    rng.fill(&mut expected);
    std::fs::write(&base, &expected).unwrap();
    create_qcow2(
        &image,
        &["-o", "cluster_size=65536", "-b", "base.raw", "-F", "raw"],
        &size.to_string(),
    );
    let qcow2 = Arc::new(open_chain(&image, options(true)).await);
    // Eight writers, each owning one 4 KiB stripe of every 32 KiB: every
    // cluster is written by all of them at once, partially, so each
    // allocation races with the others' copy-on-write.
    const WRITERS: u64 = 8;
    const STRIPE: u64 = 4096;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let qcow2 = qcow2.clone();
        let seed = rng.next();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::from_seed(seed);
            let mut written = Vec::new();
            let mut offset = writer * STRIPE;
            while offset < size {
                let mut buf = vec![0u8; STRIPE as usize];
                rng.fill(&mut buf);
                qcow2
                    .write_from(offset, &buf, WriteFlags::default())
                    .await
                    .expect("write");
                written.push((offset, buf));
                offset += WRITERS * STRIPE;
            }
            written
        }));
    }
    // Readers at the same time see either the old or the new stripes,
    // never anything else: checked at the end through the final state.
    let reader = {
        let qcow2 = qcow2.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            for pass in 0..8u64 {
                qcow2
                    .read_into((pass << 20) % size, &mut buf)
                    .await
                    .expect("read");
            }
        })
    };
    for task in tasks {
        for (offset, buf) in task.await.unwrap() {
            expected[offset as usize..(offset + STRIPE) as usize].copy_from_slice(&buf);
        }
    }
    reader.await.unwrap();
    assert_same(
        &read_all(qcow2.as_ref(), 1 << 20).await,
        &expected,
        "after concurrent writes",
    );
    close_and_compare(qcow2, &image, dir.path(), &expected, "as QEMU reads it").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resize_grows_the_l1_table_and_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.qcow2");
    create_qcow2(&image, &["-o", "cluster_size=512"], "64k");
    let qcow2 = open_chain(&image, options(true)).await;
    qcow2
        .write_from(1000, &[7u8; 3000], WriteFlags::default())
        .await
        .unwrap();
    let new_size = 256u64 << 20;
    qcow2.resize(new_size).await.unwrap();
    assert_eq!(qcow2.size(), new_size);
    qcow2
        .write_from(new_size - 4096, &[9u8; 4096], WriteFlags::default())
        .await
        .unwrap();
    qcow2.close().await.unwrap();
    let raw = raw_contents(&image, dir.path());
    assert_eq!(raw.len() as u64, new_size);
    assert!(raw[1000..4000].iter().all(|&b| b == 7));
    assert!(raw[(new_size - 4096) as usize..].iter().all(|&b| b == 9));
    assert_check_clean(&image);
    // Shrinking frees what lies past the new end and keeps the rest.
    qcow2.resize(1 << 20).await.unwrap();
    assert_eq!(qcow2.size(), 1 << 20);
    qcow2.close().await.unwrap();
    drop(qcow2);
    let raw = raw_contents(&image, dir.path());
    assert_eq!(raw.len() as u64, 1 << 20);
    assert!(raw[1000..4000].iter().all(|&b| b == 7));
    assert_check_clean(&image);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_copy_clusters_shared_with_internal_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", arg(&image), "4M"]);
    qemu_io(&image, "qcow2", &["write -P 0x61 0 4M"]);
    qemu_img(&["snapshot", "-c", "snap", arg(&image)]);
    let qcow2 = open_chain(&image, options(true)).await;
    qcow2
        .write_from(100_000, &[0x62; 200_000], WriteFlags::default())
        .await
        .unwrap();
    qcow2
        .write_zeroes(
            1 << 20,
            1 << 20,
            ZeroFlags {
                may_unmap: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    qcow2.discard(3 << 20, 1 << 20).await.unwrap();
    qcow2.close().await.unwrap();
    drop(qcow2);
    assert_check_clean(&image);
    let mut expected = vec![0x61u8; 4 << 20];
    expected[100_000..300_000].fill(0x62);
    expected[1 << 20..2 << 20].fill(0);
    expected[3 << 20..].fill(0);
    assert_same(&raw_contents(&image, dir.path()), &expected, "active layer");
    // The snapshot still holds the old contents.
    let snap = dir.path().join("snap.raw");
    qemu_img(&[
        "convert",
        "-l",
        "snap",
        "-O",
        "raw",
        arg(&image),
        arg(&snap),
    ]);
    assert!(std::fs::read(&snap).unwrap().iter().all(|&b| b == 0x61));
}

#[tokio::test(flavor = "multi_thread")]
async fn overwriting_compressed_clusters_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("source.raw");
    let image = dir.path().join("image.qcow2");
    let mut data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i / 1000) as u8).collect();
    std::fs::write(&raw, &data).unwrap();
    qemu_img(&["convert", "-q", "-c", "-O", "qcow2", arg(&raw), arg(&image)]);
    let qcow2 = open_chain(&image, options(true)).await;
    qcow2
        .write_from(70_000, &[1u8; 10], WriteFlags::default())
        .await
        .unwrap();
    qcow2
        .write_from(0, &[2u8; 65536], WriteFlags::default())
        .await
        .unwrap();
    data[70_000..70_010].fill(1);
    data[..65536].fill(2);
    close_and_compare(qcow2, &image, dir.path(), &data, "after overwriting").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dirty_images_from_lazy_refcounts_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.qcow2");
    create_qcow2(&image, &["-o", "lazy_refcounts=on"], "16M");
    // qemu-io's abort leaves the image dirty, its refcounts behind.
    let status = std::process::Command::new("qemu-io")
        .args(["-c", "write -P 0x77 0 5M", "-c", "abort", arg(&image)])
        .output()
        .unwrap();
    assert!(!status.status.success());
    let info = qemu_img(&["info", "--output=json", arg(&image)]);
    assert!(info.contains("\"dirty-flag\": true"), "{info}");
    let qcow2 = open_chain(&image, options(true)).await;
    qcow2
        .write_from(6 << 20, &[0x78; 4096], WriteFlags::default())
        .await
        .unwrap();
    qcow2.close().await.unwrap();
    drop(qcow2);
    assert_check_clean(&image);
    let raw = raw_contents(&image, dir.path());
    assert!(raw[..5 << 20].iter().all(|&b| b == 0x77));
    assert!(raw[6 << 20..(6 << 20) + 4096].iter().all(|&b| b == 0x78));
}

#[tokio::test(flavor = "multi_thread")]
async fn corruption_is_reported_once_and_stops_writes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", arg(&image), "1M"]);
    qemu_io(&image, "qcow2", &["write -P 1 0 64k"]);
    // Point the first L2 entry at an unaligned host offset.
    let l1_offset = {
        let bytes = std::fs::read(&image).unwrap();
        u64::from_be_bytes(bytes[40..48].try_into().unwrap())
    };
    let bytes = std::fs::read(&image).unwrap();
    let l2 = u64::from_be_bytes(
        bytes[l1_offset as usize..l1_offset as usize + 8]
            .try_into()
            .unwrap(),
    ) & 0x00ff_ffff_ffff_fe00;
    let mut patched = bytes.clone();
    let entry =
        u64::from_be_bytes(patched[l2 as usize..l2 as usize + 8].try_into().unwrap()) | 0x200;
    patched[l2 as usize..l2 as usize + 8].copy_from_slice(&entry.to_be_bytes());
    std::fs::write(&image, patched).unwrap();

    let events = Arc::new(AtomicUsize::new(0));
    let seen = events.clone();
    let mut opts = options(true);
    opts.on_corruption = Some(Arc::new(move |event: &block::qcow2::CorruptionEvent| {
        assert!(event.fatal);
        assert!(event.message.contains("unaligned"), "{}", event.message);
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    let qcow2: Qcow2 = open_chain(&image, opts).await;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        let err = qcow2.read_into(0, &mut buf).await.unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
    }
    assert_eq!(events.load(Ordering::SeqCst), 1, "reported once");
    let err = qcow2
        .write_from(128 << 10, &[1u8; 512], WriteFlags::default())
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    drop(qcow2);
    let info = qemu_img(&["info", "--output=json", arg(&image)]);
    assert!(info.contains("\"corrupt\": true"), "{info}");
}

#[tokio::test(flavor = "multi_thread")]
async fn discard_no_unref_keeps_host_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", arg(&image), "1M"]);
    qemu_io(&image, "qcow2", &["write -P 0x11 0 1M"]);
    let mut opts = options(true);
    opts.discard_no_unref = true;
    let qcow2 = open_chain(&image, opts).await;
    qcow2.discard(0, 512 << 10).await.unwrap();
    qcow2.close().await.unwrap();
    drop(qcow2);
    assert_check_clean(&image);
    let map: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", arg(&image)])).unwrap();
    let first = &map[0];
    assert_eq!(
        (
            &first["length"],
            &first["zero"],
            first.get("offset").is_some()
        ),
        (
            &serde_json::json!(512 << 10),
            &serde_json::json!(true),
            true
        ),
        "{map}"
    );
    let raw = raw_contents(&image, dir.path());
    assert!(raw[..512 << 10].iter().all(|&b| b == 0));
    assert!(raw[512 << 10..].iter().all(|&b| b == 0x11));
}

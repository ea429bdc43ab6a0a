//! Real NBD clients against the in-process server: `qemu-img`, `qemu-io`,
//! `nbdinfo` and `nbdcopy`, each checked on the data it moved.

mod common;

use common::{fill, read, run, run_ok, ExportSpec, Harness};

const MIB: u64 = 1 << 20;

/// Deterministic non-repeating bytes.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn write_at(path: &std::path::Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(data, offset).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_info_convert_and_compare() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", 8 * MIB);
    write_at(&image, MIB, &pattern(MIB as usize, 1));
    h.export_file(&ExportSpec::new("disk"), &image).await;
    let uri = h.uri("disk");

    let info = run_ok("qemu-img", &["info", "--output=json", &uri]).await;
    assert!(info.contains("\"virtual-size\": 8388608"), "{info}");

    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            image.to_str().unwrap(),
            &uri,
        ],
    )
    .await;
    let copy = h.dir.path().join("copy.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            copy.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&image).unwrap()
    );

    // And into the export: a different source image written over NBD.
    let source = h.dir.path().join("source.raw");
    std::fs::write(&source, pattern(8 * MIB as usize, 2)).unwrap();
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            source.to_str().unwrap(),
            &uri,
        ],
    )
    .await;
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&source).unwrap()
    );
    let differ = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            copy.to_str().unwrap(),
            &uri,
        ],
    )
    .await;
    assert!(!differ.ok, "images must differ after the overwrite");
    h.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_and_reads_patterns() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", 4 * MIB);
    h.export_file(&ExportSpec::new("disk"), &image).await;
    let uri = h.uri("disk");
    let out = run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 1M 64k",
            "-c",
            "write -P 0xa5 1088k 8k",
            "-c",
            "write -z 1088k 4k",
            "-c",
            "write -P 0x11 3M 512",
            "-c",
            "flush",
            "-c",
            "read -P 0x5a 1M 64k",
            "-c",
            "read -P 0 1088k 4k",
            "-c",
            "read -P 0xa5 1092k 4k",
            "-c",
            "read -P 0x11 3M 512",
            "-c",
            "read -P 0 0 1M",
            &uri,
        ],
    )
    .await;
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(read(&image, MIB, 65536), vec![0x5a; 65536]);
    assert_eq!(read(&image, 3 * MIB, 512), vec![0x11; 512]);
    assert_eq!(read(&image, 3 * MIB + 512, 512), vec![0; 512]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_lists_every_export() {
    let h = Harness::start().await;
    let a = h.image("a.raw", MIB);
    let b = h.image("b.raw", 2 * MIB);
    h.export_file(
        &ExportSpec {
            description: Some("first disk".into()),
            ..ExportSpec::new("alpha")
        },
        &a,
    )
    .await;
    h.export_file(
        &ExportSpec {
            writable: false,
            ..ExportSpec::new("beta")
        },
        &b,
    )
    .await;
    let list = run_ok("nbdinfo", &["--list", "--json", &h.uri("")]).await;
    let json: serde_json::Value = serde_json::from_str(&list).expect("nbdinfo JSON");
    let exports = json["exports"].as_array().expect("exports array");
    let names: Vec<&str> = exports
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(exports[0]["description"], "first disk");
    assert_eq!(exports[0]["export-size"], MIB);
    assert_eq!(exports[1]["export-size"], 2 * MIB);
    assert_eq!(exports[0]["is_read_only"], false);
    assert_eq!(exports[1]["is_read_only"], true);
    assert_eq!(exports[1]["can_multi_conn"], true);
    assert_eq!(exports[1]["can_trim"], false);
    assert_eq!(exports[0]["can_fast_zero"], true);
    assert_eq!(exports[0]["block_size_maximum"], 32 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_maps_allocation_and_depth() {
    let h = Harness::start().await;
    let image = h.image("sparse.raw", 8 * MIB);
    fill(&image, MIB, 64 << 10, 0x77);
    fill(&image, 4 * MIB, 4096, 0x88);
    h.export_file(
        &ExportSpec {
            allocation_depth: true,
            ..ExportSpec::new("sparse")
        },
        &image,
    )
    .await;
    let uri = h.uri("sparse");
    let map = run_ok("nbdinfo", &["--map", &uri]).await;
    let rows: Vec<Vec<String>> = map
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let expect = [
        ["0", "1048576", "3"],
        ["1048576", "65536", "0"],
        ["1114112", "3080192", "3"],
        ["4194304", "4096", "0"],
        ["4198400", "4190208", "3"],
    ];
    assert_eq!(rows.len(), expect.len(), "{map}");
    for (row, want) in rows.iter().zip(expect) {
        assert_eq!(&row[..3], want, "{map}");
    }
    // A raw file is all its own layer.
    let depth = run_ok("nbdinfo", &["--map=qemu:allocation-depth", &uri]).await;
    assert_eq!(
        depth.split_whitespace().collect::<Vec<_>>(),
        ["0", "8388608", "1", "local"]
    );
    let total = run_ok("nbdinfo", &["--map", "--totals", &uri]).await;
    assert!(total.contains("69632"), "{total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_both_ways() {
    let h = Harness::start().await;
    let source = h.image("source.raw", 16 * MIB);
    write_at(&source, 0, &pattern(3 * MIB as usize, 3));
    write_at(&source, 9 * MIB, &pattern(5 * MIB as usize, 4));
    h.export_file(&ExportSpec::new("source"), &source).await;
    let target = h.image("target.raw", 16 * MIB);
    fill(&target, 5 * MIB, MIB as usize, 0xee);
    h.export_file(&ExportSpec::new("target"), &target).await;

    let local = h.dir.path().join("local.raw");
    run_ok("nbdcopy", &[&h.uri("source"), local.to_str().unwrap()]).await;
    assert_eq!(
        std::fs::read(&local).unwrap(),
        std::fs::read(&source).unwrap()
    );

    run_ok("nbdcopy", &[local.to_str().unwrap(), &h.uri("target")]).await;
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&source).unwrap()
    );

    // Export to export, several connections each way.
    fill(&target, 0, MIB as usize, 0x01);
    run_ok(
        "nbdcopy",
        &["--connections=4", &h.uri("source"), &h.uri("target")],
    )
    .await;
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&source).unwrap()
    );
    h.wait_idle().await;
}

/// Reads of an image on tmpfs go out spliced; every client still gets the
/// right bytes, with structured and with simple replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spliced_reads_from_tmpfs() {
    let h = Harness::start().await;
    let image = h.memory_image("mem.raw", 24 * MIB);
    write_at(&image, 0, &pattern(24 * MIB as usize, 5));
    h.export_file(&ExportSpec::new("mem"), &image).await;
    let uri = h.uri("mem");
    let copy = h.dir.path().join("copy.raw");
    run_ok(
        "nbdcopy",
        &["--request-size=1048576", &uri, copy.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&image).unwrap()
    );
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            image.to_str().unwrap(),
            &uri,
        ],
    )
    .await;
    let out = common::nbdsh(
        &uri,
        r#"
import hashlib, nbd, sys
for structured in (True, False):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(sys.argv[1])
    digest = hashlib.sha256()
    for off in range(0, 24 * 1024 * 1024, 3 * 1024 * 1024):
        digest.update(h.pread(3 * 1024 * 1024, off))
    assert h.pread(100000, 12345) == h.pread(100000, 12345)
    print(digest.hexdigest())
    h.shutdown()
"#,
    )
    .await;
    use std::fmt::Write;
    let want = sha256_hex(&std::fs::read(&image).unwrap());
    let mut expected = String::new();
    writeln!(expected, "{want}").unwrap();
    writeln!(expected, "{want}").unwrap();
    assert_eq!(out, expected);
}

fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

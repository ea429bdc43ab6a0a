//! The `raw` format (a window of its file) and the null device (`null-co`
//! and `null-aio`, one driver under two names), and the node-level
//! `detect-zeroes` policy, through backends.

mod bytes_io;
mod common;

use bytes_io::BytesIo;
use std::time::{Duration, Instant};

use block::{BlockGraph, ErrorKind, Extent, WriteFlags, ZeroFlags};
use common::{add, add_err, allocated, file_node, image, pattern, sparse_image};
use serde_json::json;

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_raw_window_maps_requests_into_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB as usize, pattern);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    add(
        &graph,
        json!({"driver": "raw", "node-name": "win", "file": "f0", "offset": 4096, "size": 65536}),
    )
    .await;
    let window = graph.attach_backend("win", true).unwrap();
    assert_eq!(window.size(), 65536);

    let mut buf = vec![0u8; 100];
    window.read_into(10, &mut buf).await.unwrap();
    assert!(buf
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(4096 + 10 + i)));

    window
        .write_from(65536 - 4, b"tail", WriteFlags::default())
        .await
        .unwrap();
    let data = std::fs::read(&path).unwrap();
    assert_eq!(&data[4096 + 65536 - 4..4096 + 65536], b"tail");
    assert_eq!(
        data[4096 + 65536],
        pattern(4096 + 65536),
        "nothing past the window"
    );

    assert_eq!(
        window.read_into(65536, &mut buf).await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        window
            .write_from(65500, &buf, WriteFlags::default())
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NoSpace
    );
    // Block status passes through, at the window's offset.
    assert_eq!(
        window.block_status(0, 65536).await.unwrap(),
        Extent {
            length: 65536,
            data: true,
            zero: false,
            depth: 1
        }
    );
}

#[tokio::test]
async fn raw_block_status_reports_the_files_holes() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 4 * MIB);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "offset": MIB,
               "file": {"driver": "file", "filename": path}}),
    )
    .await;
    let backend = graph.attach_backend("r0", true).unwrap();
    assert_eq!(backend.size(), 3 * MIB);
    backend
        .write_from(0, &[7u8; 4096], WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(
        backend.block_status(0, 3 * MIB).await.unwrap(),
        Extent {
            length: 4096,
            data: true,
            zero: false,
            depth: 1
        }
    );
    assert_eq!(
        backend.block_status(4096, 3 * MIB - 4096).await.unwrap(),
        Extent {
            length: 3 * MIB - 4096,
            data: false,
            zero: true,
            depth: 1
        }
    );
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(
        &on_disk[MIB as usize..MIB as usize + 4096],
        &[7u8; 4096][..]
    );
}

#[tokio::test]
async fn raw_windows_are_checked_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 64 * MIB);
    let graph = BlockGraph::new();
    add(&graph, file_node("f0", &path)).await;
    let cases = [
        (
            json!({"driver": "raw", "node-name": "r", "file": "f0", "offset": 999999999}),
            "Offset (999999999) cannot be greater than size of the containing file (67108864)",
        ),
        (
            json!({"driver": "raw", "node-name": "r", "file": "f0", "offset": 512, "size": 67108864}),
            "The sum of offset (512) and size (67108864) has to be smaller or equal to the  actual size of the containing file (67108864)",
        ),
        (
            json!({"driver": "raw", "node-name": "r", "file": "f0", "size": 1000}),
            "Specified size is not multiple of 512",
        ),
        (
            json!({"driver": "raw", "node-name": "r", "file": "f0", "offset": -5}),
            "Value '-5' is out of range for parameter 'offset'",
        ),
    ];
    for (options, message) in cases {
        assert_eq!(add_err(&graph, options).await, message);
    }
    assert_eq!(
        graph.node_names(),
        ["f0"],
        "failed opens leave nothing behind"
    );
}

#[tokio::test]
async fn a_failed_parent_closes_its_inline_child() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", MIB);
    let graph = BlockGraph::new();
    add_err(
        &graph,
        json!({"driver": "raw", "node-name": "r", "size": 1000,
               "file": {"driver": "file", "filename": path, "node-name": "inner"}}),
    )
    .await;
    assert!(graph.node_names().is_empty());
    // The name is free again.
    add(&graph, file_node("inner", &path)).await;
}

/// The two names of the null device, as QEMU has them.
const NULL_DRIVERS: [&str; 2] = ["null-co", "null-aio"];

#[tokio::test]
async fn null_reads_leave_the_buffer_alone_unless_asked_for_zeroes() {
    for driver in NULL_DRIVERS {
        let graph = BlockGraph::new();
        add(&graph, json!({"driver": driver, "node-name": "n0"})).await;
        add(
            &graph,
            json!({"driver": driver, "node-name": "z0", "size": MIB, "read-zeroes": true}),
        )
        .await;
        let plain = graph.attach_backend("n0", true).unwrap();
        let zeroes = graph.attach_backend("z0", true).unwrap();
        assert_eq!(plain.size(), 1 << 30);
        assert_eq!(zeroes.size(), MIB);

        let mut buf = vec![0xEEu8; 4096];
        plain.read_into(0, &mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0xEE), "{driver}");
        zeroes.read_into(0, &mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0), "{driver}");

        plain
            .write_from(0, &buf, WriteFlags::default())
            .await
            .unwrap();
        plain
            .write_zeroes(0, MIB, ZeroFlags::default())
            .await
            .unwrap();
        plain.flush().await.unwrap();

        assert_eq!(
            plain.block_status(0, MIB).await.unwrap(),
            Extent {
                length: MIB,
                data: false,
                zero: false,
                depth: 0
            }
        );
        assert_eq!(
            zeroes.block_status(4096, 8192).await.unwrap(),
            Extent {
                length: 8192,
                data: false,
                zero: true,
                depth: 1
            }
        );
        assert_eq!(
            zeroes.read_into(MIB, &mut buf).await.unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        // The driver's own name, and its file name: `null-co://` or
        // `null-aio://` with the default options (newest node first).
        let info = graph.query_named_block_nodes(true);
        assert_eq!(info[1].node_name.as_deref(), Some("n0"));
        assert_eq!(info[1].drv, driver);
        assert_eq!(info[1].file, format!("{driver}://"));
        assert_eq!(info[0].drv, driver);
        // With options, `json:` in QEMU's QDict order (as QSD prints it).
        assert_eq!(
            info[0].file,
            format!("json:{{\"read-zeroes\": true, \"driver\": \"{driver}\", \"size\": 1048576}}")
        );
    }
}

#[tokio::test]
async fn null_latency_delays_requests() {
    for driver in NULL_DRIVERS {
        let graph = BlockGraph::new();
        add(
            &graph,
            json!({"driver": driver, "node-name": "slow", "latency-ns": 20_000_000}),
        )
        .await;
        let backend = graph.attach_backend("slow", false).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        backend.read_into(0, &mut buf).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(20), "{driver}");
        let info = graph.query_named_block_nodes(true);
        assert_eq!(
            info[0].file,
            format!("{driver}://"),
            "latency is not a strong option"
        );
    }
}

#[tokio::test]
async fn detect_zeroes_turns_zero_writes_into_holes() {
    let dir = tempfile::tempdir().unwrap();
    let unmap = image(dir.path(), "unmap.img", MIB as usize, |_| 1);
    let on = image(dir.path(), "on.img", MIB as usize, |_| 1);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "file", "node-name": "u", "filename": unmap,
               "discard": "unmap", "detect-zeroes": "unmap"}),
    )
    .await;
    add(
        &graph,
        json!({"driver": "file", "node-name": "o", "filename": on,
               "discard": "unmap", "detect-zeroes": "on"}),
    )
    .await;
    let u = graph.attach_backend("u", true).unwrap();
    let o = graph.attach_backend("o", true).unwrap();
    let zeroes = vec![0u8; 262144];
    let before = allocated(&unmap);
    u.write_from(0, &zeroes, WriteFlags::default())
        .await
        .unwrap();
    o.write_from(0, &zeroes, WriteFlags::default())
        .await
        .unwrap();
    assert!(
        allocated(&unmap) < before,
        "detect-zeroes=unmap punched a hole"
    );
    assert_eq!(
        u.block_status(0, MIB).await.unwrap(),
        Extent {
            length: 262144,
            data: false,
            zero: true,
            depth: 1
        }
    );
    for path in [&unmap, &on] {
        let data = std::fs::read(path).unwrap();
        assert!(data[..262144].iter().all(|&b| b == 0));
        assert!(data[262144..].iter().all(|&b| b == 1));
    }
    // Non-zero data is written as data.
    u.write_from(0, &[0, 0, 5], WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(&std::fs::read(&unmap).unwrap()[..3], &[0, 0, 5]);
}

#[tokio::test]
async fn null_refuses_delays_and_sizes_qemu_refuses() {
    // A negative delay wraps to a huge unsigned one, as in QEMU; both are
    // refused rather than left to hang every request (and the exit).
    for driver in ["null-co", "null-aio"] {
        let graph = BlockGraph::new();
        for latency in [json!(u64::MAX - 4), json!(1u64 << 63)] {
            let err = add_err(
                &graph,
                json!({"driver": driver, "node-name": "n", "latency-ns": latency}),
            )
            .await;
            assert_eq!(err, "latency-ns is invalid");
        }
        let err = add_err(
            &graph,
            json!({"driver": driver, "node-name": "n", "size": i64::MAX}),
        )
        .await;
        assert_eq!(err, "Could not refresh total sector count: File too large");
        add(
            &graph,
            json!({"driver": driver, "node-name": "n", "latency-ns": i64::MAX}),
        )
        .await;
    }
}

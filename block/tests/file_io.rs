//! The `file` driver through a backend, on real files: data round trips,
//! refusals that leave the file untouched, holes, zeroes, block status,
//! `O_DIRECT` with unaligned requests, open errors.

mod bytes_io;
mod common;

use bytes_io::BytesIo;
use std::os::fd::AsRawFd;
use std::path::Path;

use block::{BlockBackend, BlockGraph, ErrorKind, Extent, WriteFlags, ZeroFlags};
use common::{add, add_err, allocated, file_node, image, pattern, sparse_image};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

/// A graph with file node `f0` on `path` (plus `options`), and a backend
/// on it, writable or not.
async fn file_backend(path: &Path, options: Value, writable: bool) -> (BlockGraph, BlockBackend) {
    let mut node = file_node("f0", path);
    node.as_object_mut()
        .unwrap()
        .extend(options.as_object().unwrap().clone());
    let graph = BlockGraph::new();
    add(&graph, node).await;
    let backend = graph.attach_backend("f0", writable).unwrap();
    (graph, backend)
}

fn contents(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read image")
}

/// Where the next hole at or after `offset` starts, as the kernel says.
fn next_hole(path: &Path, offset: i64) -> i64 {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: plain lseek on a descriptor we own.
    unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_HOLE) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_in_the_file_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB, pattern);
    let (_graph, backend) = file_backend(&path, json!({}), true).await;
    assert_eq!(backend.size(), MIB as u64);
    assert!(!backend.is_read_only());

    let mut buf = vec![0u8; 4096];
    backend.read_into(12345, &mut buf).await.unwrap();
    assert!(buf
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(12345 + i)));

    let data: Vec<u8> = (0..10_000).map(|i| (i * 7 % 256) as u8).collect();
    backend
        .write_from(777, &data, WriteFlags::default())
        .await
        .unwrap();
    backend
        .write_from(
            MIB as u64 - 3,
            b"end",
            WriteFlags {
                fua: true,
                ..WriteFlags::default()
            },
        )
        .await
        .unwrap();
    backend.flush().await.unwrap();

    let mut expected: Vec<u8> = (0..MIB).map(pattern).collect();
    expected[777..10_777].copy_from_slice(&data);
    expected[MIB - 3..].copy_from_slice(b"end");
    assert_eq!(contents(&path), expected);

    let mut back = vec![0u8; data.len()];
    backend.read_into(777, &mut back).await.unwrap();
    assert_eq!(back, data);
    let mut empty = [];
    backend.read_into(MIB as u64, &mut empty).await.unwrap();
}

#[tokio::test]
async fn refused_requests_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB, pattern);
    let before = contents(&path);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "file", "node-name": "f0", "filename": path, "discard": "unmap"}),
    )
    .await;
    let writer = graph.attach_backend("f0", true).unwrap();
    let reader = graph.attach_backend("f0", false).unwrap();
    let end = MIB as u64;

    let mut buf = vec![0xAAu8; 8192];
    let kind = |r: block::BlockResult<()>| r.unwrap_err().kind;
    assert_eq!(
        kind(writer.read_into(end - 4096, &mut buf).await),
        ErrorKind::InvalidArgument
    );
    assert!(
        buf.iter().all(|&b| b == 0xAA),
        "a refused read fills nothing"
    );
    assert_eq!(
        kind(writer.read_into(u64::MAX, &mut buf).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(
            writer
                .write_from(end - 4096, &buf, WriteFlags::default())
                .await
        ),
        ErrorKind::NoSpace
    );
    assert_eq!(
        kind(
            writer
                .write_from(u64::MAX - 1, &buf, WriteFlags::default())
                .await
        ),
        ErrorKind::NoSpace
    );
    assert_eq!(
        kind(writer.write_zeroes(end, 1, ZeroFlags::default()).await),
        ErrorKind::NoSpace
    );
    assert_eq!(
        kind(writer.discard(end - 1, 2).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        writer.block_status(end, 1).await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        writer.block_status(0, 0).await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );

    assert!(reader.is_read_only());
    assert_eq!(
        kind(reader.write_from(0, &buf, WriteFlags::default()).await),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(reader.write_zeroes(0, 4096, ZeroFlags::default()).await),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(reader.discard(0, 4096).await),
        ErrorKind::PermissionDenied
    );
    // Permission is checked before bounds.
    assert_eq!(
        kind(reader.write_from(end, &buf, WriteFlags::default()).await),
        ErrorKind::PermissionDenied
    );

    assert_eq!(contents(&path), before);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        end,
        "the file did not grow"
    );
}

#[tokio::test]
async fn discard_punches_holes_only_with_discard_unmap() {
    let dir = tempfile::tempdir().unwrap();
    let ignoring = image(dir.path(), "ignore.img", MIB, |_| 0x55);
    let unmapping = image(dir.path(), "unmap.img", MIB, |_| 0x55);
    let graph = BlockGraph::new();
    add(&graph, file_node("keep", &ignoring)).await;
    add(
        &graph,
        json!({"driver": "file", "node-name": "punch", "filename": unmapping, "discard": "unmap"}),
    )
    .await;
    let keep = graph.attach_backend("keep", true).unwrap();
    let punch = graph.attach_backend("punch", true).unwrap();

    keep.discard(65536, 262144).await.unwrap();
    assert!(
        contents(&ignoring).iter().all(|&b| b == 0x55),
        "discard=ignore"
    );
    assert_eq!(next_hole(&ignoring, 0), MIB as i64, "no hole");

    punch.discard(65536, 262144).await.unwrap();
    assert_eq!(next_hole(&unmapping, 0), 65536, "a hole where discarded");
    let data = contents(&unmapping);
    assert!(data[65536..327680].iter().all(|&b| b == 0));
    assert!(data[..65536]
        .iter()
        .chain(&data[327680..])
        .all(|&b| b == 0x55));
    assert_eq!(
        punch.block_status(65536, 1 << 19).await.unwrap(),
        Extent {
            length: 262144,
            data: false,
            zero: true,
            depth: 1
        }
    );
    assert_eq!(
        punch.block_status(0, MIB as u64).await.unwrap(),
        Extent {
            length: 65536,
            data: true,
            zero: false,
            depth: 1
        }
    );
}

#[tokio::test]
async fn write_zeroes_unmaps_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB, |_| 0x77);
    let (_graph, backend) = file_backend(&path, json!({"discard": "unmap"}), true).await;
    let allocated_before = allocated(&path);

    let keep_allocated = ZeroFlags {
        may_unmap: false,
        no_fallback: true,
        fua: false,
    };
    backend
        .write_zeroes(0, 131072, keep_allocated)
        .await
        .unwrap();
    let unmap = ZeroFlags {
        may_unmap: true,
        no_fallback: false,
        fua: true,
    };
    backend.write_zeroes(524288, 131072, unmap).await.unwrap();
    // Unaligned ranges work too.
    backend
        .write_zeroes(300001, 999, ZeroFlags::default())
        .await
        .unwrap();

    let data = contents(&path);
    let zero_ranges = [0..131072, 524288..655360, 300001..301000];
    for (i, &b) in data.iter().enumerate() {
        let zero = zero_ranges.iter().any(|r| r.contains(&i));
        assert_eq!(b, if zero { 0 } else { 0x77 }, "byte {i}");
    }
    assert_eq!(
        next_hole(&path, 0),
        524288,
        "only the unmapped range is a hole"
    );
    assert!(allocated(&path) < allocated_before);
    assert!(backend.can_fast_zero());
}

#[tokio::test]
async fn block_status_follows_the_files_holes() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "sparse.img", 4 * MIB as u64);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 65536], MIB as u64))
        .unwrap();
    let (_graph, backend) = file_backend(&path, json!({}), false).await;
    let size = backend.size();
    let hole = |length| Extent {
        length,
        data: false,
        zero: true,
        depth: 1,
    };
    assert_eq!(
        backend.block_status(0, size).await.unwrap(),
        hole(MIB as u64)
    );
    assert_eq!(
        backend
            .block_status(MIB as u64, size - MIB as u64)
            .await
            .unwrap(),
        Extent {
            length: 65536,
            data: true,
            zero: false,
            depth: 1
        }
    );
    assert_eq!(
        backend
            .block_status(MIB as u64 + 65536, 4096)
            .await
            .unwrap(),
        hole(4096)
    );
    assert_eq!(
        backend
            .block_status(2 * MIB as u64, 2 * MIB as u64)
            .await
            .unwrap(),
        hole(2 * MIB as u64),
        "the trailing hole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_io_handles_unaligned_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB, pattern);
    let (_graph, backend) = file_backend(&path, json!({"cache": {"direct": true}}), true).await;
    let align = backend.limits().request_alignment as usize;
    assert!(align >= 512 && align.is_power_of_two(), "alignment {align}");

    let mut expected: Vec<u8> = (0..MIB).map(pattern).collect();
    for (offset, len) in [
        (1, 10),
        (511, 2),
        (4095, 4097),
        (100_000, 70_001),
        (MIB - 5, 5),
    ] {
        let mut buf = vec![0u8; len];
        backend.read_into(offset as u64, &mut buf).await.unwrap();
        assert_eq!(buf, &expected[offset..offset + len], "read {offset}+{len}");
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + offset) as u8).collect();
        backend
            .write_from(offset as u64, &data, WriteFlags::default())
            .await
            .unwrap();
        expected[offset..offset + len].copy_from_slice(&data);
    }
    // Aligned requests from an unaligned buffer.
    let mut storage = vec![0u8; 2 * align + 1];
    let unaligned = &mut storage[1..=2 * align];
    backend.read_into(align as u64, unaligned).await.unwrap();
    assert_eq!(unaligned, &expected[align..3 * align]);
    backend.flush().await.unwrap();
    assert_eq!(contents(&path), expected);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unaligned_direct_writes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 64 * 1024, |_| 0);
    let (_graph, backend) = file_backend(&path, json!({"cache": {"direct": true}}), true).await;
    // 64 writers, each owning 7 bytes of the same few blocks.
    let tasks: Vec<_> = (0..64u8)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let data = [i + 1; 7];
                backend
                    .write_from(u64::from(i) * 7, &data, WriteFlags::default())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let data = contents(&path);
    for i in 0..64usize {
        assert!(
            data[i * 7..i * 7 + 7].iter().all(|&b| b == i as u8 + 1),
            "writer {i}"
        );
    }
}

#[tokio::test]
async fn reads_past_the_end_of_a_shrunk_file_are_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 8192, |_| 9);
    let (_graph, backend) = file_backend(&path, json!({}), false).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mut buf = vec![0xFFu8; 8192];
    backend.read_into(0, &mut buf).await.unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 9));
    assert!(buf[4096..].iter().all(|&b| b == 0));
}

#[tokio::test]
async fn open_errors_read_like_qemus() {
    let dir = tempfile::tempdir().unwrap();
    let graph = BlockGraph::new();
    let missing = dir.path().join("missing.img");
    assert_eq!(
        add_err(&graph, file_node("f0", &missing)).await,
        format!(
            "Could not open '{}': No such file or directory",
            missing.display()
        )
    );
    assert_eq!(
        add_err(&graph, file_node("f0", dir.path())).await,
        format!("Could not open '{}': Is a directory", dir.path().display())
    );
    assert_eq!(
        add_err(
            &graph,
            json!({"driver": "file", "node-name": "f0", "filename": dir.path(), "read-only": true})
        )
        .await,
        format!(
            "'file' driver requires '{}' to be a regular file",
            dir.path().display()
        )
    );
    let path = sparse_image(dir.path(), "disk.img", 4096);
    assert_eq!(
        add_err(
            &graph,
            json!({"driver": "file", "node-name": "f0", "filename": path, "aio": "native"})
        )
        .await,
        "aio=native was specified, but it requires cache.direct=on, which was not specified."
    );
    assert_eq!(
        add_err(
            &graph,
            json!({"driver": "file", "node-name": "f0", "filename": path, "pr-manager": "x"})
        )
        .await,
        "No persistent reservation manager with id 'x'"
    );
    add(
        &graph,
        json!({"driver": "file", "node-name": "f0", "filename": path, "aio": "io_uring"}),
    )
    .await;
}

#[tokio::test]
async fn read_only_nodes_open_the_file_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 4096, pattern);
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o444);
    std::fs::set_permissions(&path, permissions).unwrap();
    let (_graph, backend) = file_backend(&path, json!({"read-only": true}), false).await;
    let mut buf = [0u8; 16];
    backend.read_into(0, &mut buf).await.unwrap();
    assert_eq!(buf[3], pattern(3));
}

#[tokio::test]
async fn sizes_count_whole_sectors_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "odd.img", 1000, |_| 3);
    let (_graph, backend) = file_backend(&path, json!({}), true).await;
    assert_eq!(backend.size(), 1024);
    let mut buf = [0xFFu8; 24];
    backend.read_into(1000, &mut buf).await.unwrap();
    assert_eq!(buf, [0u8; 24], "the tail past the end reads as zeroes");
    backend
        .write_from(1020, b"tail", WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_memory_work_the_same() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        return; // no tmpfs here
    };
    let path = image(dir.path(), "disk.img", MIB, pattern);
    let (_graph, backend) = file_backend(&path, json!({"discard": "unmap"}), true).await;
    backend
        .write_from(4096, &[9u8; 8192], WriteFlags::default())
        .await
        .unwrap();
    let mut buf = vec![0u8; 3 * 4096];
    backend.read_into(0, &mut buf).await.unwrap();
    assert!(buf[..4096]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i)));
    assert!(buf[4096..].iter().all(|&b| b == 9));
    backend.discard(65536, 65536).await.unwrap();
    assert_eq!(next_hole(&path, 0), 65536);
    assert_eq!(contents(&path)[..4096], buf[..4096]);
}

/// Long writes to a file in memory take turns on a lock of their own:
/// writers on several threads at once all land, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_concurrent_writes_to_a_file_in_memory_all_land() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        return; // no tmpfs here
    };
    const LEN: usize = 256 << 10;
    let path = image(dir.path(), "disk.img", 16 * LEN, pattern);
    let (_graph, backend) = file_backend(&path, json!({}), true).await;
    let writers: Vec<_> = (0..16u8)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                for _ in 0..8 {
                    let offset = u64::from(i) * LEN as u64;
                    backend
                        .write_from(offset, &vec![i + 1; LEN], WriteFlags::default())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let on_file = contents(&path);
    for (i, slot) in on_file.chunks(LEN).enumerate() {
        assert!(slot.iter().all(|&b| b == i as u8 + 1), "slot {i}");
    }
}

#[tokio::test]
async fn block_status_cache_forgets_discarded_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", MIB, |_| 1);
    let (_graph, backend) = file_backend(&path, json!({"discard": "unmap"}), true).await;
    let all = MIB as u64;
    let data = |length| Extent {
        length,
        data: true,
        zero: false,
        depth: 1,
    };
    assert_eq!(backend.block_status(0, all).await.unwrap(), data(all));
    assert_eq!(backend.block_status(4096, 4096).await.unwrap(), data(4096));
    backend.discard(262144, 65536).await.unwrap();
    assert_eq!(
        backend.block_status(262144, 4096).await.unwrap(),
        Extent {
            length: 4096,
            data: false,
            zero: true,
            depth: 1
        }
    );
    assert_eq!(backend.block_status(0, all).await.unwrap(), data(262144));
    let unmap = ZeroFlags {
        may_unmap: true,
        ..ZeroFlags::default()
    };
    backend.write_zeroes(0, 65536, unmap).await.unwrap();
    assert!(!backend.block_status(0, all).await.unwrap().data);
}

#[tokio::test]
async fn a_parent_writing_past_the_end_grows_the_file_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "disk.img", 4096, pattern);
    let graph = BlockGraph::new();
    let node = add(&graph, file_node("f0", &path)).await;
    // A format node's view: no backend bounds, the image file grows.
    node.write_from(8192, b"more", WriteFlags::default())
        .await
        .unwrap();
    assert_eq!(node.size(), 8704, "8196 bytes, counted in sectors");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8196);
}

/// An immutable file (`chattr +i`) cannot be opened for writing, even by
/// root; undone when dropped.
struct Immutable<'a>(&'a Path);

impl<'a> Immutable<'a> {
    fn set(path: &'a Path) -> Option<Self> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Immutable(path))
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(self.0)
            .status();
    }
}

#[tokio::test]
async fn auto_read_only_falls_back_and_refuses_writers_like_qsd() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path(), "imm.img", 4096, pattern);
    let Some(_immutable) = Immutable::set(&path) else {
        return; // the file system has no immutable flag
    };
    let graph = BlockGraph::new();
    let refused = format!(
        "Could not open '{}': Operation not permitted",
        path.display()
    );
    assert_eq!(add_err(&graph, file_node("rw", &path)).await, refused);
    add(
        &graph,
        json!({"driver": "file", "node-name": "auto", "filename": path, "auto-read-only": true}),
    )
    .await;
    assert!(
        !graph.node("auto").unwrap().is_read_only(),
        "as QSD: ro=false"
    );
    assert_eq!(
        graph.attach_backend("auto", true).unwrap_err().message,
        refused
    );
    let reader = graph.attach_backend("auto", false).unwrap();
    let mut buf = [0u8; 8];
    reader.read_into(0, &mut buf).await.unwrap();
    assert_eq!(buf[7], pattern(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_keep_their_data_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_image(dir.path(), "disk.img", 4 * MIB as u64);
    let graph = BlockGraph::new();
    add(
        &graph,
        json!({"driver": "raw", "node-name": "r0", "file": {"driver": "file", "filename": path}}),
    )
    .await;
    let backend = graph.attach_backend("r0", true).unwrap();
    // 256 tasks, each writing then reading back its own unaligned slot.
    let tasks: Vec<_> = (0..256u64)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let offset = i * 16_001;
                let data: Vec<u8> = (0..9_999).map(|j| (i as usize * 31 + j) as u8).collect();
                backend
                    .write_from(offset, &data, WriteFlags::default())
                    .await
                    .unwrap();
                let mut back = vec![0u8; data.len()];
                backend.read_into(offset, &mut back).await.unwrap();
                assert_eq!(back, data, "slot {i}");
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let on_disk = contents(&path);
    for i in 0..256usize {
        let offset = i * 16_001;
        assert!(on_disk[offset..offset + 9_999]
            .iter()
            .enumerate()
            .all(|(j, &b)| b == (i * 31 + j) as u8));
    }
}

#[tokio::test]
async fn files_whose_length_cannot_be_learned_are_refused_as_qemu_does() {
    // procfs files are regular files without a length: QSD refuses them.
    let graph = BlockGraph::new();
    for path in ["/proc/self/mem", "/proc/self/status"] {
        let err = add_err(
            &graph,
            serde_json::json!({"driver": "file", "node-name": "p", "filename": path}),
        )
        .await;
        assert_eq!(
            err,
            "Could not refresh total sector count: Invalid argument"
        );
    }
}

//! qcow2 metadata from the fuzzer: its bytes are the start of a qcow2
//! image (header, extensions, L1, L2 and refcount tables, snapshot table:
//! whatever they say), written to a file on tmpfs and opened read-write
//! with the real qcow2 driver through a block graph. If it opens, the
//! image is read, written, zeroed, discarded, asked for block status
//! and flushed at offsets the input picks, then closed. Nothing may panic
//! or hang; allocations stay within the driver's limits.
#![no_main]

use std::sync::OnceLock;

use block::{BlockGraph, IoBuf, WriteFlags};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// The largest image kept: what the fuzzer writes at the file's start.
const MAX_IMAGE: usize = 1 << 20;
/// Inputs whose header claims more snapshots than this, but no more than
/// QEMU's limit, are skipped: every snapshot past the first few takes the
/// same path again (its table entry parsed, its L1 table read and counted
/// by the repair of a dirty image), and thousands of them made each such
/// input cost as much as a hundred others. Counts above QEMU's limit still
/// reach the driver, which must refuse them.
const MAX_SNAPSHOTS: u32 = 64;
/// QEMU's `QCOW_MAX_SNAPSHOTS`.
const QEMU_MAX_SNAPSHOTS: u32 = 65_536;

struct Context {
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 || data.len() > MAX_IMAGE {
        return;
    }
    let snapshots = data
        .get(60..64)
        .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
    if snapshots > MAX_SNAPSHOTS && snapshots <= QEMU_MAX_SNAPSHOTS {
        return;
    }
    let context = CONTEXT.get_or_init(|| Context {
        runtime: tokio::runtime::Runtime::new().expect("runtime"),
        dir: tempfile::tempdir_in("/dev/shm").expect("tmpfs directory"),
    });
    let image = context.dir.path().join("image.qcow2");
    std::fs::write(&image, data).expect("image file");
    // The first 8 bytes pick where the operations go.
    let seed = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    context.runtime.block_on(async {
        let graph = BlockGraph::new();
        let options = json!({
            "driver": "qcow2", "node-name": "q",
            "file": {"driver": "file", "filename": image, "locking": "off"},
        });
        let Ok(options) = schema::from_json(options) else {
            return;
        };
        if graph.blockdev_add(&options).await.is_err() {
            return;
        }
        if let Ok(backend) = graph.attach_backend("q", true) {
            let size = backend.size();
            if size > 0 {
                let at = |salt: u64| (seed.rotate_left(salt as u32 * 8) % size) & !511;
                let len = |salt: u64| (512 + (seed >> salt) % 65536).min(size - at(salt));
                let _ = backend.read(at(1), &IoBuf::zeroed(len(1) as usize)).await;
                let _ = backend
                    .write(
                        at(2),
                        &IoBuf::copy_of(&vec![0xa5; len(2) as usize]),
                        WriteFlags::default(),
                    )
                    .await;
                let _ = backend.block_status(at(3), len(3)).await;
                let _ = backend.discard(at(4), len(4)).await;
                let _ = backend.read(at(2), &IoBuf::zeroed(len(2) as usize)).await;
                let _ = backend.flush().await;
            }
            drop(backend);
        }
        let _ = graph.blockdev_del("q").await;
    });
});

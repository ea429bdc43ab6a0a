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
/// Inputs whose header claims more than this, but no more than the
/// driver accepts, are skipped: past the first few snapshots, or the
/// first megabyte of a table, the driver takes the same path again (an
/// entry parsed, an L1 table read and counted by the repair of a dirty
/// image; a table read past the file's end as zeroes and converted), and
/// such inputs cost as much as a hundred others each. Claims above the
/// driver's limits still reach it, which must refuse them.
const MAX_SNAPSHOTS: u64 = 64;
const MAX_TABLE_BYTES: u64 = 1 << 20;
/// The driver's limits: QEMU's `QCOW_MAX_SNAPSHOTS`, `QCOW_MAX_L1_SIZE`,
/// `QCOW_MAX_REFTABLE_SIZE`, and the largest cluster (2 MiB).
const QEMU_MAX_SNAPSHOTS: u64 = 65_536;
const QEMU_MAX_L1_BYTES: u64 = 32 << 20;
const QEMU_MAX_REFTABLE_BYTES: u64 = 8 << 20;
const QEMU_MAX_CLUSTER_BITS: u32 = 21;

/// Whether the header claims many of something the driver would accept,
/// each of which takes the same path (see [`MAX_SNAPSHOTS`]).
fn repeats_one_path(header: &[u8]) -> bool {
    let be32 = |at: usize| {
        header
            .get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    };
    let many = |claim: u64, limit: u64, accepted: u64| claim > limit && claim <= accepted;
    let cluster_bits = be32(20).min(QEMU_MAX_CLUSTER_BITS);
    many(u64::from(be32(60)), MAX_SNAPSHOTS, QEMU_MAX_SNAPSHOTS)
        || many(u64::from(be32(36)) * 8, MAX_TABLE_BYTES, QEMU_MAX_L1_BYTES)
        || many(
            u64::from(be32(56)) << cluster_bits,
            MAX_TABLE_BYTES,
            QEMU_MAX_REFTABLE_BYTES,
        )
}

struct Context {
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 || data.len() > MAX_IMAGE {
        return;
    }
    if repeats_one_path(data) {
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

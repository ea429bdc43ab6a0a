//! Compressed writes (QEMU's `BDRV_REQ_WRITE_COMPRESSED`, which a backup
//! with `compress: true` asks for): each whole guest cluster is deflated
//! as QEMU deflates it (raw deflate, a 4 KiB window) and stored in a few
//! 512-byte sectors of a host cluster that several compressed clusters
//! share; its L2 entry is a compressed descriptor.
//!
//! As in QEMU, only clusters that hold no host cluster yet (unallocated
//! or plain zero) can be written compressed, and a cluster that does not
//! shrink below its own size is written as a normal one. Each compressed
//! cluster adds one reference to every host cluster its sectors touch;
//! here they touch one, since data never crosses a host cluster's end.
//! The host cluster being filled is remembered only until the next
//! writeback applies frees (it might have been freed and reused), and
//! only under the refcount lock. Images whose compression type is zstd
//! get normal clusters: storaged has no zstd encoder.

use super::header::CompressionType;
use super::layout::{set_entry, ClusterKind, COMPRESSED_SECTOR_SIZE, OFLAG_COMPRESSED};
use super::Qcow2;
use crate::driver::WriteFlags;
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;

/// QEMU's window for compressed clusters: 2^12 bytes.
const WINDOW_BITS: u8 = 12;

/// Where the next compressed cluster goes: the host cluster being filled
/// and its next free byte (sector aligned).
#[derive(Debug, Clone, Copy)]
pub(super) struct CompressedCursor {
    cluster: u64,
    next: u64,
}

/// `data` deflated as QEMU deflates clusters, if it fits in `limit` bytes.
fn deflate(data: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut deflater =
        flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, WINDOW_BITS);
    let mut out = Vec::with_capacity(limit);
    match deflater.compress_vec(data, &mut out, flate2::FlushCompress::Finish) {
        Ok(flate2::Status::StreamEnd) => Some(out),
        _ => None,
    }
}

impl Qcow2 {
    /// Writes `buf` at `offset` compressed, cluster by cluster: `offset`
    /// is cluster aligned and so is the length, but at the end of the
    /// disk.
    pub(super) async fn write_compressed_at(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.check_writable()?;
        let geo = *self.geo();
        let cs = geo.cluster_size();
        let end = offset + buf.len() as u64;
        if !offset.is_multiple_of(cs) || (!end.is_multiple_of(cs) && end != self.virtual_size()) {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "Compressed writes must cover whole clusters",
            ));
        }
        self.mark_dirty().await?;
        let mut done = 0;
        while done < buf.len() {
            let len = (buf.len() - done).min(cs as usize);
            let part = buf.slice(done..done + len);
            self.write_compressed_cluster(offset + done as u64, &part)
                .await?;
            done += len;
        }
        self.writeback_if_wanted().await
    }

    async fn write_compressed_cluster(&self, guest: u64, part: &IoBuf) -> BlockResult<()> {
        let geo = *self.geo();
        let cs = geo.cluster_size();
        let cluster = geo.cluster_index(guest);
        let _lock = self.clusters.lock(cluster, cluster + 1, true).await;
        let entry = self.l2_entries(cluster, 1).await?[0];
        let kind = self.decode(entry, cluster)?;
        if !matches!(kind, ClusterKind::Unallocated | ClusterKind::ZeroPlain) {
            return Err(BlockError {
                kind: ErrorKind::Io,
                message: "Compressed writes to allocated clusters are not supported".into(),
                errno: Some(libc::EIO),
            });
        }
        let mut data = vec![0u8; cs as usize];
        part.copy_to_slice(0, &mut data[..part.len()]);
        let compressed = match self.facts.compression {
            CompressionType::Zlib => deflate(&data, cs as usize - 1),
            CompressionType::Zstd => None,
        };
        let Some(compressed) = compressed else {
            // It does not shrink: a normal cluster, as in QEMU.
            drop(_lock);
            return self.write_at(guest, part, WriteFlags::default()).await;
        };
        let len = compressed.len() as u64;
        let host = self.alloc_compressed(len).await?;
        let written = async {
            self.check_overlap(host, len).await?;
            self.file.write_slice(host, &compressed).await
        }
        .await;
        if let Err(e) = written {
            let mut refs = self.refs.lock().await;
            refs.schedule_free(geo.cluster_index(host), 1, false);
            return Err(e);
        }
        let sectors = (host + len - 1) / COMPRESSED_SECTOR_SIZE - host / COMPRESSED_SECTOR_SIZE;
        let descriptor = OFLAG_COMPRESSED | (sectors << geo.csize_shift()) | host;
        let table = self.l2_for_write(geo.l1_index(guest)).await?;
        let mut t = table.lock();
        set_entry(&mut t.bytes, geo.l2_index(guest), descriptor);
        t.dirty = true;
        Ok(())
    }

    /// `len` bytes (less than a cluster) for compressed data: after the
    /// last compressed cluster when they fit in its host cluster (one more
    /// reference to it), else at the start of a new host cluster.
    async fn alloc_compressed(&self, len: u64) -> BlockResult<u64> {
        let cs = self.geo().cluster_size();
        {
            let mut refs = self.refs.lock().await;
            let cursor = *self.compressed_cursor();
            if let Some(cursor) = cursor.filter(|c| c.next + len <= c.cluster + cs) {
                refs.update(self.geo().cluster_index(cursor.cluster), true)
                    .await?;
                *self.compressed_cursor() = Some(CompressedCursor {
                    cluster: cursor.cluster,
                    next: (cursor.next + len).next_multiple_of(COMPRESSED_SECTOR_SIZE),
                });
                return Ok(cursor.next);
            }
        }
        let allocation = self.alloc_clusters(1).await?;
        let _refs = self.refs.lock().await;
        *self.compressed_cursor() = Some(CompressedCursor {
            cluster: allocation.offset,
            next: (allocation.offset + len).next_multiple_of(COMPRESSED_SECTOR_SIZE),
        });
        Ok(allocation.offset)
    }

    /// The host cluster being filled; the caller holds the refcount lock.
    pub(super) fn compressed_cursor(&self) -> std::sync::MutexGuard<'_, Option<CompressedCursor>> {
        self.compressed_cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_deflate_as_the_reader_inflates_them() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 700) as u8).collect();
        let compressed = deflate(&data, 65535).expect("compressible");
        assert!(compressed.len() < 4096);
        let mut back = vec![0u8; 65536];
        super::super::compress::decompress(CompressionType::Zlib, &compressed, &mut back)
            .expect("inflates");
        assert_eq!(back, data);
        // Random bytes do not shrink.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        assert!(deflate(&noise, 65535).is_none());
    }
}

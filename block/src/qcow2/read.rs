//! Reads: each run of clusters is served from the host file (one read per
//! host-contiguous run), the backing image, zeroes, or decompression. As
//! QEMU, each run raises `read_aio`, `read_backing_aio` or
//! `read_compressed` on the file (for a `blkdebug` there).

use schema::block::BlkdebugEvent;

use super::compress::decompress;
use super::layout::ClusterKind;
use super::Qcow2;
use crate::error::BlockResult;
use crate::iobuf::IoBuf;

impl Qcow2 {
    pub(super) async fn read_at(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let geo = *self.geo();
        let first = geo.cluster_index(offset);
        let last = geo.cluster_index(offset + buf.len() as u64 - 1);
        let _lock = self.clusters.lock(first, last + 1, false).await;
        let mut done = 0usize;
        while done < buf.len() {
            let guest = offset + done as u64;
            let mapping = self.map(guest, (buf.len() - done) as u64).await?;
            let part = buf.slice(done..done + mapping.bytes as usize);
            let in_cluster = geo.offset_in_cluster(guest);
            match mapping.kind {
                ClusterKind::Normal { host, .. } => {
                    self.file.debug_event(BlkdebugEvent::ReadAio);
                    self.file.read(host + in_cluster, &part).await?
                }
                ClusterKind::ZeroPlain | ClusterKind::ZeroAlloc { .. } => part.fill_zeroes(),
                ClusterKind::Unallocated => {
                    if self.backing.load().is_some() {
                        self.file.debug_event(BlkdebugEvent::ReadBackingAio);
                    }
                    self.read_backing(guest, &part).await?
                }
                ClusterKind::Compressed { offset, len } => {
                    self.file.debug_event(BlkdebugEvent::ReadCompressed);
                    let cluster = self.read_compressed(offset, len).await?;
                    let start = in_cluster as usize;
                    part.copy_from_slice(0, &cluster[start..start + part.len()]);
                }
            }
            done += mapping.bytes as usize;
        }
        Ok(())
    }

    /// Reads what the backing image has at `guest`: zeroes without one or
    /// past its end.
    pub(super) async fn read_backing(&self, guest: u64, buf: &IoBuf) -> BlockResult<()> {
        let Some(backing) = self.backing() else {
            buf.fill_zeroes();
            return Ok(());
        };
        let backing_size = backing.size();
        let available = backing_size.saturating_sub(guest).min(buf.len() as u64) as usize;
        if available > 0 {
            backing.read(guest, &buf.slice(0..available)).await?;
        }
        buf.slice(available..buf.len()).fill_zeroes();
        Ok(())
    }

    /// Whether the backing image reads as zeroes (without asking it) at
    /// `[guest, guest + len)`: there is none, or it ends before.
    pub(super) fn backing_is_absent(&self, guest: u64) -> bool {
        self.backing().is_none_or(|b| guest >= b.size())
    }

    /// One compressed cluster, decompressed.
    pub(super) async fn read_compressed(&self, offset: u64, len: u64) -> BlockResult<Vec<u8>> {
        let compressed = self.file.read_vec(offset, len as usize).await?;
        let mut cluster = vec![0u8; self.geo().cluster_len()];
        decompress(self.facts.compression, &compressed, &mut cluster)?;
        Ok(cluster)
    }
}

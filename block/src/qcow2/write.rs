//! Writes. Into clusters this image owns alone (`COPIED`), data goes in
//! place under a shared lock, in parallel with anything else. Everything
//! else (unallocated, zero, compressed, or shared with a snapshot) gets
//! new host clusters under an exclusive lock: the data, completed from
//! the old contents where the write covers a cluster only partly
//! (copy-on-write), is written first; only then does the L2 entry point to
//! it, and the old clusters are freed once that is on disk.
//!
//! As QEMU, data written alone raises `write_aio` on the file (for a
//! `blkdebug` there); data written with the copied neighbours raises
//! `cow_read` before they are read and `cow_write` before the write.

use schema::block::BlkdebugEvent;

use super::layout::{set_entry, ClusterKind, OFLAG_COPIED};
use super::refcount::Allocation;
use super::Qcow2;
use crate::driver::WriteFlags;
use crate::error::BlockResult;
use crate::iobuf::IoBuf;

impl Qcow2 {
    pub(super) async fn write_at(
        &self,
        offset: u64,
        buf: &IoBuf,
        flags: WriteFlags,
    ) -> BlockResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.check_writable()?;
        self.mark_dirty().await?;
        let geo = *self.geo();
        let first = geo.cluster_index(offset);
        let last = geo.cluster_index(offset + buf.len() as u64 - 1);
        let mut exclusive = !self.writes_in_place(offset, buf.len() as u64).await?;
        loop {
            let _lock = self.clusters.lock(first, last + 1, exclusive).await;
            // Under the lock the mapping cannot change any more: check it
            // again, a shared lock is only good for in-place writes.
            if !exclusive && !self.writes_in_place(offset, buf.len() as u64).await? {
                exclusive = true;
                continue;
            }
            self.write_segments(offset, buf).await?;
            break;
        }
        if flags.fua {
            self.writeback().await?;
        }
        self.writeback_if_wanted().await
    }

    /// Whether every cluster of the range is owned by this image alone.
    async fn writes_in_place(&self, offset: u64, len: u64) -> BlockResult<bool> {
        let mut done = 0;
        while done < len {
            let mapping = self.map(offset + done, len - done).await?;
            if !matches!(mapping.kind, ClusterKind::Normal { copied: true, .. }) {
                return Ok(false);
            }
            done += mapping.bytes;
        }
        Ok(true)
    }

    async fn write_segments(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let geo = *self.geo();
        let mut done = 0usize;
        while done < buf.len() {
            let guest = offset + done as u64;
            let mapping = self.map(guest, (buf.len() - done) as u64).await?;
            let part = buf.slice(done..done + mapping.bytes as usize);
            match mapping.kind {
                ClusterKind::Normal { host, copied: true } => {
                    let at = host + geo.offset_in_cluster(guest);
                    self.check_overlap(at, part.len() as u64).await?;
                    self.file.debug_event(BlkdebugEvent::WriteAio);
                    self.file.write(at, &part, WriteFlags::default()).await?;
                }
                kind => self.write_new_clusters(guest, &part, kind).await?,
            }
            done += mapping.bytes as usize;
        }
        Ok(())
    }

    /// Writes `data` at `guest` into newly allocated clusters. The range
    /// lies within one L2 table and its clusters are all of one kind (as
    /// [`Qcow2::map`] groups them); the caller holds the exclusive lock.
    async fn write_new_clusters(
        &self,
        guest: u64,
        data: &IoBuf,
        kind: ClusterKind,
    ) -> BlockResult<()> {
        let geo = *self.geo();
        let cs = geo.cluster_size();
        let first = geo.cluster_index(guest);
        let end = geo.offset_in_cluster(guest) as usize + data.len();
        let count = (end as u64).div_ceil(cs);
        let table = self.l2_for_write(geo.l1_index(guest)).await?;
        let old_entries = self.l2_entries(first, count).await?;
        let allocation = self.alloc_clusters(count).await?;
        let written = self
            .write_allocation(&allocation, count, guest, data, kind, &old_entries)
            .await;
        if let Err(e) = written {
            // Nothing references the clusters: give them back (a full
            // disk would otherwise leak one allocation per failed write).
            let mut refs = self.refs.lock().await;
            refs.schedule_free(geo.cluster_index(allocation.offset), count, false);
            return Err(e);
        }
        let index = geo.l2_index(guest);
        {
            let mut t = table.lock();
            for i in 0..count {
                set_entry(
                    &mut t.bytes,
                    index + i as usize,
                    (allocation.offset + i * cs) | OFLAG_COPIED,
                );
            }
            t.dirty = true;
        }
        let mut freed = Vec::new();
        for (i, &entry) in old_entries.iter().enumerate() {
            let old = self.decode(entry, first + i as u64)?;
            freed.extend(geo.host_clusters(old));
        }
        if !freed.is_empty() {
            let mut refs = self.refs.lock().await;
            for (cluster, n) in freed {
                refs.schedule_free(cluster, n, self.tunables().pass_discard_other);
            }
        }
        Ok(())
    }

    /// Writes `data` (and the old contents around it) into a fresh
    /// allocation of `count` clusters for guest offset `guest`.
    async fn write_allocation(
        &self,
        allocation: &Allocation,
        count: u64,
        guest: u64,
        data: &IoBuf,
        kind: ClusterKind,
        old_entries: &[u64],
    ) -> BlockResult<()> {
        let geo = *self.geo();
        let cs = geo.cluster_size();
        let first = geo.cluster_index(guest);
        let head = geo.offset_in_cluster(guest) as usize;
        let tail = (count * cs) as usize - head - data.len();
        self.check_overlap(allocation.offset, count * cs).await?;
        let cluster_start = first * cs;
        let zero_source = match kind {
            ClusterKind::ZeroPlain | ClusterKind::ZeroAlloc { .. } => true,
            ClusterKind::Unallocated => self.backing_is_absent(cluster_start),
            _ => false,
        };
        if head == 0 && tail == 0 {
            self.file.debug_event(BlkdebugEvent::WriteAio);
            self.file
                .write(allocation.offset, data, WriteFlags::default())
                .await?;
        } else if zero_source && allocation.fresh {
            // Never-written clusters read as zeroes already.
            self.file.debug_event(BlkdebugEvent::WriteAio);
            self.file
                .write(allocation.offset + head as u64, data, WriteFlags::default())
                .await?;
        } else {
            // The old contents around the data (zeroes where there are
            // none), written with it in one vectored request.
            let before = IoBuf::zeroed(head);
            let after = IoBuf::zeroed(tail);
            if !zero_source {
                self.file.debug_event(BlkdebugEvent::CowRead);
                if head > 0 {
                    self.read_cow(kind, cluster_start, 0, &before).await?;
                }
                if tail > 0 {
                    let last = count - 1;
                    let last_kind = self.decode(old_entries[last as usize], first + last)?;
                    let at = cs - tail as u64;
                    self.read_cow(last_kind, cluster_start + last * cs, at, &after)
                        .await?;
                }
            }
            let clusters = IoBuf::concat([before, data.clone(), after]);
            self.file.debug_event(BlkdebugEvent::CowWrite);
            self.file
                .write(allocation.offset, &clusters, WriteFlags::default())
                .await?;
        }
        Ok(())
    }

    /// Reads the old contents of guest cluster `cluster_start` (of `kind`)
    /// from byte `from` into `out`, for copy-on-write.
    async fn read_cow(
        &self,
        kind: ClusterKind,
        cluster_start: u64,
        from: u64,
        out: &IoBuf,
    ) -> BlockResult<()> {
        match kind {
            ClusterKind::Unallocated => self.read_backing(cluster_start + from, out).await,
            ClusterKind::ZeroPlain | ClusterKind::ZeroAlloc { .. } => {
                out.fill_zeroes();
                Ok(())
            }
            ClusterKind::Normal { host, .. } => self.file.read(host + from, out).await,
            ClusterKind::Compressed { offset, len } => {
                let cluster = self.read_compressed(offset, len).await?;
                let from = from as usize;
                out.copy_from_slice(0, &cluster[from..from + out.len()]);
                Ok(())
            }
        }
    }
}

//! Guest to host translation: L1 entries, L2 tables through the cache,
//! runs of clusters that read alike, and the allocation (or copy, when
//! shared with a snapshot) of the L2 table a change needs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use schema::block::BlkdebugEvent;

use super::cache::Table;
use super::layout::{
    corrupt, get_entry, CHex, ClusterKind, L1E_OFFSET_MASK, MAX_HOST_OFFSET, OFLAG_COPIED,
};
use super::refcount::Allocation;
use super::Qcow2;
use crate::error::BlockResult;

/// Guest clusters from an offset on that read the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The first cluster's entry, decoded.
    pub kind: ClusterKind,
    /// Bytes from the requested offset with that status (for `Normal`,
    /// contiguous on the host too).
    pub bytes: u64,
}

impl Qcow2 {
    /// Host offset of the L2 table for L1 entry `index` (0: none).
    fn l2_offset(&self, index: usize) -> BlockResult<(u64, bool)> {
        let entry = self.l1().get(index);
        let offset = entry & L1E_OFFSET_MASK;
        if self.geo().offset_in_cluster(offset) != 0 {
            return Err(corrupt(format!(
                "L2 table offset {} unaligned (L1 index: {})",
                CHex(offset),
                CHex(index as u64)
            )));
        }
        Ok((offset, entry & OFLAG_COPIED != 0))
    }

    /// The L2 table at `offset`, from the cache or the disk (raising
    /// `l2_load` on the file first, as QEMU).
    pub(super) async fn load_l2(&self, offset: u64) -> BlockResult<Arc<Table>> {
        let file = &self.file;
        let len = self.geo().cluster_len();
        self.l2_cache
            .get_or_load(offset, || async move {
                file.debug_event(BlkdebugEvent::L2Load);
                file.read_vec(offset, len).await
            })
            .await
    }

    /// The L2 entries of up to `count` guest clusters from `cluster`,
    /// stopping at the end of its L2 table (zeroes if it has none).
    pub(super) async fn l2_entries(&self, cluster: u64, count: u64) -> BlockResult<Vec<u64>> {
        let geo = *self.geo();
        let index = (cluster & (geo.l2_entries() - 1)) as usize;
        let n = count.min(geo.l2_entries() - index as u64) as usize;
        let (offset, _) = self.l2_offset((cluster >> geo.l2_bits) as usize)?;
        if offset == 0 {
            return Ok(vec![0; n]);
        }
        let table = self.load_l2(offset).await?;
        let data = table.lock();
        Ok((index..index + n)
            .map(|i| get_entry(&data.bytes, i))
            .collect())
    }

    /// Decodes an L2 entry of guest cluster `cluster`, refusing offsets
    /// that cannot be right.
    pub(super) fn decode(&self, entry: u64, cluster: u64) -> BlockResult<ClusterKind> {
        let kind = self.geo().classify(entry);
        if let Some(host) = kind.host_cluster() {
            if self.geo().offset_in_cluster(host) != 0 {
                let l2_index = cluster & (self.geo().l2_entries() - 1);
                let l2 = self.l1().get((cluster >> self.geo().l2_bits) as usize) & L1E_OFFSET_MASK;
                return Err(corrupt(format!(
                    "Cluster allocation offset {} unaligned (L2 offset: {}, L2 index: {})",
                    CHex(host),
                    CHex(l2),
                    CHex(l2_index)
                )));
            }
        }
        if let ClusterKind::Compressed { offset, len } = kind {
            if offset.saturating_add(len) > MAX_HOST_OFFSET {
                return Err(corrupt(format!(
                    "Compressed cluster at {offset:#x} lies past the largest host offset"
                )));
            }
        }
        Ok(kind)
    }

    /// The status of `guest` and of the following bytes (up to `max_len`,
    /// within one L2 table) that read the same way.
    pub(super) async fn map(&self, guest: u64, max_len: u64) -> BlockResult<Mapping> {
        let geo = *self.geo();
        let cluster = geo.cluster_index(guest);
        let in_cluster = geo.offset_in_cluster(guest);
        let clusters = (in_cluster + max_len).div_ceil(geo.cluster_size());
        let entries = self.l2_entries(cluster, clusters).await?;
        let first = self.decode(entries[0], cluster)?;
        let mut same = 1;
        for (i, &entry) in entries.iter().enumerate().skip(1) {
            let kind = self.decode(entry, cluster + i as u64)?;
            if !continues(first, kind, i as u64 * geo.cluster_size()) {
                break;
            }
            same += 1;
        }
        let bytes = (same * geo.cluster_size() - in_cluster).min(max_len);
        Ok(Mapping { kind: first, bytes })
    }

    /// The L2 table of L1 entry `index`, ready to be changed: allocated if
    /// missing, copied if shared with a snapshot.
    pub(super) async fn l2_for_write(&self, index: usize) -> BlockResult<Arc<Table>> {
        let (offset, copied) = self.l2_offset(index)?;
        if offset != 0 && copied {
            return self.load_l2(offset).await;
        }
        let _serial = self.l2_alloc.lock().await;
        let (old, copied) = self.l2_offset(index)?;
        if old != 0 && copied {
            return self.load_l2(old).await;
        }
        let bytes = if old != 0 {
            self.load_l2(old).await?.lock().bytes.clone()
        } else {
            vec![0u8; self.geo().cluster_len()]
        };
        let new = self.alloc_clusters(1).await?;
        // The table is complete on disk before the L1 entry (written by a
        // later writeback, after a flush) points to it.
        self.file.write_slice(new.offset, &bytes).await?;
        let table = self.l2_cache.insert_new(new.offset, bytes, false);
        self.l1_mut().set(index, new.offset | OFLAG_COPIED);
        if old != 0 {
            let cluster = self.geo().cluster_index(old);
            self.refs
                .lock()
                .await
                .schedule_free(cluster, 1, self.tunables().pass_discard_other);
        }
        Ok(table)
    }

    /// Allocates `count` contiguous host clusters, refusing any that would
    /// overwrite the header, the L1 table or the refcount table.
    pub(super) async fn alloc_clusters(&self, count: u64) -> BlockResult<Allocation> {
        let cs = self.geo().cluster_size();
        let mut refs = self.refs.lock().await;
        let allocation = refs.alloc(count, &self.header).await?;
        if refs.cache_over_capacity() {
            self.writeback_wanted.store(true, Ordering::Release);
        }
        let (reftable, reftable_clusters) = refs.table_location();
        drop(refs);
        let (l1, l1_len) = {
            let l1 = self.l1();
            (l1.offset(), l1.len() as u64 * 8)
        };
        let start = allocation.offset;
        let end = start + count * cs;
        let overlaps = |region: u64, len: u64| len > 0 && start < region + len && region < end;
        let hit = if start < cs {
            Some("qcow2_header")
        } else if overlaps(l1, l1_len.div_ceil(cs) * cs) {
            Some("active L1 table")
        } else if overlaps(reftable, reftable_clusters * cs) {
            Some("refcount table")
        } else {
            None
        };
        if let Some(what) = hit {
            return Err(corrupt(format!(
                "Preventing invalid allocation of clusters at {start:#x} (overlaps with {what})"
            )));
        }
        Ok(allocation)
    }
}

/// Whether a cluster of kind `next`, `distance` bytes after the first one
/// (of kind `first`), continues the run.
fn continues(first: ClusterKind, next: ClusterKind, distance: u64) -> bool {
    use ClusterKind::*;
    match (first, next) {
        (
            Normal {
                host: a,
                copied: ca,
            },
            Normal {
                host: b,
                copied: cb,
            },
        ) => ca == cb && b == a + distance,
        (Unallocated, Unallocated) => true,
        (ZeroPlain, ZeroPlain) => true,
        (ZeroAlloc { .. }, ZeroAlloc { .. }) => true,
        _ => false,
    }
}

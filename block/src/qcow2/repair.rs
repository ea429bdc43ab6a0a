//! Repair of an image opened with its dirty bit set (a writer with lazy
//! refcounts stopped without closing it): every reference is counted
//! again, through the header, the refcount structures, the active L1 and
//! L2 tables and those of every internal snapshot, and refcounts found too
//! low are raised. Refcounts that are too high only leak space and are
//! left alone, so structures this driver does not walk (persistent
//! bitmaps) never lose their clusters.

use std::collections::BTreeMap;

use super::layout::{corrupt, get_entry, CHex, L1E_OFFSET_MASK, REFT_OFFSET_MASK};
use super::Qcow2;
use crate::error::{BlockError, BlockResult, ErrorKind};

/// The most host clusters a repair counts.
const MAX_COUNTED_CLUSTERS: u64 = 1 << 28;

/// Clusters whose counts are kept together (2 KiB of counts).
const CHUNK_CLUSTERS: u64 = 512;

/// Expected references per host cluster, in chunks of
/// [`CHUNK_CLUSTERS`] that exist only where a reference was counted:
/// memory follows the references the image holds, not how far into the
/// address space a damaged entry points.
#[derive(Default)]
struct Counts(BTreeMap<u64, Box<[u32]>>);

impl Counts {
    fn add(&mut self, first: u64, count: u64) -> BlockResult<()> {
        let end = first
            .checked_add(count)
            .filter(|&end| end <= MAX_COUNTED_CLUSTERS)
            .ok_or_else(|| {
                BlockError::new(
                    ErrorKind::TooLarge,
                    "Image too large to repair its refcounts",
                )
            })?;
        let mut cluster = first;
        while cluster < end {
            let chunk = cluster / CHUNK_CLUSTERS;
            let base = chunk * CHUNK_CLUSTERS;
            let counts = self
                .0
                .entry(chunk)
                .or_insert_with(|| vec![0; CHUNK_CLUSTERS as usize].into_boxed_slice());
            let to = (end - base).min(CHUNK_CLUSTERS);
            for c in &mut counts[(cluster - base) as usize..to as usize] {
                *c = c.saturating_add(1);
            }
            cluster = base + to;
        }
        Ok(())
    }

    /// Every referenced cluster and its expected references, in order.
    fn referenced(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.0.iter().flat_map(|(&chunk, counts)| {
            (chunk * CHUNK_CLUSTERS..)
                .zip(counts.iter().copied())
                .filter(|&(_, want)| want > 0)
        })
    }
}

impl Qcow2 {
    pub(super) async fn repair_refcounts(&self) -> BlockResult<()> {
        let geo = *self.geo();
        let cs = geo.cluster_size();
        let mut counts = Counts::default();
        counts.add(0, 1)?;
        let (reftable, reftable_clusters, blocks) = {
            let refs = self.refs.lock().await;
            let (offset, clusters) = refs.table_location();
            (offset, clusters, refs.table_entries().to_vec())
        };
        counts.add(geo.cluster_index(reftable), reftable_clusters)?;
        for entry in blocks {
            let block = entry & REFT_OFFSET_MASK;
            if block != 0 {
                counts.add(geo.cluster_index(block), 1)?;
            }
        }
        let (l1_offset, l1) = {
            let l1 = self.l1();
            (l1.offset(), l1.entries().to_vec())
        };
        self.count_l1(l1_offset, &l1, &mut counts).await?;
        let table = self.snapshot_table.load();
        if !table.snapshots.is_empty() {
            counts.add(geo.cluster_index(table.offset), table.len.div_ceil(cs))?;
            for snapshot in &table.snapshots {
                let entries = self.snapshot_l1(snapshot).await?;
                self.count_l1(snapshot.l1_offset, &entries, &mut counts)
                    .await?;
            }
        }
        {
            let mut refs = self.refs.lock().await;
            for (cluster, want) in counts.referenced() {
                if refs.get(cluster).await? < u64::from(want) {
                    refs.raise(cluster, u64::from(want)).await?;
                }
            }
        }
        self.writeback().await
    }

    /// Counts an L1 table at `offset`, its L2 tables and their clusters.
    async fn count_l1(&self, offset: u64, entries: &[u64], counts: &mut Counts) -> BlockResult<()> {
        let geo = *self.geo();
        if offset != 0 && !entries.is_empty() {
            let clusters = (entries.len() as u64 * 8).div_ceil(geo.cluster_size());
            counts.add(geo.cluster_index(offset), clusters)?;
        }
        for (index, &entry) in entries.iter().enumerate() {
            let l2 = entry & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if geo.offset_in_cluster(l2) != 0 {
                return Err(corrupt(format!(
                    "L2 table offset {} unaligned (L1 index: {})",
                    CHex(l2),
                    CHex(index as u64)
                )));
            }
            counts.add(geo.cluster_index(l2), 1)?;
            let bytes = self.load_l2(l2).await?.lock().bytes.clone();
            for i in 0..geo.l2_entries() as usize {
                if let Some((first, n)) = geo.host_clusters(geo.classify(get_entry(&bytes, i))) {
                    counts.add(first, n)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keep_only_the_chunks_referenced() {
        let mut counts = Counts::default();
        counts.add(0, 1).unwrap();
        counts.add(CHUNK_CLUSTERS - 1, 2).unwrap();
        counts.add(CHUNK_CLUSTERS, 1).unwrap();
        counts.add(MAX_COUNTED_CLUSTERS - 1, 1).unwrap();
        assert_eq!(
            counts.referenced().collect::<Vec<_>>(),
            [
                (0, 1),
                (CHUNK_CLUSTERS - 1, 1),
                (CHUNK_CLUSTERS, 2),
                (MAX_COUNTED_CLUSTERS - 1, 1)
            ]
        );
        assert_eq!(counts.0.len(), 3);
    }

    #[test]
    fn counts_refuse_clusters_past_the_limit() {
        let mut counts = Counts::default();
        assert!(counts.add(MAX_COUNTED_CLUSTERS, 1).is_err());
        assert!(counts.add(u64::MAX, 2).is_err());
        assert_eq!(counts.referenced().count(), 0);
    }
}

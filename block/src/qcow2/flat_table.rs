//! A top-level table kept whole in memory (the active L1 table, the
//! refcount table), with the chunks changed since the last writeback.
//!
//! Changes are not written through: a chunk is written when a writeback
//! says the tables it points to are on disk. Chunks are 4 KiB (or one
//! cluster, if smaller) and aligned, so each write stays inside the
//! table's clusters.
//!
//! The table also keeps the clusters its entries point to in order, so
//! that the metadata overlap check of each guest write asks one range of
//! them rather than walking every entry (a refcount table of one cluster
//! has 8192 entries, most of them zero: walking it took a fifth of the
//! daemon's cycles on 4 KiB writes).

use std::collections::{BTreeMap, BTreeSet};

use super::layout::{get_entry, set_entry};

/// Largest piece of a table written at once.
const CHUNK_BYTES: usize = 4096;

pub struct FlatTable {
    /// Host offset of the table.
    offset: u64,
    entries: Vec<u64>,
    dirty_chunks: BTreeSet<usize>,
    chunk_entries: usize,
    /// The bits of an entry that are the offset it points to.
    offset_mask: u64,
    /// Each nonzero offset the entries point to, with how many do (a
    /// damaged table may point twice at one cluster).
    targets: BTreeMap<u64, usize>,
}

impl FlatTable {
    /// A table at `offset` with `len` entries decoded from `bytes`
    /// (missing bytes read as zero), whose entries point at the offsets
    /// their `offset_mask` bits hold.
    pub fn from_bytes(
        offset: u64,
        bytes: &[u8],
        len: usize,
        cluster_size: u64,
        offset_mask: u64,
    ) -> Self {
        let mut entries = vec![0u64; len];
        let whole = (bytes.len() / 8).min(len);
        for (i, entry) in entries.iter_mut().enumerate().take(whole) {
            *entry = get_entry(bytes, i);
        }
        Self::from_entries(offset, entries, cluster_size, offset_mask)
    }

    /// A table at `offset` holding `entries`, all clean (just written or
    /// read).
    pub fn from_entries(
        offset: u64,
        entries: Vec<u64>,
        cluster_size: u64,
        offset_mask: u64,
    ) -> Self {
        let mut table = FlatTable {
            offset,
            entries: Vec::new(),
            dirty_chunks: BTreeSet::new(),
            chunk_entries: CHUNK_BYTES.min(cluster_size as usize) / 8,
            offset_mask,
            targets: BTreeMap::new(),
        };
        for &entry in &entries {
            table.add_target(entry);
        }
        table.entries = entries;
        table
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entry `index`, or 0 past the end.
    pub fn get(&self, index: usize) -> u64 {
        self.entries.get(index).copied().unwrap_or(0)
    }

    /// All entries.
    pub fn entries(&self) -> &[u64] {
        &self.entries
    }

    /// Sets entry `index` (< len) and marks its chunk dirty.
    pub fn set(&mut self, index: usize, value: u64) {
        let old = std::mem::replace(&mut self.entries[index], value);
        self.remove_target(old);
        self.add_target(value);
        self.dirty_chunks.insert(index / self.chunk_entries);
    }

    /// Whether an entry points at a cluster of `cluster_size` bytes that
    /// overlaps `[start, end)`.
    pub fn points_into(&self, start: u64, end: u64, cluster_size: u64) -> bool {
        let first = start.saturating_add(1).saturating_sub(cluster_size);
        first < end && self.targets.range(first..end).next().is_some()
    }

    fn add_target(&mut self, entry: u64) {
        let target = entry & self.offset_mask;
        if target != 0 {
            *self.targets.entry(target).or_default() += 1;
        }
    }

    fn remove_target(&mut self, entry: u64) {
        let target = entry & self.offset_mask;
        if let Some(count) = self.targets.get_mut(&target) {
            *count -= 1;
            if *count == 0 {
                self.targets.remove(&target);
            }
        }
    }

    #[cfg(test)]
    pub fn is_dirty(&self) -> bool {
        !self.dirty_chunks.is_empty()
    }

    /// The dirty chunks as (host offset, bytes); they count as clean from
    /// now on ([`FlatTable::redirty`] undoes that if the write fails).
    pub fn take_dirty(&mut self) -> Vec<(u64, Vec<u8>)> {
        let chunks = std::mem::take(&mut self.dirty_chunks);
        chunks
            .into_iter()
            .map(|chunk| {
                let first = chunk * self.chunk_entries;
                let mut bytes = vec![0u8; self.chunk_entries * 8];
                for i in 0..self.chunk_entries {
                    set_entry(&mut bytes, i, self.get(first + i));
                }
                (self.offset + (first as u64) * 8, bytes)
            })
            .collect()
    }

    /// Marks chunks written by a failed writeback dirty again.
    pub fn redirty(&mut self, chunks: &[(u64, Vec<u8>)]) {
        for (offset, _) in chunks {
            let chunk = ((offset - self.offset) / 8) as usize / self.chunk_entries;
            self.dirty_chunks.insert(chunk);
        }
    }

    /// The whole table encoded into `bytes_len` bytes (zero padded).
    pub fn encode(entries: &[u64], bytes_len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; bytes_len];
        for (i, &e) in entries.iter().enumerate() {
            set_entry(&mut bytes, i, e);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_chunks_are_aligned_pieces_of_the_table() {
        let mut t = FlatTable::from_bytes(0x10000, &[], 1024, 65536, !0);
        t.set(3, 0xabc00);
        t.set(700, 0x1000);
        let chunks = t.take_dirty();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].0, 0x10000);
        assert_eq!(get_entry(&chunks[0].1, 3), 0xabc00);
        assert_eq!(chunks[1].0, 0x10000 + 512 * 8);
        assert_eq!(get_entry(&chunks[1].1, 700 - 512), 0x1000);
        assert!(!t.is_dirty());
        t.redirty(&chunks);
        assert_eq!(t.take_dirty().len(), 2);
    }

    #[test]
    fn small_clusters_use_cluster_sized_chunks() {
        let mut t = FlatTable::from_bytes(0x200, &[], 200, 512, !0);
        t.set(199, 7);
        let chunks = t.take_dirty();
        assert_eq!(
            chunks,
            vec![(0x200 + 192 * 8, {
                let mut b = vec![0u8; 512];
                set_entry(&mut b, 7, 7);
                b
            })]
        );
    }

    #[test]
    fn the_clusters_pointed_at_are_found_by_range() {
        let cs = 0x10000;
        let mut t =
            FlatTable::from_entries(0, vec![0x3_0000 | 1 << 63, 0, 0x3_0000], cs, !(1 << 63));
        assert!(t.points_into(0x3_0000, 0x3_0001, cs));
        assert!(t.points_into(0x2_ffff, 0x3_0000 + 1, cs));
        assert!(t.points_into(0x3_ffff, 0x5_0000, cs));
        assert!(!t.points_into(0x4_0000, 0x5_0000, cs));
        assert!(!t.points_into(0x2_0000, 0x3_0000, cs));
        // Two entries point there: one changed, the other still does.
        t.set(0, 0x8_0000);
        assert!(t.points_into(0x3_0000, 0x3_0200, cs));
        t.set(2, 0);
        assert!(!t.points_into(0x3_0000, 0x3_0200, cs));
        assert!(t.points_into(0x8_fe00, 0x9_0000, cs));
        assert!(!t.points_into(0, 0, cs));
    }
}

//! A top-level table kept whole in memory (the active L1 table, the
//! refcount table), with the chunks changed since the last writeback.
//!
//! Changes are not written through: a chunk is written when a writeback
//! says the tables it points to are on disk. Chunks are 4 KiB (or one
//! cluster, if smaller) and aligned, so each write stays inside the
//! table's clusters.

use std::collections::BTreeSet;

use super::layout::{get_entry, set_entry};

/// Largest piece of a table written at once.
const CHUNK_BYTES: usize = 4096;

pub struct FlatTable {
    /// Host offset of the table.
    offset: u64,
    entries: Vec<u64>,
    dirty_chunks: BTreeSet<usize>,
    chunk_entries: usize,
}

impl FlatTable {
    /// A table at `offset` with `len` entries decoded from `bytes`
    /// (missing bytes read as zero).
    pub fn from_bytes(offset: u64, bytes: &[u8], len: usize, cluster_size: u64) -> Self {
        let mut entries = vec![0u64; len];
        let whole = (bytes.len() / 8).min(len);
        for (i, entry) in entries.iter_mut().enumerate().take(whole) {
            *entry = get_entry(bytes, i);
        }
        FlatTable {
            offset,
            entries,
            dirty_chunks: BTreeSet::new(),
            chunk_entries: CHUNK_BYTES.min(cluster_size as usize) / 8,
        }
    }

    /// A table at `offset` holding `entries`, all clean (just written).
    pub fn from_entries(offset: u64, entries: Vec<u64>, cluster_size: u64) -> Self {
        FlatTable {
            offset,
            entries,
            dirty_chunks: BTreeSet::new(),
            chunk_entries: CHUNK_BYTES.min(cluster_size as usize) / 8,
        }
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
        self.entries[index] = value;
        self.dirty_chunks.insert(index / self.chunk_entries);
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
        let mut t = FlatTable::from_bytes(0x10000, &[], 1024, 65536);
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
        let mut t = FlatTable::from_bytes(0x200, &[], 200, 512);
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
}

//! A dirty bitmap: which parts of a node were written, one bit per
//! `granularity` bytes (a power of two), as QEMU's `BdrvDirtyBitmap`.
//! Bits are set from many requests at once without a lock (atomic words)
//! and the number of dirty bits is kept as they change, so `count` is
//! cheap. Mirror uses one to know what to copy again; named bitmaps
//! (`block-dirty-bitmap-add`) are the same thing with a name.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const WORD_BITS: u64 = 64;

/// A bitmap over `size` bytes.
pub struct DirtyBitmap {
    size: u64,
    granularity: u64,
    words: Vec<AtomicU64>,
    /// Bits set.
    count: AtomicU64,
}

impl DirtyBitmap {
    /// A clean bitmap over `size` bytes; `granularity` must be a power of
    /// two.
    pub fn new(size: u64, granularity: u64) -> Self {
        debug_assert!(granularity.is_power_of_two());
        let bits = size.div_ceil(granularity);
        let words = (0..bits.div_ceil(WORD_BITS))
            .map(|_| AtomicU64::new(0))
            .collect();
        DirtyBitmap {
            size,
            granularity,
            words,
            count: AtomicU64::new(0),
        }
    }

    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Dirty bytes, in whole granules (QEMU's count: the last granule
    /// counts whole even where it passes the end).
    pub fn dirty_bytes(&self) -> u64 {
        self.count.load(Relaxed).saturating_mul(self.granularity)
    }

    /// Marks everything `other` (of the same size, any granularity) marks.
    pub fn merge_from(&self, other: &DirtyBitmap) {
        let mut from = 0;
        while let Some(range) = other.next_dirty(from, u64::MAX) {
            self.set(range.start, range.end - range.start);
            from = range.end;
        }
    }

    /// A copy of the bits as they are now.
    pub fn duplicate(&self) -> DirtyBitmap {
        let copy = DirtyBitmap::new(self.size, self.granularity);
        copy.merge_from(self);
        copy
    }

    /// Makes the bits those of `saved` (a [`DirtyBitmap::duplicate`]).
    pub fn restore(&self, saved: &DirtyBitmap) {
        self.reset(0, self.size);
        self.merge_from(saved);
    }

    /// Keeps only the dirty granules that `other` (of the same size, any
    /// granularity) also marks somewhere.
    pub fn retain_overlapping(&self, other: &DirtyBitmap) {
        let mut from = 0;
        while let Some(range) = self.next_dirty(from, self.granularity) {
            let overlaps = other
                .next_dirty(range.start, u64::MAX)
                .is_some_and(|theirs| theirs.start < range.end);
            if !overlaps {
                self.reset(range.start, range.end - range.start);
            }
            from = range.end;
        }
    }

    /// SHA-256 of the bits, one per granule in 64-bit little-endian words,
    /// as QEMU's `hbitmap_sha256` hashes its last level.
    pub fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for word in &self.words {
            hash.update(word.load(Relaxed).to_le_bytes());
        }
        hash.finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The bits as bytes, granule `i` in bit `i % 8` of byte `i / 8` (the
    /// layout of qcow2's bitmap data); bits past the end are zero.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = self.size.div_ceil(self.granularity).div_ceil(8) as usize;
        let mut bytes: Vec<u8> = self
            .words
            .iter()
            .flat_map(|word| word.load(Relaxed).to_le_bytes())
            .collect();
        bytes.truncate(len);
        bytes
    }

    /// A bitmap over `size` bytes whose bits are `bytes` (as
    /// [`DirtyBitmap::to_bytes`] writes them; bits past the end are
    /// ignored, missing bytes are clean).
    pub fn from_bytes(size: u64, granularity: u64, bytes: &[u8]) -> Self {
        let bitmap = DirtyBitmap::new(size, granularity);
        let total_bits = size.div_ceil(granularity);
        let mut count = 0;
        for (index, word) in bitmap.words.iter().enumerate() {
            let mut le = [0u8; 8];
            let start = (index * 8).min(bytes.len());
            let end = (index * 8 + 8).min(bytes.len());
            le[..end - start].copy_from_slice(&bytes[start..end]);
            let mut value = u64::from_le_bytes(le);
            let first_bit = index as u64 * WORD_BITS;
            if first_bit + WORD_BITS > total_bits {
                value &= (1u64 << (total_bits - first_bit)) - 1;
            }
            count += u64::from(value.count_ones());
            word.store(value, Relaxed);
        }
        bitmap.count.store(count, Relaxed);
        bitmap
    }

    /// Marks every granule that `offset..offset+len` touches.
    pub fn set(&self, offset: u64, len: u64) {
        for (word, mask) in self.masks(self.bits(offset, len)) {
            let old = self.words[word].fetch_or(mask, Relaxed);
            self.count
                .fetch_add(u64::from((mask & !old).count_ones()), Relaxed);
        }
    }

    /// Clears every granule that `offset..offset+len` touches.
    pub fn reset(&self, offset: u64, len: u64) {
        for (word, mask) in self.masks(self.bits(offset, len)) {
            let old = self.words[word].fetch_and(!mask, Relaxed);
            self.count
                .fetch_sub(u64::from((mask & old).count_ones()), Relaxed);
        }
    }

    /// Marks the whole bitmap.
    pub fn set_all(&self) {
        self.set(0, self.size);
    }

    /// The first dirty range at or after `from`: whole granules, at most
    /// `max_len` bytes, cut at the end of the bitmap.
    pub fn next_dirty(&self, from: u64, max_len: u64) -> Option<Range<u64>> {
        let total_bits = self.size.div_ceil(self.granularity);
        let mut bit = from / self.granularity;
        // Skip to the first set bit.
        while bit < total_bits {
            let word = self.words[(bit / WORD_BITS) as usize].load(Relaxed) >> (bit % WORD_BITS);
            if word == 0 {
                bit = (bit / WORD_BITS + 1) * WORD_BITS;
                continue;
            }
            bit += u64::from(word.trailing_zeros());
            break;
        }
        if bit >= total_bits {
            return None;
        }
        let start = bit * self.granularity;
        let limit = start
            .saturating_add(max_len.max(self.granularity))
            .min(self.size);
        let mut end = start;
        while end < limit && self.is_set(end / self.granularity) {
            end = (end + self.granularity).min(self.size);
        }
        Some(start..end.min(limit))
    }

    /// Whether the byte at `offset` is dirty, and for how many bytes from
    /// it (at least 1, at most `len`, cut at the end) that stays so.
    pub fn extent(&self, offset: u64, len: u64) -> (bool, u64) {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return (false, len.max(1));
        }
        let granule = offset / self.granularity * self.granularity;
        if self.is_set(offset / self.granularity) {
            let run = self
                .next_dirty(granule, end - granule)
                .map_or(end, |range| range.end);
            (true, run.min(end) - offset)
        } else {
            let next = self
                .next_dirty(offset, u64::MAX)
                .map_or(end, |range| range.start);
            (false, next.min(end) - offset)
        }
    }

    fn is_set(&self, bit: u64) -> bool {
        let word = self.words[(bit / WORD_BITS) as usize].load(Relaxed);
        word & (1 << (bit % WORD_BITS)) != 0
    }

    /// The bits `offset..offset+len` touches, cut at the end.
    fn bits(&self, offset: u64, len: u64) -> Range<u64> {
        let end = offset.saturating_add(len).min(self.size);
        if len == 0 || offset >= end {
            return 0..0;
        }
        offset / self.granularity..end.div_ceil(self.granularity)
    }

    /// `bits` as (word index, mask) pairs.
    fn masks(&self, bits: Range<u64>) -> impl Iterator<Item = (usize, u64)> {
        let mut bit = bits.start;
        std::iter::from_fn(move || {
            if bit >= bits.end {
                return None;
            }
            let word = bit / WORD_BITS;
            let first = bit % WORD_BITS;
            let last = (bits.end - word * WORD_BITS).min(WORD_BITS);
            let width = last - first;
            let mask = if width == WORD_BITS {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << first
            };
            bit = (word + 1) * WORD_BITS;
            Some((word as usize, mask))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_rounded_out_to_granules_and_counted_once() {
        let bitmap = DirtyBitmap::new(1 << 20, 4096);
        bitmap.set(100, 10);
        bitmap.set(0, 4096);
        assert_eq!(bitmap.dirty_bytes(), 4096);
        bitmap.set(4095, 2);
        assert_eq!(bitmap.dirty_bytes(), 8192);
        assert_eq!(bitmap.next_dirty(0, u64::MAX), Some(0..8192));
        assert_eq!(bitmap.next_dirty(0, 4096), Some(0..4096));
        assert_eq!(bitmap.next_dirty(8192, u64::MAX), None);
        bitmap.reset(0, 4096);
        assert_eq!(bitmap.next_dirty(0, u64::MAX), Some(4096..8192));
        bitmap.reset(0, 1 << 20);
        assert_eq!(bitmap.dirty_bytes(), 0);
    }

    #[test]
    fn extents_are_runs_of_one_state() {
        let bitmap = DirtyBitmap::new(10 * 4096 + 100, 4096);
        bitmap.set(2 * 4096, 3 * 4096);
        bitmap.set(10 * 4096, 1);
        assert_eq!(bitmap.extent(0, 1 << 20), (false, 2 * 4096));
        assert_eq!(bitmap.extent(100, 4096), (false, 4096));
        assert_eq!(bitmap.extent(2 * 4096 + 5, 1 << 20), (true, 3 * 4096 - 5));
        assert_eq!(bitmap.extent(3 * 4096, 100), (true, 100));
        assert_eq!(bitmap.extent(5 * 4096, 1 << 20), (false, 5 * 4096));
        assert_eq!(bitmap.extent(10 * 4096, 1 << 20), (true, 100));
    }

    #[test]
    fn bytes_round_trip_in_qcow2_bit_order() {
        let bitmap = DirtyBitmap::new(100 * 4096 - 1, 4096);
        bitmap.set(0, 1);
        bitmap.set(9 * 4096, 4096);
        bitmap.set(99 * 4096, 4096);
        let bytes = bitmap.to_bytes();
        assert_eq!(bytes.len(), 13);
        assert_eq!((bytes[0], bytes[1], bytes[12]), (0x01, 0x02, 0x08));
        let back = DirtyBitmap::from_bytes(100 * 4096 - 1, 4096, &bytes);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.dirty_bytes(), 3 * 4096);
        // Bits past the end are dropped.
        let noisy = DirtyBitmap::from_bytes(100 * 4096 - 1, 4096, &[0xff; 16]);
        assert_eq!(noisy.dirty_bytes(), 100 * 4096);
    }

    #[test]
    fn long_ranges_cross_words_and_the_end_is_cut() {
        // 200 granules of 512 bytes, the last one short.
        let size = 200 * 512 - 100;
        let bitmap = DirtyBitmap::new(size, 512);
        bitmap.set(60 * 512, 80 * 512);
        assert_eq!(bitmap.dirty_bytes(), 80 * 512);
        assert_eq!(bitmap.next_dirty(0, u64::MAX), Some(60 * 512..140 * 512));
        assert_eq!(
            bitmap.next_dirty(130 * 512, u64::MAX),
            Some(130 * 512..140 * 512)
        );
        bitmap.set_all();
        assert_eq!(bitmap.dirty_bytes(), 200 * 512);
        assert_eq!(
            bitmap.next_dirty(199 * 512, u64::MAX),
            Some(199 * 512..size)
        );
        // Past the end: nothing.
        bitmap.set(size, 4096);
        assert_eq!(bitmap.dirty_bytes(), 200 * 512);
    }
}

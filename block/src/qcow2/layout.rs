//! The image's geometry (cluster size, table sizes, refcount width) and the
//! on-disk encoding of table entries: L1, L2 and refcount table entries
//! are big-endian 64-bit words, refcount block entries are 1 to 64 bits.

use std::fmt;

use crate::error::{BlockError, ErrorKind};

/// Bits 9-55 of an L1 entry: the L2 table offset.
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits 9-55 of a standard L2 entry: the host cluster offset.
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits 9-63 of a refcount table entry: the refcount block offset.
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Bit 63 of L1/L2 entries: the refcount is exactly one (write in place).
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: a compressed cluster.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry: the cluster reads as zeroes (v3).
pub const OFLAG_ZERO: u64 = 1;
/// Compressed data is addressed in 512-byte sectors.
pub const COMPRESSED_SECTOR_SIZE: u64 = 512;
/// Host offsets must stay below 2^56 (L2 entries have 47 offset bits).
pub const MAX_HOST_OFFSET: u64 = 1 << 56;

/// Sizes derived from the header; fixed for the life of an open image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub cluster_bits: u32,
    /// log2 of the entries in an L2 table.
    pub l2_bits: u32,
    /// log2 of the width of a refcount entry in bits (0..=6).
    pub refcount_order: u32,
    /// log2 of the entries in a refcount block.
    pub refblock_bits: u32,
    /// 2 or 3.
    pub version: u32,
}

impl Geometry {
    pub fn new(cluster_bits: u32, refcount_order: u32, version: u32) -> Self {
        Geometry {
            cluster_bits,
            l2_bits: cluster_bits - 3,
            refcount_order,
            refblock_bits: cluster_bits + 3 - refcount_order,
            version,
        }
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// `cluster_size` as a buffer length (at most 2 MiB).
    pub fn cluster_len(&self) -> usize {
        1 << self.cluster_bits
    }

    pub fn l2_entries(&self) -> u64 {
        1 << self.l2_bits
    }

    #[cfg(test)]
    pub fn refblock_entries(&self) -> u64 {
        1 << self.refblock_bits
    }

    /// Guest or host bytes covered by one L2 table.
    pub fn l2_coverage(&self) -> u64 {
        1 << (self.cluster_bits + self.l2_bits)
    }

    pub fn offset_in_cluster(&self, offset: u64) -> u64 {
        offset & (self.cluster_size() - 1)
    }

    pub fn cluster_index(&self, offset: u64) -> u64 {
        offset >> self.cluster_bits
    }

    pub fn l1_index(&self, guest_offset: u64) -> usize {
        (guest_offset >> (self.cluster_bits + self.l2_bits)) as usize
    }

    pub fn l2_index(&self, guest_offset: u64) -> usize {
        ((guest_offset >> self.cluster_bits) & (self.l2_entries() - 1)) as usize
    }

    /// L1 entries needed to map `size` guest bytes.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        size.div_ceil(self.l2_coverage())
    }

    /// The largest value a refcount entry holds.
    pub fn refcount_max(&self) -> u64 {
        u64::MAX >> (64 - (1u32 << self.refcount_order))
    }

    /// Bit position where the sector count of a compressed descriptor starts.
    pub fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }

    /// Decodes an L2 entry.
    pub fn classify(&self, entry: u64) -> ClusterKind {
        if entry & OFLAG_COMPRESSED != 0 {
            let shift = self.csize_shift();
            let offset = entry & ((1u64 << shift) - 1);
            let sectors = ((entry >> shift) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * COMPRESSED_SECTOR_SIZE - (offset & (COMPRESSED_SECTOR_SIZE - 1));
            return ClusterKind::Compressed { offset, len };
        }
        let host = entry & L2E_OFFSET_MASK;
        let copied = entry & OFLAG_COPIED != 0;
        match (entry & OFLAG_ZERO != 0, host != 0) {
            (true, true) => ClusterKind::ZeroAlloc { host, copied },
            (true, false) => ClusterKind::ZeroPlain,
            (false, true) => ClusterKind::Normal { host, copied },
            (false, false) => ClusterKind::Unallocated,
        }
    }

    /// Host clusters `[first, last]` that a compressed cluster's bytes touch.
    pub fn compressed_clusters(&self, offset: u64, len: u64) -> (u64, u64) {
        (
            self.cluster_index(offset),
            self.cluster_index(offset + len.max(1) - 1),
        )
    }

    /// The host clusters an entry holds a reference to, as (first cluster
    /// index, count).
    pub fn host_clusters(&self, kind: ClusterKind) -> Option<(u64, u64)> {
        match kind {
            ClusterKind::Normal { host, .. } | ClusterKind::ZeroAlloc { host, .. } => {
                Some((self.cluster_index(host), 1))
            }
            ClusterKind::Compressed { offset, len } => {
                let (first, last) = self.compressed_clusters(offset, len);
                Some((first, last - first + 1))
            }
            ClusterKind::Unallocated | ClusterKind::ZeroPlain => None,
        }
    }
}

/// What an L2 entry says about a guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// Not in this image: read from the backing file, or zeroes.
    Unallocated,
    /// Reads as zeroes; no host cluster.
    ZeroPlain,
    /// Reads as zeroes; a preallocated host cluster.
    ZeroAlloc { host: u64, copied: bool },
    /// Data in the host cluster at `host`.
    Normal { host: u64, copied: bool },
    /// `len` compressed bytes at host `offset` (not aligned).
    Compressed { offset: u64, len: u64 },
}

impl ClusterKind {
    /// The host cluster a standard entry points to.
    pub fn host_cluster(self) -> Option<u64> {
        match self {
            ClusterKind::ZeroAlloc { host, .. } | ClusterKind::Normal { host, .. } => Some(host),
            _ => None,
        }
    }
}

/// Reads the big-endian word `index` of a table.
pub fn get_entry(table: &[u8], index: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&table[index * 8..index * 8 + 8]);
    u64::from_be_bytes(b)
}

/// Writes the big-endian word `index` of a table.
pub fn set_entry(table: &mut [u8], index: usize, value: u64) {
    table[index * 8..index * 8 + 8].copy_from_slice(&value.to_be_bytes());
}

/// Reads refcount `index` of a refcount block whose entries are
/// `1 << order` bits wide (sub-byte entries start at the low bits).
pub fn get_refcount(block: &[u8], order: u32, index: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let bit = index * bits;
            let mask = (1u8 << bits) - 1;
            u64::from((block[bit / 8] >> (bit % 8)) & mask)
        }
        3 => u64::from(block[index]),
        4 => u64::from(u16::from_be_bytes([block[index * 2], block[index * 2 + 1]])),
        5 => {
            let mut b = [0u8; 4];
            b.copy_from_slice(&block[index * 4..index * 4 + 4]);
            u64::from(u32::from_be_bytes(b))
        }
        _ => get_entry(block, index),
    }
}

/// Writes refcount `index`; `value` must fit the entry width.
pub fn set_refcount(block: &mut [u8], order: u32, index: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let bit = index * bits;
            let mask = ((1u8 << bits) - 1) << (bit % 8);
            let byte = &mut block[bit / 8];
            *byte = (*byte & !mask) | (((value as u8) << (bit % 8)) & mask);
        }
        3 => block[index] = value as u8,
        4 => block[index * 2..index * 2 + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        5 => block[index * 4..index * 4 + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        _ => set_entry(block, index, value),
    }
}

/// An error for metadata that contradicts itself.
pub fn corrupt(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::Corrupt, message)
}

/// A number as C's `%#x` prints it in QEMU's corruption messages: `0x`
/// and hex digits, except zero, which is a plain `0`.
pub struct CHex(pub u64);

impl fmt::Display for CHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("0"),
            n => write!(f, "{n:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounts_of_every_width_round_trip() {
        for order in 0..=6u32 {
            let geo = Geometry::new(9, order, 3);
            let mut block = vec![0u8; 512];
            let max = geo.refcount_max();
            let n = geo.refblock_entries() as usize;
            for i in 0..n {
                set_refcount(&mut block, order, i, (i as u64 * 7 + 1) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_refcount(&block, order, i),
                    (i as u64 * 7 + 1) & max,
                    "order {order} index {i}"
                );
            }
        }
    }

    #[test]
    fn hex_is_printed_as_c_does() {
        assert_eq!(CHex(0).to_string(), "0");
        assert_eq!(CHex(0x10200).to_string(), "0x10200");
    }

    #[test]
    fn sub_byte_refcounts_start_at_the_low_bit() {
        let mut block = vec![0u8; 1];
        set_refcount(&mut block, 0, 0, 1);
        assert_eq!(block[0], 0b0000_0001);
        set_refcount(&mut block, 1, 1, 3);
        assert_eq!(block[0], 0b0000_1101);
    }

    #[test]
    fn classifies_entries() {
        let geo = Geometry::new(16, 4, 3);
        assert_eq!(geo.classify(0), ClusterKind::Unallocated);
        assert_eq!(geo.classify(OFLAG_ZERO), ClusterKind::ZeroPlain);
        assert_eq!(
            geo.classify(0x50000 | OFLAG_COPIED),
            ClusterKind::Normal {
                host: 0x50000,
                copied: true
            }
        );
        assert_eq!(
            geo.classify(0x50000 | OFLAG_ZERO),
            ClusterKind::ZeroAlloc {
                host: 0x50000,
                copied: false
            }
        );
        // 64 KiB clusters: 8 sector-count bits from bit 54.
        let entry = OFLAG_COMPRESSED | (2u64 << 54) | 0x12345;
        assert_eq!(
            geo.classify(entry),
            ClusterKind::Compressed {
                offset: 0x12345,
                len: 3 * 512 - 0x145
            }
        );
        assert_eq!(geo.compressed_clusters(0x1ff00, 0x200), (1, 2));
    }

    #[test]
    fn geometry_of_small_and_large_clusters() {
        let small = Geometry::new(9, 4, 3);
        assert_eq!(small.l2_entries(), 64);
        assert_eq!(small.refblock_entries(), 256);
        assert_eq!(small.l1_entries_for(64 * 512 + 1), 2);
        let large = Geometry::new(21, 6, 3);
        assert_eq!(large.refblock_entries(), 1 << 18);
        assert_eq!(large.refcount_max(), u64::MAX);
    }
}

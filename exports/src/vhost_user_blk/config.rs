//! What the virtio-blk device offers: its feature bits and its
//! configuration space (`struct virtio_blk_config` of the virtio 1.2
//! specification, section 5.2.4), little-endian, laid out by hand.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The sector of virtio-blk requests, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;

/// Segments of data a request may have besides its header and status
/// (`seg_max`): the most a chain may have in all
/// ([`super::guest_memory::MAX_DESCRIPTORS`]) less those two. QSD offers
/// 126, which splits a guest's 1 MiB request of scattered pages into
/// three; with this many it stays one (the guest puts long chains in an
/// indirect table).
pub const SEG_MAX: u32 = super::guest_memory::MAX_DESCRIPTORS as u32 - 2;

/// The most sectors one discard or write-zeroes request may cover
/// (QEMU's 32768: 16 MiB).
pub const MAX_DISCARD_SECTORS: u32 = 32768;

/// The most sectors one write-zeroes request may cover.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 32768;

/// The most bytes of data one read or write may carry (QEMU's
/// `BDRV_REQUEST_MAX_SECTORS`): longer requests fail with `IOERR`.
pub const MAX_TRANSFER_BYTES: u64 = (i32::MAX as u64) & !(SECTOR_SIZE - 1);

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the frontend may negotiate
/// vhost-user protocol features.
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// The feature bits offered (QSD's set; discard and write-zeroes only to
/// a writable export, which is the only one that can honor them).
pub fn features(writable: bool) -> u64 {
    let mut bits = vec![
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_MQ,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_VERSION_1,
        VHOST_USER_F_PROTOCOL_FEATURES,
    ];
    if writable {
        bits.extend([VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES]);
    } else {
        bits.push(VIRTIO_BLK_F_RO);
    }
    bits.into_iter().fold(0, |all, bit| all | (1u64 << bit))
}

/// The values of the configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkConfig {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Logical block size in bytes.
    pub blk_size: u32,
    /// Whether the guest's writes are cached (it then sends flushes).
    pub writeback: bool,
    pub num_queues: u16,
}

/// Bytes of `struct virtio_blk_config` up to the zoned fields, which this
/// device does not offer (they read as zero).
pub const CONFIG_SIZE: usize = 96;

/// Offset of the `writeback` byte, the one field a guest may write.
pub const WRITEBACK_OFFSET: u32 = 32;

impl BlkConfig {
    /// The configuration space as the guest reads it.
    pub fn to_bytes(self) -> [u8; CONFIG_SIZE] {
        let mut bytes = [0u8; CONFIG_SIZE];
        let mut put = |offset: usize, value: &[u8]| {
            bytes[offset..offset + value.len()].copy_from_slice(value);
        };
        put(0, &self.capacity.to_le_bytes());
        // size_max 0: no limit on one segment (QSD's value).
        put(8, &0u32.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &self.blk_size.to_le_bytes());
        // Topology: physical block exponent 0, alignment offset 0,
        // min_io_size and opt_io_size 1 (QSD's values).
        put(26, &1u16.to_le_bytes());
        put(28, &1u32.to_le_bytes());
        put(WRITEBACK_OFFSET as usize, &[u8::from(self.writeback)]);
        put(34, &self.num_queues.to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &1u32.to_le_bytes());
        put(44, &(self.blk_size / SECTOR_SIZE as u32).to_le_bytes());
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(52, &1u32.to_le_bytes());
        // write_zeroes_may_unmap: the unmap flag is honored.
        put(56, &[1]);
        bytes
    }

    /// `size` bytes of the space from `offset`; what lies past its end
    /// reads as zero.
    pub fn read(self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        (offset..offset.saturating_add(size))
            .map(|at| bytes.get(at as usize).copied().unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_where_the_specification_puts_them() {
        let config = BlkConfig {
            capacity: 0x1122_3344_5566_7788,
            blk_size: 4096,
            writeback: true,
            num_queues: 3,
        };
        let bytes = config.to_bytes();
        assert_eq!(bytes[0..8], 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(bytes[12..16], 1022u32.to_le_bytes());
        assert_eq!(bytes[20..24], 4096u32.to_le_bytes());
        assert_eq!(bytes[32], 1);
        assert_eq!(bytes[34..36], 3u16.to_le_bytes());
        assert_eq!(bytes[44..48], 8u32.to_le_bytes());
        assert_eq!(config.read(32, 4), vec![1, 0, 3, 0]);
        assert_eq!(config.read(94, 4), vec![0, 0, 0, 0]);
    }

    #[test]
    fn read_only_exports_offer_ro_and_no_discard() {
        let read_only = features(false);
        assert_ne!(read_only & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(read_only & (1 << VIRTIO_BLK_F_DISCARD), 0);
        let writable = features(true);
        assert_eq!(writable & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(writable & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_ne!(writable & (1 << VIRTIO_F_VERSION_1), 0);
    }
}

//! Persistent dirty bitmaps inside the image (the bitmaps extension of the
//! qcow2 specification, `docs/interop/qcow2.txt` in QEMU).
//!
//! The header's bitmaps extension names a bitmap directory: one entry per
//! bitmap (name, granularity, flags, the place of its bitmap table), and
//! each bitmap table names the clusters that hold the bits (an entry of 0
//! reads as all clean, or all dirty with bit 0 set). The extension counts
//! only while the header's auto-clear bit for it is set.
//!
//! The life of a stored bitmap follows QEMU's: opening the image read-write
//! loads every bitmap and marks it `in_use` on disk at once, so a process
//! that dies leaves them marked and the next one knows their bits are
//! stale (loaded as inconsistent: only removal is allowed). Closing,
//! inactivating or going read-only stores the bits again, `in_use`
//! cleared, through a new directory that the header names only once it is
//! on disk; the old tables and data are freed after. Entries this driver
//! does not use (another type, unknown extra data, inconsistent ones) stay
//! as they are.

use std::sync::Arc;

use schema::info::{Qcow2BitmapInfo, Qcow2BitmapInfoFlags};

use super::header::BitmapsExtension;
use super::layout::CHex;
use super::Qcow2;
use crate::bitmaps::{BitmapToStore, StoredBitmap};
use crate::dirty_bitmap::DirtyBitmap;
use crate::error::{BlockError, BlockResult, ErrorKind};

/// The entry flags.
const FLAG_IN_USE: u32 = 1 << 0;
const FLAG_AUTO: u32 = 1 << 1;
const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
const KNOWN_FLAGS: u32 = FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE;
/// The only bitmap type the specification defines.
const TYPE_DIRTY_TRACKING: u8 = 1;
/// The fixed part of a directory entry.
const ENTRY_HEADER: usize = 24;

/// QEMU's limits on what it stores and loads.
pub(super) const MIN_GRANULARITY_BITS: u32 = 9;
pub(super) const MAX_GRANULARITY_BITS: u32 = 31;
const MAX_NAME_LEN: usize = 1023;
const MAX_BITMAPS: usize = 65535;
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;
const MAX_TABLE_ENTRIES: u64 = 0x800_0000;
/// The most bitmap data one bitmap may take (QEMU's `BME_MAX_PHYS_SIZE`).
const MAX_DATA_BYTES: u64 = 0x2000_0000;

/// Bits 9..55 of a bitmap table entry: a cluster offset.
const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 0 of an entry without offset: the cluster reads as all dirty.
const TABLE_ALL_ONES: u64 = 1;

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirEntry {
    table_offset: u64,
    table_size: u32,
    flags: u32,
    kind: u8,
    granularity_bits: u8,
    extra: Vec<u8>,
    name: String,
}

impl DirEntry {
    /// This driver may read and rewrite the bitmap.
    fn usable(&self) -> bool {
        self.kind == TYPE_DIRTY_TRACKING
            && self.flags & !KNOWN_FLAGS == 0
            && (self.extra.is_empty() || self.flags & FLAG_EXTRA_DATA_COMPATIBLE != 0)
            && (MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS)
                .contains(&u32::from(self.granularity_bits))
    }

    fn encoded_len(&self) -> usize {
        (ENTRY_HEADER + self.extra.len() + self.name.len()).div_ceil(8) * 8
    }
}

/// The directory the header names, as read or last written.
#[derive(Debug, Default)]
pub(super) struct BitmapDirectory {
    offset: u64,
    size: u64,
    entries: Vec<DirEntry>,
}

impl BitmapDirectory {
    /// The stored bitmaps as image info shows them.
    pub(super) fn info(&self) -> Vec<Qcow2BitmapInfo> {
        self.entries
            .iter()
            .map(|e| Qcow2BitmapInfo {
                name: e.name.clone(),
                granularity: 1i64 << e.granularity_bits.min(62),
                flags: [
                    (FLAG_IN_USE, Qcow2BitmapInfoFlags::InUse),
                    (FLAG_AUTO, Qcow2BitmapInfoFlags::Auto),
                ]
                .into_iter()
                .filter(|(bit, _)| e.flags & bit != 0)
                .map(|(_, flag)| flag)
                .collect(),
            })
            .collect()
    }
}

fn corrupt(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses `count` entries of a directory.
fn parse_directory(bytes: &[u8], count: u32) -> BlockResult<Vec<DirEntry>> {
    let mut entries = Vec::with_capacity(count as usize);
    let mut at = 0;
    for _ in 0..count {
        if bytes.len() - at < ENTRY_HEADER {
            return Err(corrupt("Bitmap directory is truncated"));
        }
        let fixed = &bytes[at..at + ENTRY_HEADER];
        let name_len = usize::from(u16::from_be_bytes([fixed[18], fixed[19]]));
        let extra_len = be32(fixed, 20) as usize;
        let len = (ENTRY_HEADER + extra_len + name_len).div_ceil(8) * 8;
        if name_len == 0 || name_len > MAX_NAME_LEN || len > bytes.len() - at {
            return Err(corrupt("Bitmap directory entry is invalid"));
        }
        let extra_start = at + ENTRY_HEADER;
        let name_start = extra_start + extra_len;
        let entry = DirEntry {
            table_offset: be64(fixed, 0),
            table_size: be32(fixed, 8),
            flags: be32(fixed, 12),
            kind: fixed[16],
            granularity_bits: fixed[17],
            extra: bytes[extra_start..name_start].to_vec(),
            name: String::from_utf8_lossy(&bytes[name_start..name_start + name_len]).into_owned(),
        };
        if entries.iter().any(|e: &DirEntry| e.name == entry.name) {
            return Err(corrupt(format!(
                "Bitmap directory has two bitmaps named '{}'",
                entry.name
            )));
        }
        entries.push(entry);
        at += len;
    }
    Ok(entries)
}

fn encode_directory(entries: &[DirEntry]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in entries {
        let start = bytes.len();
        bytes.extend_from_slice(&entry.table_offset.to_be_bytes());
        bytes.extend_from_slice(&entry.table_size.to_be_bytes());
        bytes.extend_from_slice(&entry.flags.to_be_bytes());
        bytes.push(entry.kind);
        bytes.push(entry.granularity_bits);
        bytes.extend_from_slice(&(entry.name.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&(entry.extra.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&entry.extra);
        bytes.extend_from_slice(entry.name.as_bytes());
        bytes.resize(start + entry.encoded_len(), 0);
    }
    bytes
}

/// Reads the directory `extension` names (none without one).
pub(super) async fn read_directory(
    file: &dyn super::BlockChild,
    extension: Option<BitmapsExtension>,
    cluster_size: u64,
) -> BlockResult<BitmapDirectory> {
    let Some(ext) = extension else {
        return Ok(BitmapDirectory::default());
    };
    if ext.nb_bitmaps == 0 || ext.nb_bitmaps as usize > MAX_BITMAPS {
        return Err(corrupt("bitmaps_ext: Invalid number of bitmaps"));
    }
    if ext.directory_size == 0 || ext.directory_size > MAX_DIRECTORY_BYTES {
        return Err(corrupt("bitmaps_ext: Bitmap directory is too large"));
    }
    if ext.directory_offset == 0 || !ext.directory_offset.is_multiple_of(cluster_size) {
        return Err(corrupt(format!(
            "bitmaps_ext: Invalid bitmap directory offset {}",
            CHex(ext.directory_offset)
        )));
    }
    let bytes = file
        .read_vec(ext.directory_offset, ext.directory_size as usize)
        .await
        .map_err(|e| BlockError::new(e.kind, format!("Could not read bitmap directory: {e}")))?;
    Ok(BitmapDirectory {
        offset: ext.directory_offset,
        size: ext.directory_size,
        entries: parse_directory(&bytes, ext.nb_bitmaps)?,
    })
}

/// Bitmap table entries a bitmap over `disk_size` bytes needs.
fn table_entries(disk_size: u64, granularity: u64, cluster_size: u64) -> u64 {
    data_bytes(disk_size, granularity).div_ceil(cluster_size)
}

fn data_bytes(disk_size: u64, granularity: u64) -> u64 {
    disk_size.div_ceil(granularity).div_ceil(8)
}

impl Qcow2 {
    fn bitmap_directory(&self) -> Arc<BitmapDirectory> {
        self.bitmap_dir.load_full()
    }

    /// Whether bitmaps can be stored in this image (version 3).
    pub(super) fn stores_bitmaps(&self) -> bool {
        self.geo().version >= 3
    }

    /// QEMU's `qcow2_co_can_store_new_dirty_bitmap`: room for one more
    /// bitmap `name` (besides `pending` persistent ones not yet stored).
    pub(super) fn check_new_bitmap(
        &self,
        name: &str,
        granularity: u64,
        pending: usize,
    ) -> BlockResult<()> {
        if !self.stores_bitmaps() {
            return Err(corrupt("Cannot store dirty bitmaps in qcow2 v2 files"));
        }
        let bits = granularity.trailing_zeros();
        if bits > MAX_GRANULARITY_BITS {
            return Err(corrupt(format!(
                "Granularity exceeds maximum ({} bytes)",
                1u64 << MAX_GRANULARITY_BITS
            )));
        }
        if bits < MIN_GRANULARITY_BITS {
            return Err(corrupt(format!(
                "Granularity is under minimum ({} bytes)",
                1u64 << MIN_GRANULARITY_BITS
            )));
        }
        let data = data_bytes(self.virtual_size(), granularity);
        let cs = self.geo().cluster_size();
        if data > MAX_DATA_BYTES || data.div_ceil(cs) > MAX_TABLE_ENTRIES {
            return Err(corrupt(
                "Too much space will be occupied by the bitmap. Use larger granularity",
            ));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(corrupt(format!(
                "Name length exceeds maximum ({MAX_NAME_LEN} characters)"
            )));
        }
        if pending >= MAX_BITMAPS {
            return Err(corrupt(
                "Maximum number of persistent bitmaps is already reached",
            ));
        }
        // Every entry at most as long as the longest name allows.
        let entry_len = (ENTRY_HEADER + MAX_NAME_LEN).div_ceil(8) as u64 * 8;
        if entry_len * (pending as u64 + 1) > MAX_DIRECTORY_BYTES {
            return Err(corrupt("Not enough space in the bitmap directory"));
        }
        Ok(())
    }

    /// The bitmaps stored in the image, read at open or activation. When
    /// the image may be written, every one is marked `in_use` on disk
    /// before this returns.
    pub(super) async fn load_stored_bitmaps(&self) -> BlockResult<Vec<StoredBitmap>> {
        if !self.active.load(std::sync::atomic::Ordering::Acquire) {
            // Another process's image: it tracks the bitmaps.
            return Ok(Vec::new());
        }
        let _serial = self.bitmap_lock.lock().await;
        let directory = self.bitmap_directory();
        let mut loaded = Vec::new();
        let usable = directory.entries.iter().filter(|e| e.usable());
        if usable.clone().count() > crate::bitmaps::MAX_BITMAPS_PER_NODE {
            return Err(corrupt(format!(
                "The image stores more than {} bitmaps",
                crate::bitmaps::MAX_BITMAPS_PER_NODE
            )));
        }
        for entry in usable {
            let granularity = 1u64 << entry.granularity_bits;
            // Memory is what the bits take: QEMU's limit per bitmap.
            if data_bytes(self.virtual_size(), granularity) > MAX_DATA_BYTES {
                return Err(corrupt(format!(
                    "Bitmap '{}' is too large to load",
                    entry.name
                )));
            }
            let inconsistent = entry.flags & FLAG_IN_USE != 0;
            let bits = if inconsistent {
                DirtyBitmap::new(self.virtual_size(), granularity)
            } else {
                self.read_bitmap_data(entry).await.map_err(|e| {
                    BlockError::new(
                        e.kind,
                        format!("Could not load bitmap '{}': {}", entry.name, e.message),
                    )
                })?
            };
            loaded.push(StoredBitmap {
                name: entry.name.clone(),
                granularity,
                enabled: entry.flags & FLAG_AUTO != 0,
                inconsistent,
                bits,
            });
        }
        if self.writable() {
            self.mark_in_use(&directory).await?;
        }
        Ok(loaded)
    }

    /// Sets `in_use` on every usable entry, in place (only flags change).
    async fn mark_in_use(&self, directory: &BitmapDirectory) -> BlockResult<()> {
        if directory
            .entries
            .iter()
            .all(|e| !e.usable() || e.flags & FLAG_IN_USE != 0)
        {
            return Ok(());
        }
        let entries: Vec<DirEntry> = directory
            .entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if e.usable() {
                    e.flags |= FLAG_IN_USE;
                }
                e
            })
            .collect();
        self.file
            .write_slice(directory.offset, &encode_directory(&entries))
            .await?;
        self.file.flush().await?;
        self.bitmap_dir.store(Arc::new(BitmapDirectory {
            offset: directory.offset,
            size: directory.size,
            entries,
        }));
        Ok(())
    }

    /// Marks the stored bitmaps `in_use` again (the image became writable).
    pub(super) async fn bitmaps_in_use(&self) -> BlockResult<()> {
        let _serial = self.bitmap_lock.lock().await;
        self.mark_in_use(&self.bitmap_directory()).await
    }

    /// The bits of a consistent stored bitmap.
    async fn read_bitmap_data(&self, entry: &DirEntry) -> BlockResult<DirtyBitmap> {
        let size = self.virtual_size();
        let granularity = 1u64 << entry.granularity_bits;
        let cs = self.geo().cluster_size();
        if u64::from(entry.table_size) != table_entries(size, granularity, cs) {
            return Err(corrupt("Bitmap table size does not match the image size"));
        }
        let table = self.read_bitmap_table(entry).await?;
        let total = data_bytes(size, granularity) as usize;
        let mut data = Vec::with_capacity(total);
        for &slot in &table {
            let want = (total - data.len()).min(cs as usize);
            match slot & TABLE_OFFSET_MASK {
                0 if slot & TABLE_ALL_ONES != 0 => data.resize(data.len() + want, 0xff),
                0 => data.resize(data.len() + want, 0),
                offset => data.extend(self.file.read_vec(offset, want).await?),
            }
        }
        Ok(DirtyBitmap::from_bytes(size, granularity, &data))
    }

    async fn read_bitmap_table(&self, entry: &DirEntry) -> BlockResult<Vec<u64>> {
        let cs = self.geo().cluster_size();
        if u64::from(entry.table_size) > MAX_TABLE_ENTRIES
            || entry.table_offset == 0
            || !entry.table_offset.is_multiple_of(cs)
        {
            return Err(corrupt(format!(
                "Bitmap '{}' has an invalid table",
                entry.name
            )));
        }
        let bytes = self
            .file
            .read_vec(entry.table_offset, entry.table_size as usize * 8)
            .await?;
        let table: Vec<u64> = bytes.chunks_exact(8).map(|b| be64(b, 0)).collect();
        for &slot in &table {
            let offset = slot & TABLE_OFFSET_MASK;
            if slot & !TABLE_OFFSET_MASK & !TABLE_ALL_ONES != 0
                || (offset != 0 && (slot & TABLE_ALL_ONES != 0 || !offset.is_multiple_of(cs)))
            {
                return Err(corrupt(format!(
                    "Bitmap '{}' has an invalid table entry {}",
                    entry.name,
                    CHex(slot)
                )));
            }
        }
        Ok(table)
    }

    /// Stores `bitmaps` (their bits now, `in_use` cleared), replacing the
    /// entries of the same names; other entries stay as they are.
    pub(super) async fn store_bitmaps(&self, bitmaps: &[BitmapToStore<'_>]) -> BlockResult<()> {
        self.check_writable()?;
        let _serial = self.bitmap_lock.lock().await;
        let old = self.bitmap_directory();
        // Stored bitmaps keep their places; new ones follow, in order.
        let mut entries = old.entries.clone();
        let mut replaced = Vec::new();
        for bitmap in bitmaps {
            let entry = self.write_bitmap(bitmap).await?;
            match entries.iter_mut().find(|e| e.name == bitmap.name) {
                Some(slot) => replaced.push(std::mem::replace(slot, entry)),
                None => entries.push(entry),
            }
        }
        self.replace_directory(&old, entries, &replaced).await
    }

    /// Removes stored bitmap `name`, if the image has it.
    pub(super) async fn remove_stored_bitmap(&self, name: &str) -> BlockResult<()> {
        let _serial = self.bitmap_lock.lock().await;
        let old = self.bitmap_directory();
        let Some(removed) = old.entries.iter().find(|e| e.name == name).cloned() else {
            return Ok(());
        };
        self.check_writable()?;
        let entries = old
            .entries
            .iter()
            .filter(|e| e.name != name)
            .cloned()
            .collect();
        self.replace_directory(&old, entries, &[removed]).await
    }

    /// Writes one bitmap's data clusters (all-clean clusters take none)
    /// and its table; returns its directory entry.
    async fn write_bitmap(&self, bitmap: &BitmapToStore<'_>) -> BlockResult<DirEntry> {
        let cs = self.geo().cluster_size();
        let mut data = bitmap.bits.to_bytes();
        let size = self.virtual_size();
        if bitmap.bits.size() != size {
            // The image was resized since the bitmap began: it covers the
            // image as it is now (a grown part is clean).
            data = DirtyBitmap::from_bytes(size, bitmap.bits.granularity(), &data).to_bytes();
        }
        let mut table = Vec::with_capacity(data.len().div_ceil(cs as usize));
        for chunk in data.chunks(cs as usize) {
            if chunk.iter().all(|&b| b == 0) {
                table.push(0);
                continue;
            }
            let cluster = self.alloc_clusters(1).await?;
            let mut padded = chunk.to_vec();
            padded.resize(cs as usize, 0);
            self.file.write_slice(cluster.offset, &padded).await?;
            table.push(cluster.offset);
        }
        let table_bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        let table_clusters = (table_bytes.len() as u64).div_ceil(cs).max(1);
        let table_at = self.alloc_clusters(table_clusters).await?;
        let mut padded = table_bytes;
        padded.resize((table_clusters * cs) as usize, 0);
        self.file.write_slice(table_at.offset, &padded).await?;
        Ok(DirEntry {
            table_offset: table_at.offset,
            table_size: table.len() as u32,
            flags: if bitmap.enabled { FLAG_AUTO } else { 0 },
            kind: TYPE_DIRTY_TRACKING,
            granularity_bits: bitmap.bits.granularity().trailing_zeros() as u8,
            extra: Vec::new(),
            name: bitmap.name.to_owned(),
        })
    }

    /// Writes `entries` as a new directory, makes the header name it once
    /// it (and everything it names) is durable, then frees the old
    /// directory and the tables and data of `dropped`.
    async fn replace_directory(
        &self,
        old: &BitmapDirectory,
        entries: Vec<DirEntry>,
        dropped: &[DirEntry],
    ) -> BlockResult<()> {
        let cs = self.geo().cluster_size();
        let bytes = encode_directory(&entries);
        let new = if entries.is_empty() {
            BitmapDirectory::default()
        } else {
            let clusters = (bytes.len() as u64).div_ceil(cs);
            let at = self.alloc_clusters(clusters).await?;
            let mut padded = bytes.clone();
            padded.resize((clusters * cs) as usize, 0);
            self.file.write_slice(at.offset, &padded).await?;
            BitmapDirectory {
                offset: at.offset,
                size: bytes.len() as u64,
                entries,
            }
        };
        // Data, tables, directory and their refcounts before the header.
        self.writeback().await?;
        let extension = (!new.entries.is_empty()).then_some(BitmapsExtension {
            nb_bitmaps: new.entries.len() as u32,
            directory_size: new.size,
            directory_offset: new.offset,
        });
        self.header.set_bitmaps(extension).await?;
        self.bitmap_dir.store(Arc::new(new));
        let mut frees = Vec::new();
        if old.offset != 0 && old.size > 0 {
            frees.push((old.offset, old.size.div_ceil(cs)));
        }
        for entry in dropped {
            if entry.table_offset == 0 || !entry.table_offset.is_multiple_of(cs) {
                continue;
            }
            // A table this driver cannot read keeps its data (a leak, not
            // a loss).
            if let Ok(table) = self.read_bitmap_table(entry).await {
                frees.extend(
                    table
                        .iter()
                        .map(|slot| slot & TABLE_OFFSET_MASK)
                        .filter(|&offset| offset != 0)
                        .map(|offset| (offset, 1)),
                );
                frees.push((
                    entry.table_offset,
                    (u64::from(entry.table_size) * 8).div_ceil(cs).max(1),
                ));
            }
        }
        {
            let mut refs = self.refs.lock().await;
            for (offset, clusters) in frees {
                refs.schedule_free(self.geo().cluster_index(offset), clusters, true);
            }
        }
        self.writeback().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_round_trips_and_pads_entries() {
        let entries = vec![
            DirEntry {
                table_offset: 0x30000,
                table_size: 1,
                flags: FLAG_AUTO,
                kind: TYPE_DIRTY_TRACKING,
                granularity_bits: 16,
                extra: Vec::new(),
                name: "b0".into(),
            },
            DirEntry {
                table_offset: 0x40000,
                table_size: 2,
                flags: FLAG_IN_USE | FLAG_EXTRA_DATA_COMPATIBLE,
                kind: TYPE_DIRTY_TRACKING,
                granularity_bits: 9,
                extra: vec![1, 2, 3],
                name: "a longer name".into(),
            },
        ];
        let bytes = encode_directory(&entries);
        assert_eq!(bytes.len(), 32 + 40);
        assert_eq!(parse_directory(&bytes, 2).expect("parses"), entries);
        assert!(entries.iter().all(DirEntry::usable));
        assert!(parse_directory(&bytes[..40], 2).is_err());
    }

    #[test]
    fn table_sizes_follow_the_disk() {
        // 1 GiB at 64 KiB granules: 16384 bits, 2 KiB of data.
        assert_eq!(data_bytes(1 << 30, 1 << 16), 2048);
        assert_eq!(table_entries(1 << 30, 1 << 16, 65536), 1);
        assert_eq!(table_entries(1 << 40, 512, 65536), 4096);
    }
}

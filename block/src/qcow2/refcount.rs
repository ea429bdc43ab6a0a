//! Host cluster allocation: the refcount table, the refcount blocks (in a
//! cache), the search for free clusters, and the growth of the refcount
//! structures.
//!
//! Rules that keep the image consistent after a crash:
//! - an increment reaches the disk before anything points to the cluster
//!   (the writeback writes refcount blocks first and flushes);
//! - a decrement waits in [`Refcounts::schedule_free`] until the entry
//!   that dropped the reference is on disk, and only then is applied, so a
//!   freed cluster is never reused while the disk still points to it;
//! - a new refcount block is written before the table points to it, and
//!   the table entry before anything counted in the block is referenced;
//! - a grown refcount table is written complete, with the blocks that
//!   describe it and every refcount block it points to, and flushed before
//!   the header switches to it.
//!
//! Everything here runs under the image's allocation lock.

use std::sync::Arc;

use super::cache::{Table, TableCache};
use super::child::BlockChild;
use super::flat_table::FlatTable;
use super::header::MAX_REFTABLE_BYTES;
use super::header_store::HeaderStore;
use super::layout::{
    corrupt, get_refcount, set_refcount, CHex, Geometry, MAX_HOST_OFFSET, REFT_OFFSET_MASK,
};
use crate::error::{BlockError, BlockResult, ErrorKind};

/// A decrement waiting for the metadata that dropped the reference to be
/// durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingFree {
    /// First host cluster index.
    pub cluster: u64,
    /// Number of clusters.
    pub count: u64,
    /// Discard the clusters in the file if they become free.
    pub discard: bool,
}

/// Clusters just allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Host offset of the first cluster.
    pub offset: u64,
    /// The clusters were never written: they read as zeroes.
    pub fresh: bool,
}

/// The refcount structures of an open image.
pub struct Refcounts {
    geo: Geometry,
    file: Arc<dyn BlockChild>,
    table: FlatTable,
    blocks: TableCache,
    /// No cluster below this index is free.
    free_hint: u64,
    /// Clusters from this index on were never written by anyone.
    high_water: u64,
    pending: Vec<PendingFree>,
}

impl Refcounts {
    /// Reads the refcount table.
    pub async fn open(
        geo: Geometry,
        file: Arc<dyn BlockChild>,
        table_offset: u64,
        table_clusters: u32,
        cache_tables: u64,
    ) -> BlockResult<Refcounts> {
        let cs = geo.cluster_size();
        let table_bytes = u64::from(table_clusters) * cs;
        let bytes = file
            .read_vec(table_offset, table_bytes as usize)
            .await
            .map_err(|e| BlockError::new(e.kind, format!("Could not read refcount table: {e}")))?;
        let table = FlatTable::from_bytes(
            table_offset,
            &bytes,
            (table_bytes / 8) as usize,
            cs,
            REFT_OFFSET_MASK,
        );
        let high_water = file.size().div_ceil(cs);
        Ok(Refcounts {
            geo,
            file,
            table,
            blocks: TableCache::new(cache_tables as usize),
            free_hint: 0,
            high_water,
            pending: Vec::new(),
        })
    }

    /// How many refcount blocks the cache keeps.
    pub fn cache_tables(&self) -> u64 {
        self.blocks.capacity() as u64
    }

    /// Keeps at most `tables` refcount blocks from now on.
    pub fn set_cache_tables(&self, tables: u64) {
        self.blocks.set_capacity(tables as usize);
    }

    /// Host offset and clusters of the refcount table.
    pub fn table_location(&self) -> (u64, u64) {
        let cs = self.geo.cluster_size();
        let bytes = self.table.len() as u64 * 8;
        (self.table.offset(), bytes.div_ceil(cs))
    }

    /// Refcount table entries (for walks over every block).
    pub fn table_entries(&self) -> &[u64] {
        self.table.entries()
    }

    /// Whether a refcount block overlaps `[start, end)`.
    pub fn block_overlaps(&self, start: u64, end: u64) -> bool {
        self.table.points_into(start, end, self.geo.cluster_size())
    }

    /// The refcount block `index` of the table, if allocated.
    async fn block(&self, index: u64) -> BlockResult<Option<Arc<Table>>> {
        let entry = self.table.get(index as usize);
        let offset = entry & REFT_OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        if self.geo.offset_in_cluster(offset) != 0 || offset >= MAX_HOST_OFFSET {
            return Err(corrupt(format!(
                "Refblock offset {} unaligned (reftable index: {})",
                CHex(offset),
                CHex(index)
            )));
        }
        let file = &self.file;
        let len = self.geo.cluster_len();
        let table = self
            .blocks
            .get_or_load(offset, || async move { file.read_vec(offset, len).await })
            .await?;
        Ok(Some(table))
    }

    fn split(&self, cluster: u64) -> (u64, usize) {
        let bits = self.geo.refblock_bits;
        (cluster >> bits, (cluster & ((1 << bits) - 1)) as usize)
    }

    /// The refcount of host cluster `cluster`.
    pub async fn get(&self, cluster: u64) -> BlockResult<u64> {
        let (index, entry) = self.split(cluster);
        Ok(match self.block(index).await? {
            Some(block) => get_refcount(&block.lock().bytes, self.geo.refcount_order, entry),
            None => 0,
        })
    }

    /// Adds `delta` (+1 or -1) to the refcount of `cluster`; returns the
    /// new value.
    pub async fn update(&mut self, cluster: u64, increase: bool) -> BlockResult<u64> {
        let (index, entry) = self.split(cluster);
        let block = self.block(index).await?.ok_or_else(|| {
            corrupt(format!(
                "Refcount of cluster {cluster:#x} changed, but its refcount block is missing"
            ))
        })?;
        let order = self.geo.refcount_order;
        let mut data = block.lock();
        let old = get_refcount(&data.bytes, order, entry);
        let new = if increase {
            if old >= self.geo.refcount_max() {
                return Err(BlockError::new(
                    ErrorKind::TooLarge,
                    format!("Refcount of cluster {cluster:#x} would overflow"),
                ));
            }
            old + 1
        } else {
            old.checked_sub(1).ok_or_else(|| {
                corrupt(format!(
                    "Refcount of cluster {cluster:#x} would drop below zero"
                ))
            })?
        };
        set_refcount(&mut data.bytes, order, entry, new);
        data.dirty = true;
        drop(data);
        if new == 0 && cluster < self.free_hint {
            self.free_hint = cluster;
        }
        Ok(new)
    }

    /// Raises the refcount of `cluster` to `value` if it is lower (repair
    /// of an image whose refcounts were not kept up to date).
    pub async fn raise(&mut self, cluster: u64, value: u64) -> BlockResult<()> {
        let (index, entry) = self.split(cluster);
        let block = self.block(index).await?.ok_or_else(|| {
            corrupt(format!(
                "Cluster {cluster:#x} is in use but has no refcount block; run 'qemu-img check -r all'"
            ))
        })?;
        let order = self.geo.refcount_order;
        let value = value.min(self.geo.refcount_max());
        let mut data = block.lock();
        if get_refcount(&data.bytes, order, entry) < value {
            set_refcount(&mut data.bytes, order, entry, value);
            data.dirty = true;
        }
        Ok(())
    }

    /// Allocates `count` contiguous clusters (first fit). Ranges without
    /// a refcount block get one, placed right after the run (so that runs
    /// longer than a block describes stay possible) and counted with it.
    pub async fn alloc(&mut self, count: u64, header: &HeaderStore) -> BlockResult<Allocation> {
        let bits = self.geo.refblock_bits;
        let mut room = 0;
        loop {
            let start = self.find_free_run(count + room).await?;
            let last_chunk = (start + count + room - 1) >> bits;
            let missing: Vec<u64> = ((start >> bits)..=last_chunk)
                .filter(|&chunk| self.table.get(chunk as usize) == 0)
                .collect();
            if let Some(&beyond) = missing.iter().find(|&&c| c as usize >= self.table.len()) {
                self.grow_table(beyond + 1, header).await?;
                room = 0;
                continue;
            }
            let blocks = missing.len() as u64;
            if blocks > room {
                room = blocks;
                continue;
            }
            for (j, &chunk) in missing.iter().enumerate() {
                self.create_block(chunk, start + count + j as u64).await?;
            }
            let end = start + count + blocks;
            for cluster in start..end {
                self.update(cluster, true).await?;
            }
            let fresh = start >= self.high_water;
            self.high_water = self.high_water.max(end);
            if start == self.free_hint {
                self.free_hint = end;
            }
            return Ok(Allocation {
                offset: start << self.geo.cluster_bits,
                fresh,
            });
        }
    }

    /// The first run of `count` free clusters from the hint.
    async fn find_free_run(&mut self, count: u64) -> BlockResult<u64> {
        let bits = self.geo.refblock_bits;
        let order = self.geo.refcount_order;
        let max_cluster = MAX_HOST_OFFSET >> self.geo.cluster_bits;
        // Cluster 0 is the header, whatever its refcount says.
        self.free_hint = self.free_hint.max(1);
        let mut start = self.free_hint;
        let mut cluster = start;
        loop {
            if start + count > max_cluster {
                return Err(BlockError::new(
                    ErrorKind::NoSpace,
                    "qcow2 image has no room for more clusters",
                ));
            }
            let index = cluster >> bits;
            let block_end = (index + 1) << bits;
            let Some(block) = self.block(index).await? else {
                // No block: everything it would describe is free.
                if block_end - start >= count {
                    return Ok(start);
                }
                cluster = block_end;
                continue;
            };
            let data = block.lock();
            for c in cluster..block_end {
                let entry = (c - (index << bits)) as usize;
                if get_refcount(&data.bytes, order, entry) != 0 {
                    if self.free_hint == c {
                        self.free_hint = c + 1;
                    }
                    start = c + 1;
                } else if c + 1 - start >= count {
                    return Ok(start);
                }
            }
            cluster = block_end;
        }
    }

    /// Creates refcount block `index`, empty, at host cluster `cluster`
    /// (the caller counts that cluster). Its contents are on disk before a
    /// writeback writes the table entry that points to it.
    async fn create_block(&mut self, index: u64, cluster: u64) -> BlockResult<()> {
        if index == 0 {
            return Err(corrupt(
                "The refcount block describing the header is missing",
            ));
        }
        let offset = cluster << self.geo.cluster_bits;
        let bytes = vec![0u8; self.geo.cluster_len()];
        self.file.write_slice(offset, &bytes).await?;
        self.table.set(index as usize, offset);
        self.blocks.insert_new(offset, bytes, false);
        Ok(())
    }

    /// Moves the refcount table to a larger one of at least `min_entries`
    /// entries, past everything the current table describes, together
    /// with the blocks that describe the new area.
    async fn grow_table(&mut self, min_entries: u64, header: &HeaderStore) -> BlockResult<()> {
        let cs = self.geo.cluster_size();
        let bits = self.geo.refblock_bits;
        let old_len = self.table.len() as u64;
        let area = (old_len << bits).max(self.high_water);
        let first_chunk = area >> bits;
        let mut new_len = min_entries.max(old_len + old_len / 2).max(old_len + 1);
        let (blocks, table_clusters) = loop {
            let table_clusters = (new_len * 8).div_ceil(cs);
            let mut blocks = 1;
            loop {
                let last = (area + blocks + table_clusters - 1) >> bits;
                let needed = last - first_chunk + 1;
                if needed <= blocks {
                    break;
                }
                blocks = needed;
            }
            let last_chunk = first_chunk + blocks - 1;
            if new_len <= last_chunk {
                new_len = last_chunk + 1;
                continue;
            }
            break (blocks, table_clusters);
        };
        if new_len * 8 > MAX_REFTABLE_BYTES {
            return Err(BlockError::new(
                ErrorKind::NoSpace,
                "Refcount table would exceed its maximum size",
            ));
        }
        let area_end = area + blocks + table_clusters;
        if area_end > MAX_HOST_OFFSET >> self.geo.cluster_bits {
            return Err(BlockError::new(
                ErrorKind::NoSpace,
                "qcow2 image has no room for more clusters",
            ));
        }
        // The new blocks, then the new table, contiguous from `area`.
        let block_len = self.geo.cluster_len();
        let mut bytes = vec![0u8; ((blocks + table_clusters) * cs) as usize];
        for cluster in area..area_end {
            let chunk = cluster >> bits;
            let block = (chunk - first_chunk) as usize;
            let entry = (cluster & ((1 << bits) - 1)) as usize;
            let block_bytes = &mut bytes[block * block_len..(block + 1) * block_len];
            set_refcount(block_bytes, self.geo.refcount_order, entry, 1);
        }
        let mut entries = self.table.entries().to_vec();
        entries.resize(new_len as usize, 0);
        for j in 0..blocks {
            entries[(first_chunk + j) as usize] = (area + j) * cs;
        }
        let table_offset = (area + blocks) * cs;
        let table_bytes = FlatTable::encode(&entries, (table_clusters * cs) as usize);
        bytes[(blocks * cs) as usize..].copy_from_slice(&table_bytes);
        self.file.write_slice(area * cs, &bytes).await?;
        self.write_dirty_blocks().await?;
        self.file.flush().await?;
        header
            .update(|h| {
                h.refcount_table_offset = table_offset;
                h.refcount_table_clusters = table_clusters as u32;
            })
            .await?;
        let (old_offset, old_clusters) = self.table_location();
        self.table = FlatTable::from_entries(table_offset, entries, cs, REFT_OFFSET_MASK);
        for j in 0..blocks as usize {
            let block_bytes = bytes[j * block_len..(j + 1) * block_len].to_vec();
            self.blocks
                .insert_new((area + j as u64) * cs, block_bytes, false);
        }
        self.high_water = self.high_water.max(area_end);
        // Nothing points to the old table any more.
        let old_first = old_offset >> self.geo.cluster_bits;
        for cluster in old_first..old_first + old_clusters {
            self.update(cluster, false).await?;
        }
        Ok(())
    }

    /// Writes the current contents of every dirty refcount block, leaving
    /// them dirty for the writeback. A grown table copies the in-memory
    /// entries, among them blocks created since the last writeback whose
    /// counts (their own included) are still only in the cache: they must
    /// be on disk before the header points to that table. Writing counts
    /// early is always safe: increments precede any reference, and
    /// decrements are applied only once the reference is gone on disk.
    async fn write_dirty_blocks(&self) -> BlockResult<()> {
        for block in self.blocks.dirty_tables() {
            let bytes = block.lock().bytes.clone();
            self.file.write_slice(block.offset(), &bytes).await?;
        }
        Ok(())
    }

    /// Queues a decrement of `count` clusters from `cluster`, applied by
    /// the writeback once the reference is gone on disk.
    pub fn schedule_free(&mut self, cluster: u64, count: u64, discard: bool) {
        self.pending.push(PendingFree {
            cluster,
            count,
            discard,
        });
    }

    /// The queued decrements (the writeback applies them after its writes).
    pub fn take_pending(&mut self) -> Vec<PendingFree> {
        std::mem::take(&mut self.pending)
    }

    /// Puts back decrements a failed writeback could not apply.
    pub fn restore_pending(&mut self, mut frees: Vec<PendingFree>) {
        frees.append(&mut self.pending);
        self.pending = frees;
    }

    /// Applies decrements; returns the host ranges that became free and
    /// should be discarded in the file.
    pub async fn apply_frees(&mut self, frees: &[PendingFree]) -> BlockResult<Vec<(u64, u64)>> {
        let mut discards: Vec<(u64, u64)> = Vec::new();
        let cs = self.geo.cluster_size();
        for free in frees {
            for cluster in free.cluster..free.cluster + free.count {
                if self.update(cluster, false).await? == 0 && free.discard {
                    match discards.last_mut() {
                        Some((start, len)) if *start + *len == cluster * cs => *len += cs,
                        _ => discards.push((cluster * cs, cs)),
                    }
                }
            }
        }
        Ok(discards)
    }

    /// Dirty refcount blocks.
    pub fn dirty_blocks(&self) -> Vec<Arc<Table>> {
        self.blocks.dirty_tables()
    }

    /// Dirty chunks of the refcount table (clean from now on).
    pub fn take_dirty_table(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.table.take_dirty()
    }

    /// Marks table chunks a failed writeback did not write dirty again.
    pub fn redirty_table(&mut self, chunks: &[(u64, Vec<u8>)]) {
        self.table.redirty(chunks);
    }

    /// Evicts clean blocks beyond the cache's capacity.
    pub fn shrink_cache(&self) {
        self.blocks.shrink();
    }

    /// Whether the block cache holds more than it should.
    pub fn cache_over_capacity(&self) -> bool {
        self.blocks.over_capacity()
    }
}

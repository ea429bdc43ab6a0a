//! Changing the virtual size. Growing: a larger L1 table if the new size
//! needs one (written complete and counted before the header points to
//! it), then the new size in the header. Shrinking (QEMU's
//! `qcow2_co_truncate`): every cluster wholly past the new end is
//! discarded for good (its entry emptied, its host cluster freed), then
//! the header takes the new size; a kill in between leaves the old size
//! with the tail empty. The L1 table keeps its length (entries past the
//! end point at emptied L2 tables, which a later growth reuses).

use std::sync::atomic::Ordering;

use super::flat_table::FlatTable;
use super::header::MAX_L1_BYTES;
use super::layout::L1E_OFFSET_MASK;
use super::Qcow2;
use crate::error::{BlockError, BlockResult, ErrorKind};

/// Sizes must be whole sectors.
const SECTOR_SIZE: u64 = 512;

impl Qcow2 {
    pub(super) async fn resize_to(&self, new_size: u64) -> BlockResult<()> {
        self.check_writable()?;
        let old_size = self.virtual_size();
        if new_size == old_size {
            return Ok(());
        }
        if !new_size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                format!("The new size must be a multiple of {SECTOR_SIZE}"),
            ));
        }
        if self.header.get().await.nb_snapshots > 0 {
            return Err(BlockError::new(
                ErrorKind::NotSupported,
                "Can't resize an image which has snapshots",
            ));
        }
        if new_size < old_size {
            return self.shrink(new_size, old_size).await;
        }
        let _serial = self.l2_alloc.lock().await;
        let needed = self.geo().l1_entries_for(new_size);
        if needed > (MAX_L1_BYTES / 8) {
            return Err(BlockError::new(ErrorKind::TooLarge, "File too large"));
        }
        if needed > self.l1().len() as u64 {
            self.grow_l1(needed).await?;
        }
        self.header.update(|h| h.size = new_size).await?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    async fn shrink(&self, new_size: u64, old_size: u64) -> BlockResult<()> {
        self.mark_dirty().await?;
        let cs = self.geo().cluster_size();
        let first = new_size.div_ceil(cs);
        let end = old_size.div_ceil(cs);
        if first < end {
            self.empty_clusters(first, end - first).await?;
        }
        self.writeback().await?;
        self.header.update(|h| h.size = new_size).await?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    /// Moves the L1 table to new clusters with room for `min_entries`
    /// (growing by half again each step, as QEMU does). Called with the
    /// L2-allocation lock held, so the L1 table does not change meanwhile.
    async fn grow_l1(&self, min_entries: u64) -> BlockResult<()> {
        let cs = self.geo().cluster_size();
        let max_entries = MAX_L1_BYTES / 8;
        let mut new_len = (self.l1().len() as u64).max(1);
        while new_len < min_entries {
            new_len = (new_len * 3).div_ceil(2);
        }
        let new_len = new_len.min(max_entries);
        // Everything the old table points to is on disk first.
        self.writeback().await?;
        let bytes_len = (new_len * 8).div_ceil(cs) * cs;
        let clusters = bytes_len / cs;
        let allocation = self.alloc_clusters(clusters).await?;
        let (old_offset, old_len, mut entries) = {
            let l1 = self.l1();
            (l1.offset(), l1.len() as u64, l1.entries().to_vec())
        };
        entries.resize(new_len as usize, 0);
        let bytes = FlatTable::encode(&entries, bytes_len as usize);
        self.file.write_slice(allocation.offset, &bytes).await?;
        // The new table's refcounts and contents are durable before the
        // header switches to it.
        self.writeback().await?;
        self.header
            .update(|h| {
                h.l1_table_offset = allocation.offset;
                h.l1_size = new_len as u32;
            })
            .await?;
        *self.l1_mut() = FlatTable::from_entries(allocation.offset, entries, cs, L1E_OFFSET_MASK);
        let old_clusters = (old_len * 8).div_ceil(cs);
        if old_offset != 0 && old_clusters > 0 {
            let first = self.geo().cluster_index(old_offset);
            self.refs.lock().await.schedule_free(
                first,
                old_clusters,
                self.tunables().pass_discard_other,
            );
        }
        Ok(())
    }
}

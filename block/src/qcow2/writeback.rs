//! The writeback: the one path by which cached metadata reaches the disk,
//! in an order that leaves a consistent image after a crash at any point.
//!
//! 1. Under the allocation lock, copy every dirty refcount block, L2 table,
//!    L1 chunk and refcount table chunk, and take the queued frees. An L2
//!    entry is only ever set after its cluster's refcount was raised and
//!    its data written, and a free is only queued after its entry changed,
//!    so the copy is self-consistent.
//! 2. Write the refcount blocks; flush (now every referenced cluster is
//!    counted, and all data and new tables written before are durable).
//! 3. Write the refcount table chunks (pointing to refcount blocks created
//!    since the last writeback, now durable); flush.
//! 4. Write the L2 tables and the L1 chunks; flush.
//! 5. Apply the frees (nothing on disk points to those clusters any more),
//!    write the refcount blocks they changed, flush, discard.
//!
//! Requests go on meanwhile: whatever they change is dirty again and goes
//! with the next writeback. A failed writeback marks what it took dirty
//! again and returns the error.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::cache::Table;
use super::refcount::PendingFree;
use super::Qcow2;
use crate::driver::WriteFlags;
use crate::error::BlockResult;
use crate::iobuf::IoBuf;

/// Copies of dirty tables (each pinned by its `Arc` until written).
type TableCopies = Vec<(Arc<Table>, IoBuf)>;

/// What one writeback writes.
#[derive(Default)]
struct Snapshot {
    refcount_blocks: TableCopies,
    l2_tables: TableCopies,
    l1_chunks: Vec<(u64, Vec<u8>)>,
    reftable_chunks: Vec<(u64, Vec<u8>)>,
    frees: Vec<PendingFree>,
}

/// Copies and marks clean every table of `tables`.
fn copy_clean(tables: Vec<Arc<Table>>) -> TableCopies {
    tables
        .into_iter()
        .map(|table| {
            let bytes = {
                let mut data = table.lock();
                data.dirty = false;
                IoBuf::copy_of(&data.bytes)
            };
            (table, bytes)
        })
        .collect()
}

fn redirty(copies: &TableCopies) {
    for (table, _) in copies {
        table.lock().dirty = true;
    }
}

impl Qcow2 {
    /// Writes every dirty piece of metadata, in order, and flushes the
    /// file: everything completed before the call is durable after it.
    pub(super) async fn writeback(&self) -> BlockResult<()> {
        let _serial = self.writeback_lock.lock().await;
        let snapshot = {
            let mut refs = self.refs.lock().await;
            Snapshot {
                refcount_blocks: copy_clean(refs.dirty_blocks()),
                reftable_chunks: refs.take_dirty_table(),
                frees: refs.take_pending(),
                l2_tables: copy_clean(self.l2_cache.dirty_tables()),
                l1_chunks: self.l1_mut().take_dirty(),
            }
        };
        if let Err(e) = self.write_snapshot(&snapshot).await {
            redirty(&snapshot.refcount_blocks);
            redirty(&snapshot.l2_tables);
            self.l1_mut().redirty(&snapshot.l1_chunks);
            let mut refs = self.refs.lock().await;
            refs.redirty_table(&snapshot.reftable_chunks);
            refs.restore_pending(snapshot.frees);
            return Err(e);
        }
        if !snapshot.frees.is_empty() {
            self.apply_frees(&snapshot.frees).await?;
        }
        self.l2_cache.shrink();
        self.refs.lock().await.shrink_cache();
        self.writeback_wanted.store(false, Ordering::Release);
        Ok(())
    }

    async fn write_snapshot(&self, snapshot: &Snapshot) -> BlockResult<()> {
        let file = &self.file;
        let plain = WriteFlags::default();
        if !snapshot.refcount_blocks.is_empty() {
            for (table, bytes) in &snapshot.refcount_blocks {
                file.write(table.offset(), bytes, plain).await?;
            }
            file.flush().await?;
        }
        if !snapshot.reftable_chunks.is_empty() {
            for (offset, bytes) in &snapshot.reftable_chunks {
                file.write_slice(*offset, bytes).await?;
            }
            file.flush().await?;
        }
        for (table, bytes) in &snapshot.l2_tables {
            file.write(table.offset(), bytes, plain).await?;
        }
        for (offset, bytes) in &snapshot.l1_chunks {
            file.write_slice(*offset, bytes).await?;
        }
        file.flush().await
    }

    /// Step 5: the decrements and the discards, then the refcount blocks
    /// written and flushed.
    async fn apply_frees(&self, frees: &[PendingFree]) -> BlockResult<()> {
        let blocks = {
            let mut refs = self.refs.lock().await;
            let discards = refs.apply_frees(frees).await?;
            // Discard while the refcount lock is held: once it is released an
            // allocation may reuse these clusters, and a later discard would
            // punch a hole in its data (QEMU discards under its lock too).
            for (offset, len) in discards {
                // A discard is a hint: failing it loses nothing.
                if let Err(e) = self.file.discard(offset, len).await {
                    tracing::debug!("qcow2: discard of freed clusters failed: {e}");
                }
            }
            copy_clean(refs.dirty_blocks())
        };
        let written = async {
            for (table, bytes) in &blocks {
                self.file
                    .write(table.offset(), bytes, WriteFlags::default())
                    .await?;
            }
            self.file.flush().await
        }
        .await;
        if let Err(e) = written {
            redirty(&blocks);
            return Err(e);
        }
        Ok(())
    }
}

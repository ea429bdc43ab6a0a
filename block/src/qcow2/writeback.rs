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
//! with the next writeback. A writeback that fails, or whose future is
//! dropped half way, marks what it took dirty again (a guard does it when
//! dropped, so an abandoned writeback loses nothing); the parts that
//! belong under the allocation lock wait in [`Unwritten`] for the next
//! writeback.

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

/// Refcount table chunks and frees that a writeback took and did not
/// write; the next writeback takes them back under the allocation lock.
#[derive(Default)]
pub(super) struct Unwritten {
    reftable_chunks: Vec<(u64, Vec<u8>)>,
    frees: Vec<PendingFree>,
}

/// A snapshot being written: if dropped before [`Taken::written`], what
/// it took is dirty again.
struct Taken<'a> {
    qcow2: &'a Qcow2,
    snapshot: Option<Snapshot>,
}

impl Taken<'_> {
    /// The snapshot reached the disk: nothing to put back.
    fn written(mut self) -> Snapshot {
        self.snapshot.take().expect("taken once")
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let Some(snapshot) = self.snapshot.take() else {
            return;
        };
        redirty(&snapshot.refcount_blocks);
        redirty(&snapshot.l2_tables);
        self.qcow2.l1_mut().redirty(&snapshot.l1_chunks);
        let mut unwritten = self
            .qcow2
            .unwritten
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        unwritten.reftable_chunks.extend(snapshot.reftable_chunks);
        unwritten.frees.extend(snapshot.frees);
    }
}

/// Refcount blocks being written after frees: dirty again if dropped
/// before they are.
struct TakenBlocks(TableCopies);

impl Drop for TakenBlocks {
    fn drop(&mut self) {
        redirty(&self.0);
    }
}

impl Qcow2 {
    /// Writes every dirty piece of metadata, in order, and flushes the
    /// file: everything completed before the call is durable after it.
    pub(super) async fn writeback(&self) -> BlockResult<()> {
        let _serial = self.writeback_lock.lock().await;
        let snapshot = {
            let mut refs = self.refs.lock().await;
            let unwritten =
                std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|e| e.into_inner()));
            refs.redirty_table(&unwritten.reftable_chunks);
            refs.restore_pending(unwritten.frees);
            Snapshot {
                refcount_blocks: copy_clean(refs.dirty_blocks()),
                reftable_chunks: refs.take_dirty_table(),
                frees: refs.take_pending(),
                l2_tables: copy_clean(self.l2_cache.dirty_tables()),
                l1_chunks: self.l1_mut().take_dirty(),
            }
        };
        let taken = Taken {
            qcow2: self,
            snapshot: Some(snapshot),
        };
        self.write_snapshot(taken.snapshot.as_ref().expect("just taken"))
            .await?;
        let snapshot = taken.written();
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
        let mut blocks = {
            let mut refs = self.refs.lock().await;
            let discards = refs.apply_frees(frees).await?;
            // A freed cluster may be reused: compressed clusters start a
            // new one.
            *self.compressed_cursor() = None;
            // Discard while the refcount lock is held: once it is released an
            // allocation may reuse these clusters, and a later discard would
            // punch a hole in its data (QEMU discards under its lock too).
            for (offset, len) in discards {
                // A discard is a hint: failing it loses nothing.
                if let Err(e) = self.file.discard(offset, len).await {
                    tracing::debug!("qcow2: discard of freed clusters failed: {e}");
                }
            }
            TakenBlocks(copy_clean(refs.dirty_blocks()))
        };
        for (table, bytes) in &blocks.0 {
            self.file
                .write(table.offset(), bytes, WriteFlags::default())
                .await?;
        }
        self.file.flush().await?;
        // Written: nothing for the guard to mark dirty again.
        blocks.0.clear();
        Ok(())
    }
}

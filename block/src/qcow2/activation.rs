//! Handing a qcow2 image over to another process and taking it back
//! (QEMU's `qcow2_inactivate` and `qcow2_co_invalidate_cache`, which
//! `blockdev-set-active` reaches during a migration).
//!
//! Inactivating writes back the caches, clears the dirty bit and stops
//! writes: from then on the other process may change the image. Activating
//! reads the metadata again from the disk (header, L1, refcount and
//! snapshot tables; the L2 and refcount-block caches start empty), since the other process
//! may have allocated clusters meanwhile, and allows writes again if the
//! node was opened read-write. Both run with no request in flight (the
//! graph drains the node first).

use std::sync::atomic::Ordering;

use super::header::{incompat, ImageHeader};
use super::layout::Geometry;
use super::{invalid, load_tables, read_image_header, BackingInfo, Qcow2};
use crate::error::{BlockError, BlockResult, ErrorKind};

impl Qcow2 {
    /// Writes everything out and leaves the image clean for another
    /// process; the image is no longer written after this.
    pub(super) async fn inactivate(&self) -> BlockResult<()> {
        self.close().await?;
        self.writable.store(false, Ordering::Release);
        self.active.store(false, Ordering::Release);
        Ok(())
    }

    /// Reads the image's metadata again and allows writes if the node is
    /// read-write.
    pub(super) async fn activate(&self) -> BlockResult<()> {
        let image = read_image_header(self.file.as_ref()).await?;
        let h = image.header.clone();
        let writable = self.read_write.load(Ordering::Acquire);
        h.check_features(writable, &image.feature_names)?;
        let geo = Geometry::new(h.cluster_bits, h.refcount_order, h.version);
        if geo != self.facts.geo {
            return Err(invalid(
                "The image's cluster or refcount geometry changed while inactive",
            ));
        }
        let refcount_tables = self.refs.lock().await.cache_tables();
        let (l1, refs) = load_tables(&self.file, &h, geo, refcount_tables).await?;
        let snapshots =
            super::snapshot::read_table(self.file.as_ref(), h.snapshots_offset, h.nb_snapshots)
                .await?;
        self.snapshot_table.store(std::sync::Arc::new(snapshots));
        let bitmaps = super::bitmaps::read_directory(
            self.file.as_ref(),
            image.valid_bitmaps(),
            geo.cluster_size(),
        )
        .await?;
        self.bitmap_dir.store(std::sync::Arc::new(bitmaps));
        self.adopt(image, l1, refs).await;
        self.active.store(true, Ordering::Release);
        if writable {
            let image_dirty = h.incompatible_features & incompat::DIRTY != 0;
            self.prepare_for_writing(image_dirty).await.map_err(|e| {
                BlockError::new(ErrorKind::Io, format!("Could not activate image: {e}"))
            })?;
            self.writable.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Replaces the cached metadata with what was just read.
    async fn adopt(&self, image: ImageHeader, l1: super::FlatTable, refs: super::Refcounts) {
        let h = image.header.clone();
        let mut held = self.refs.lock().await;
        *held = refs;
        *self.compressed_cursor() = None;
        drop(held);
        *self.l1_mut() = l1;
        self.l2_cache.clear();
        self.size.store(h.size, Ordering::Release);
        self.dirty.store(
            h.incompatible_features & incompat::DIRTY != 0,
            Ordering::Release,
        );
        self.corrupt.store(
            h.incompatible_features & incompat::CORRUPT != 0,
            Ordering::Release,
        );
        *self.facts.backing.lock().unwrap_or_else(|e| e.into_inner()) = BackingInfo {
            file: image.backing_file.clone(),
            format: image.backing_format.clone(),
        };
        self.header.replace(image).await;
    }
}

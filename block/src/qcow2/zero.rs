//! Write-zeroes and discard: whole clusters change only their L2 entries
//! (the zero flag in version 3, or no entry), partial clusters are written
//! with zeroes unless they already read as zeroes. Clusters that lose
//! their last reference are freed by the next writeback.

use super::layout::{set_entry, ClusterKind, OFLAG_COPIED, OFLAG_ZERO};
use super::Qcow2;
use crate::driver::{WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;

/// Largest buffer of zeroes written at once where entries cannot say zero.
const MAX_ZERO_BUFFER: u64 = 1 << 20;

/// A new L2 entry for one cluster.
#[derive(Debug, PartialEq, Eq)]
struct Change {
    entry: u64,
    /// The old entry's host clusters lose their reference.
    free_old: bool,
    /// The host cluster stays allocated but its data can be discarded
    /// in the file (`discard-no-unref`).
    discard_kept: bool,
}

impl Change {
    fn replace(entry: u64, free_old: bool) -> Self {
        Change {
            entry,
            free_old,
            discard_kept: false,
        }
    }

    /// The zero flag on a cluster that keeps its host cluster.
    fn keep_as_zero(host: u64, copied: bool, discard_kept: bool) -> Self {
        Change {
            entry: host | OFLAG_ZERO | if copied { OFLAG_COPIED } else { 0 },
            free_old: false,
            discard_kept,
        }
    }
}

impl Qcow2 {
    pub(super) async fn zero_range(
        &self,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> BlockResult<()> {
        if len == 0 {
            return Ok(());
        }
        self.check_writable()?;
        if self.geo().version < 3 {
            if flags.no_fallback {
                return Err(BlockError::new(
                    ErrorKind::NotSupported,
                    "qcow2 version 2 images cannot mark clusters as zero",
                ));
            }
            self.write_zero_buffers(offset, len).await?;
        } else {
            self.zero_v3(offset, len, flags).await?;
        }
        if flags.fua {
            self.writeback().await?;
        }
        self.writeback_if_wanted().await
    }

    async fn zero_v3(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let geo = *self.geo();
        let cs = geo.cluster_size();
        let end = offset + len;
        let (body, pieces) = split_clusters(offset, end, cs, self.virtual_size());
        let mut to_write = Vec::new();
        for (start, stop) in pieces {
            if !self.reads_as_zero(start).await? {
                if flags.no_fallback {
                    return Err(BlockError::new(
                        ErrorKind::NotSupported,
                        "Partial qcow2 clusters cannot be zeroed without writing",
                    ));
                }
                to_write.push((start, stop));
            }
        }
        self.mark_dirty().await?;
        if let Some((first, count)) = body {
            let unmap = flags.may_unmap;
            let keep = self.tunables().discard_no_unref;
            self.rewrite_entries(first, count, |kind| zero_change(kind, unmap, keep))
                .await?;
        }
        for (start, stop) in to_write {
            self.write_zero_buffers(start, stop - start).await?;
        }
        Ok(())
    }

    /// Whether the cluster at `guest` reads as zeroes already (without
    /// asking the backing image).
    async fn reads_as_zero(&self, guest: u64) -> BlockResult<bool> {
        let cluster_start = guest - self.geo().offset_in_cluster(guest);
        let mapping = self.map(guest, 1).await?;
        Ok(match mapping.kind {
            ClusterKind::ZeroPlain | ClusterKind::ZeroAlloc { .. } => true,
            ClusterKind::Unallocated => self.backing_is_absent(cluster_start),
            _ => false,
        })
    }

    async fn write_zero_buffers(&self, offset: u64, len: u64) -> BlockResult<()> {
        let zeroes = IoBuf::zeroed(len.min(MAX_ZERO_BUFFER) as usize);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_ZERO_BUFFER);
            self.write_at(
                offset + done,
                &zeroes.slice(0..n as usize),
                WriteFlags::default(),
            )
            .await?;
            done += n;
        }
        Ok(())
    }

    /// Discards whole clusters of the range (partial ones are left alone,
    /// as QEMU does): they read as zeroes in version 3, and fall through to
    /// the backing image in version 2.
    pub(super) async fn discard_range(&self, offset: u64, len: u64) -> BlockResult<()> {
        if len == 0 {
            return Ok(());
        }
        self.check_writable()?;
        let cs = self.geo().cluster_size();
        let (body, _) = split_clusters(offset, offset + len, cs, self.virtual_size());
        let Some((first, count)) = body else {
            return Ok(());
        };
        self.mark_dirty().await?;
        let v3 = self.geo().version >= 3;
        let has_backing = self.backing.load().is_some();
        let keep = self.tunables().discard_no_unref;
        self.rewrite_entries(first, count, |kind| {
            discard_change(kind, v3, has_backing, keep)
        })
        .await?;
        self.writeback_if_wanted().await
    }

    /// QEMU's full discard: guest clusters `[first, first + count)`
    /// become unallocated and their host clusters are freed, whatever
    /// the version or the backing file.
    pub(super) async fn empty_clusters(&self, first: u64, count: u64) -> BlockResult<()> {
        self.rewrite_entries(first, count, |kind| match kind {
            ClusterKind::Unallocated => None,
            _ => Some(Change::replace(0, true)),
        })
        .await
    }

    /// Applies `decide` to the entries of guest clusters
    /// `[first, first + count)` under an exclusive lock. Freed clusters
    /// are discarded in the file with `pass-discard-request`.
    async fn rewrite_entries(
        &self,
        first: u64,
        count: u64,
        decide: impl Fn(ClusterKind) -> Option<Change>,
    ) -> BlockResult<()> {
        let discard = self.tunables().pass_discard_request;
        let cs = self.geo().cluster_size();
        let geo = *self.geo();
        let _lock = self.clusters.lock(first, first + count, true).await;
        let mut cluster = first;
        while cluster < first + count {
            let entries = self.l2_entries(cluster, first + count - cluster).await?;
            let mut changes = Vec::new();
            for (i, &entry) in entries.iter().enumerate() {
                let kind = self.decode(entry, cluster + i as u64)?;
                if let Some(change) = decide(kind) {
                    changes.push((i, change, kind));
                }
            }
            if !changes.is_empty() {
                let table = self.l2_for_write((cluster >> geo.l2_bits) as usize).await?;
                let index = geo.l2_index(cluster << geo.cluster_bits);
                let mut freed = Vec::new();
                let mut kept = Vec::new();
                {
                    let mut t = table.lock();
                    for (i, change, kind) in &changes {
                        set_entry(&mut t.bytes, index + i, change.entry);
                        if change.free_old {
                            freed.extend(geo.host_clusters(*kind));
                        }
                        if change.discard_kept && discard {
                            kept.extend(kind.host_cluster());
                        }
                    }
                    t.dirty = true;
                }
                if !freed.is_empty() {
                    let mut refs = self.refs.lock().await;
                    for (host, n) in freed {
                        refs.schedule_free(host, n, discard);
                    }
                }
                for host in kept {
                    // The entry now says zero whatever the file holds.
                    self.check_overlap(host, cs).await?;
                    self.file.discard(host, cs).await?;
                }
            }
            cluster += entries.len() as u64;
        }
        Ok(())
    }
}

/// Whole clusters (first index, count) and partial pieces (byte ranges).
type Split = (Option<(u64, u64)>, Vec<(u64, u64)>);

/// Splits `[offset, end)` into whole clusters and partial pieces. A
/// partial cluster at the end of the image counts as whole.
fn split_clusters(offset: u64, end: u64, cs: u64, image_size: u64) -> Split {
    let first_full = offset.div_ceil(cs);
    let end_full = if end.is_multiple_of(cs) || end >= image_size {
        end.div_ceil(cs)
    } else {
        end / cs
    };
    let mut pieces = Vec::new();
    if first_full >= end_full {
        // No whole cluster: the range is one piece, or two around a
        // cluster boundary.
        let boundary = first_full * cs;
        if !offset.is_multiple_of(cs) && boundary < end {
            pieces.push((offset, boundary));
            pieces.push((boundary, end));
        } else {
            pieces.push((offset, end));
        }
        return (None, pieces);
    }
    if !offset.is_multiple_of(cs) {
        pieces.push((offset, first_full * cs));
    }
    if end_full * cs < end {
        pieces.push((end_full * cs, end));
    }
    (Some((first_full, end_full - first_full)), pieces)
}

/// QEMU's `zero_in_l2_slice`; `keep` is `discard-no-unref`.
fn zero_change(kind: ClusterKind, unmap: bool, keep: bool) -> Option<Change> {
    match kind {
        ClusterKind::ZeroPlain => None,
        ClusterKind::ZeroAlloc { .. } if !unmap || keep => None,
        ClusterKind::Compressed { .. } => Some(Change::replace(OFLAG_ZERO, true)),
        ClusterKind::Normal { host, copied } if keep || !unmap => {
            Some(Change::keep_as_zero(host, copied, unmap))
        }
        ClusterKind::Normal { .. } | ClusterKind::ZeroAlloc { .. } => {
            Some(Change::replace(OFLAG_ZERO, true))
        }
        ClusterKind::Unallocated => Some(Change::replace(OFLAG_ZERO, false)),
    }
}

/// QEMU's `discard_in_l2_slice` without `full_discard`; `keep` is
/// `discard-no-unref` (version 3 only).
fn discard_change(kind: ClusterKind, v3: bool, has_backing: bool, keep: bool) -> Option<Change> {
    let entry = if v3 { OFLAG_ZERO } else { 0 };
    match kind {
        ClusterKind::ZeroPlain => None,
        ClusterKind::Unallocated if !has_backing || !v3 => None,
        ClusterKind::Unallocated => Some(Change::replace(entry, false)),
        ClusterKind::Normal { host, copied } | ClusterKind::ZeroAlloc { host, copied } if keep => {
            Some(Change::keep_as_zero(host, copied, true))
        }
        _ => Some(Change::replace(entry, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_into_whole_clusters_and_pieces() {
        let cs = 65536;
        let size = 10 * cs;
        assert_eq!(split_clusters(0, 2 * cs, cs, size), (Some((0, 2)), vec![]));
        assert_eq!(
            split_clusters(100, 3 * cs + 5, cs, size),
            (Some((1, 2)), vec![(100, cs), (3 * cs, 3 * cs + 5)])
        );
        assert_eq!(split_clusters(100, 200, cs, size), (None, vec![(100, 200)]));
        assert_eq!(
            split_clusters(cs - 10, cs + 10, cs, size),
            (None, vec![(cs - 10, cs), (cs, cs + 10)])
        );
        // The last, partial cluster of an image counts as whole.
        assert_eq!(
            split_clusters(cs, cs + 100, cs, cs + 100),
            (Some((1, 1)), vec![])
        );
    }

    #[test]
    fn zeroing_keeps_or_drops_allocations_as_qemu_does() {
        let normal = ClusterKind::Normal {
            host: 0x30000,
            copied: true,
        };
        let kept = 0x30000 | OFLAG_ZERO | OFLAG_COPIED;
        assert_eq!(zero_change(normal, false, false).unwrap().entry, kept);
        assert!(zero_change(normal, true, false).unwrap().free_old);
        assert!(zero_change(ClusterKind::ZeroPlain, true, false).is_none());
        assert!(discard_change(ClusterKind::Unallocated, true, false, false).is_none());
        let under_backing = discard_change(ClusterKind::Unallocated, true, true, false);
        assert_eq!(under_backing.unwrap().entry, OFLAG_ZERO);
        assert_eq!(discard_change(normal, false, true, false).unwrap().entry, 0);
        // discard-no-unref keeps the host cluster and discards its data.
        let no_unref = discard_change(normal, true, false, true).unwrap();
        assert_eq!(
            (no_unref.entry, no_unref.free_old, no_unref.discard_kept),
            (kept, false, true)
        );
        assert_eq!(zero_change(normal, true, true).unwrap().entry, kept);
    }
}

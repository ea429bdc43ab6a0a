//! Internal snapshots (QEMU's `qcow2_snapshot_create` and
//! `qcow2_snapshot_delete`): the snapshot table's format, and taking and
//! deleting a snapshot of the active L1 table.
//!
//! A snapshot is a copy of the L1 table whose L2 tables and clusters it
//! shares with the active image: taking one adds one to the refcount of
//! everything the active L1 reaches and clears their `COPIED` flags, so
//! that the next write to them allocates anew (the write path's
//! copy-on-write); deleting one takes the references away and sets
//! `COPIED` again where the active image is the last holder. Each step is
//! durable before the header names the new table, so a kill in between
//! leaves at worst refcounts too high (leaked clusters), never a cluster
//! in use with a refcount too low. The node is drained by the caller.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schema::info::SnapshotInfo;

use super::cache::Table;
use super::flat_table::FlatTable;
use super::header::{MAX_SNAPSHOTS, SNAPSHOT_HEADER_SIZE};
use super::layout::{get_entry, set_entry, ClusterKind, L1E_OFFSET_MASK, OFLAG_COPIED};
use super::{BlockChild, Qcow2};
use crate::error::{BlockError, BlockResult, ErrorKind};

/// The fixed part of a table entry.
const FIXED_LEN: usize = SNAPSHOT_HEADER_SIZE as usize;
/// QEMU's limit on an entry's extra data.
const MAX_EXTRA: usize = 1024;
/// The extra data QEMU writes: large VM state size, disk size, icount.
const EXTRA_LEN: usize = 24;
/// icount of a snapshot without one.
const NO_ICOUNT: u64 = u64::MAX;

/// One entry of the snapshot table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub l1_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    pub disk_size: u64,
    pub icount: u64,
}

impl Snapshot {
    /// As `query-named-block-nodes` and the delete command show it.
    pub fn info(&self) -> SnapshotInfo {
        let clock = i64::try_from(self.vm_clock_nsec).unwrap_or(i64::MAX);
        SnapshotInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            vm_state_size: i64::try_from(self.vm_state_size).unwrap_or(i64::MAX),
            date_sec: i64::from(self.date_sec),
            date_nsec: i64::from(self.date_nsec),
            vm_clock_sec: clock / 1_000_000_000,
            vm_clock_nsec: clock % 1_000_000_000,
            icount: (self.icount != NO_ICOUNT).then(|| i64::try_from(self.icount).unwrap_or(-1)),
        }
    }
}

fn corrupt(message: &str) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

fn be16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    get_entry(&bytes[at..], 0)
}

/// The snapshot table the header names.
#[derive(Debug, Default)]
pub(super) struct SnapshotTable {
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    pub snapshots: Vec<Snapshot>,
}

/// The length of the entry whose fixed part is `fixed` (padded to 8).
fn entry_len(fixed: &[u8]) -> BlockResult<usize> {
    let extra_len = be32(fixed, 36) as usize;
    if extra_len > MAX_EXTRA {
        return Err(corrupt("Too much extra metadata in snapshot table entry"));
    }
    Ok((FIXED_LEN + extra_len + be16(fixed, 12) + be16(fixed, 14)).div_ceil(8) * 8)
}

/// Reads the table of `count` entries at `offset` in `file`, an entry at
/// a time (its length is in its fixed part).
pub(super) async fn read_table(
    file: &dyn BlockChild,
    offset: u64,
    count: u32,
) -> BlockResult<SnapshotTable> {
    let mut bytes = Vec::new();
    let mut window = ReadWindow::default();
    for _ in 0..count {
        let at = offset + bytes.len() as u64;
        let fixed = window.get(file, at, FIXED_LEN).await?;
        let len = entry_len(fixed)?;
        bytes.extend_from_slice(window.get(file, at, len).await?);
    }
    let (snapshots, len) = parse_table(&bytes, count)?;
    Ok(SnapshotTable {
        offset,
        len: len as u64,
        snapshots,
    })
}

/// Reads a table of unknown length from the file in pieces of
/// [`ReadWindow::CHUNK`], not an entry at a time (a table may hold tens of
/// thousands of entries).
#[derive(Default)]
struct ReadWindow {
    at: u64,
    bytes: Vec<u8>,
}

impl ReadWindow {
    const CHUNK: usize = 64 << 10;

    /// The `len` bytes at `at`; a chunk from `at` is read unless the
    /// window holds them (the file reads as zeroes past its end, as for
    /// an exact read).
    async fn get(&mut self, file: &dyn BlockChild, at: u64, len: usize) -> BlockResult<&[u8]> {
        let end = at + len as u64;
        let held = at >= self.at && end <= self.at + self.bytes.len() as u64;
        if !held {
            self.bytes = file.read_vec(at, len.max(Self::CHUNK)).await?;
            self.at = at;
        }
        let start = (at - self.at) as usize;
        Ok(&self.bytes[start..start + len])
    }
}

/// Parses `count` entries from `table`; returns them and the bytes they
/// take. Text that is not UTF-8 is kept lossily (it is only shown).
pub(super) fn parse_table(table: &[u8], count: u32) -> BlockResult<(Vec<Snapshot>, usize)> {
    let mut at = 0;
    let mut snapshots = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let fixed = table
            .get(at..at + FIXED_LEN)
            .ok_or_else(|| corrupt("Snapshot table is truncated"))?;
        let id_len = be16(fixed, 12);
        let name_len = be16(fixed, 14);
        let end = at + entry_len(fixed)?;
        let extra_at = at + FIXED_LEN;
        let id_at = extra_at + be32(fixed, 36) as usize;
        let name_at = id_at + id_len;
        if end > table.len() {
            return Err(corrupt("Snapshot table is truncated"));
        }
        let extra = &table[extra_at..id_at];
        let extra_u64 = |i: usize| (extra.len() >= (i + 1) * 8).then(|| be64(extra, i * 8));
        snapshots.push(Snapshot {
            l1_offset: be64(fixed, 0),
            l1_size: be32(fixed, 8),
            id: String::from_utf8_lossy(&table[id_at..name_at]).into_owned(),
            name: String::from_utf8_lossy(&table[name_at..name_at + name_len]).into_owned(),
            date_sec: be32(fixed, 16),
            date_nsec: be32(fixed, 20),
            vm_clock_nsec: be64(fixed, 24),
            vm_state_size: extra_u64(0).unwrap_or(u64::from(be32(fixed, 32))),
            disk_size: extra_u64(1).unwrap_or(0),
            icount: extra_u64(2).unwrap_or(NO_ICOUNT),
        });
        at = end;
    }
    Ok((snapshots, at))
}

/// The table as QEMU writes it: each entry with 24 bytes of extra data,
/// padded to 8 bytes.
pub(super) fn encode_table(snapshots: &[Snapshot]) -> Vec<u8> {
    let mut table = Vec::new();
    for snapshot in snapshots {
        table.extend_from_slice(&snapshot.l1_offset.to_be_bytes());
        table.extend_from_slice(&snapshot.l1_size.to_be_bytes());
        table.extend_from_slice(&(snapshot.id.len() as u16).to_be_bytes());
        table.extend_from_slice(&(snapshot.name.len() as u16).to_be_bytes());
        table.extend_from_slice(&snapshot.date_sec.to_be_bytes());
        table.extend_from_slice(&snapshot.date_nsec.to_be_bytes());
        table.extend_from_slice(&snapshot.vm_clock_nsec.to_be_bytes());
        let small_state = u32::try_from(snapshot.vm_state_size).unwrap_or(0);
        table.extend_from_slice(&small_state.to_be_bytes());
        table.extend_from_slice(&(EXTRA_LEN as u32).to_be_bytes());
        table.extend_from_slice(&snapshot.vm_state_size.to_be_bytes());
        table.extend_from_slice(&snapshot.disk_size.to_be_bytes());
        table.extend_from_slice(&snapshot.icount.to_be_bytes());
        table.extend_from_slice(snapshot.id.as_bytes());
        table.extend_from_slice(snapshot.name.as_bytes());
        table.resize(table.len().div_ceil(8) * 8, 0);
    }
    table
}

impl Qcow2 {
    /// The snapshots, as read at open and kept since.
    pub(super) fn snapshot_list(&self) -> Vec<Snapshot> {
        self.snapshot_table.load().snapshots.clone()
    }

    /// The L1 table of `snapshot`, as on disk.
    pub(super) async fn snapshot_l1(&self, snapshot: &Snapshot) -> BlockResult<Vec<u64>> {
        // What the table says is checked before anything is read: a
        // damaged entry must not size a buffer.
        super::header::validate_table(
            snapshot.l1_offset,
            u64::from(snapshot.l1_size),
            8,
            super::header::MAX_L1_BYTES,
            self.geo().cluster_size(),
            "Snapshot L1 table",
        )?;
        let bytes = self
            .file
            .read_vec(snapshot.l1_offset, snapshot.l1_size as usize * 8)
            .await?;
        Ok((0..snapshot.l1_size as usize)
            .map(|i| get_entry(&bytes, i))
            .collect())
    }

    /// Reads the image as snapshot `id`/`name` was, from now on (QEMU's
    /// `qcow2_snapshot_load_tmp`, for qemu-nbd's `--load-snapshot`): the
    /// snapshot's L1 table takes the active one's place; the image must
    /// be read-only, and its size stays.
    pub(super) async fn load_snapshot_tmp(
        &self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> BlockResult<()> {
        if self.writable() {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "load snapshot is only supported in read only mode",
            ));
        }
        let snapshot = self
            .snapshot_list()
            .into_iter()
            .find(|s| id.is_none_or(|id| s.id == id) && name.is_none_or(|name| s.name == name))
            .ok_or_else(|| BlockError::new(ErrorKind::InvalidArgument, "Can't find snapshot"))?;
        let entries = self.snapshot_l1(&snapshot).await?;
        let cs = self.geo().cluster_size();
        *self.l1_mut() = FlatTable::from_entries(snapshot.l1_offset, entries, cs, L1E_OFFSET_MASK);
        self.l2_cache.clear();
        Ok(())
    }

    /// Takes snapshot `name` of the active image.
    pub(super) async fn create_snapshot(&self, name: &str) -> BlockResult<()> {
        self.check_writable()?;
        let mut snapshots = self.snapshot_list();
        if snapshots.len() as u64 >= MAX_SNAPSHOTS {
            return Err(BlockError::new(ErrorKind::TooLarge, "Too many snapshots"));
        }
        let _serial = self.l2_alloc.lock().await;
        self.writeback().await?;
        // Everything the active L1 reaches gains the snapshot's reference.
        self.share_active_tables().await?;
        self.writeback().await?;
        let (l1_entries, cs) = (self.l1().entries().to_vec(), self.geo().cluster_size());
        let l1_bytes_len = (l1_entries.len() as u64 * 8).div_ceil(cs) * cs;
        let l1_copy = self.alloc_clusters(l1_bytes_len.div_ceil(cs)).await?;
        let bytes = FlatTable::encode(&l1_entries, l1_bytes_len as usize);
        self.file.write_slice(l1_copy.offset, &bytes).await?;
        // Microseconds, as QEMU's clocks give them.
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let since_epoch = Duration::from_micros(since_epoch.as_micros() as u64);
        let next_id = snapshots
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        snapshots.push(Snapshot {
            l1_offset: l1_copy.offset,
            l1_size: l1_entries.len() as u32,
            id: next_id.to_string(),
            name: name.to_owned(),
            date_sec: since_epoch.as_secs() as u32,
            date_nsec: since_epoch.subsec_nanos(),
            // QSD's virtual clock is the host's.
            vm_clock_nsec: since_epoch.as_nanos() as u64,
            vm_state_size: 0,
            disk_size: self.virtual_size(),
            icount: NO_ICOUNT,
        });
        self.write_snapshot_table(snapshots).await
    }

    /// Deletes the snapshot with `id` and/or `name` (both must match when
    /// both are given); returns it.
    pub(super) async fn delete_snapshot(
        &self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> BlockResult<Snapshot> {
        self.check_writable()?;
        let mut snapshots = self.snapshot_list();
        let index = snapshots
            .iter()
            .position(|s| id.is_none_or(|id| s.id == id) && name.is_none_or(|name| s.name == name))
            .ok_or_else(|| BlockError::new(ErrorKind::InvalidArgument, "snapshot not found"))?;
        let _serial = self.l2_alloc.lock().await;
        let removed = snapshots.remove(index);
        // The table without it first: then its references may go.
        self.write_snapshot_table(snapshots).await?;
        let entries = self.snapshot_l1(&removed).await?;
        self.release_tables(&entries).await?;
        let cs = self.geo().cluster_size();
        let l1_clusters = (u64::from(removed.l1_size) * 8).div_ceil(cs);
        if removed.l1_offset != 0 && l1_clusters > 0 {
            self.refs.lock().await.schedule_free(
                self.geo().cluster_index(removed.l1_offset),
                l1_clusters,
                self.tunables().pass_discard_snapshot,
            );
        }
        self.writeback().await?;
        self.restore_copied_flags().await?;
        self.writeback().await?;
        Ok(removed)
    }

    /// Writes `snapshots` as a new table, points the header to it, and
    /// frees the old one.
    async fn write_snapshot_table(&self, snapshots: Vec<Snapshot>) -> BlockResult<()> {
        let cs = self.geo().cluster_size();
        let table = encode_table(&snapshots);
        let new_offset = if table.is_empty() {
            0
        } else {
            let clusters = (table.len() as u64).div_ceil(cs);
            let allocation = self.alloc_clusters(clusters).await?;
            let mut padded = table.clone();
            padded.resize((clusters * cs) as usize, 0);
            self.file.write_slice(allocation.offset, &padded).await?;
            allocation.offset
        };
        // The table and the refcounts of its clusters are durable before
        // the header names it.
        self.writeback().await?;
        self.header
            .update(|h| {
                h.snapshots_offset = new_offset;
                h.nb_snapshots = snapshots.len() as u32;
            })
            .await?;
        let old = self.snapshot_table.swap(Arc::new(SnapshotTable {
            offset: new_offset,
            len: table.len() as u64,
            snapshots,
        }));
        if old.offset != 0 && old.len > 0 {
            self.refs.lock().await.schedule_free(
                self.geo().cluster_index(old.offset),
                old.len.div_ceil(cs),
                self.tunables().pass_discard_snapshot,
            );
        }
        Ok(())
    }

    /// Adds a reference to every L2 table and cluster the active L1
    /// reaches, and clears their `COPIED` flags.
    async fn share_active_tables(&self) -> BlockResult<()> {
        let l1_len = self.l1().len();
        for index in 0..l1_len {
            let l2_offset = self.l1().get(index) & L1E_OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let l2_cluster = self.geo().cluster_index(l2_offset);
            self.refs.lock().await.update(l2_cluster, true).await?;
            self.l1_mut().set(index, l2_offset);
            self.change_l2_entries(index, l2_offset, true).await?;
        }
        Ok(())
    }

    /// Takes a deleted snapshot's references: one from each L2 table its
    /// L1 `entries` name and one from each cluster those tables name, as
    /// taking it added them.
    async fn release_tables(&self, entries: &[u64]) -> BlockResult<()> {
        for (index, &entry) in entries.iter().enumerate() {
            let l2_offset = entry & L1E_OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            self.change_l2_entries(index, l2_offset, false).await?;
            let l2_cluster = self.geo().cluster_index(l2_offset);
            self.refs.lock().await.schedule_free(
                l2_cluster,
                1,
                self.tunables().pass_discard_snapshot,
            );
        }
        Ok(())
    }

    /// Adds (`share`) a reference to each cluster of the L2 table at
    /// `l2_offset` (L1 entry `index`) and clears its `COPIED` flags, or
    /// takes one away.
    async fn change_l2_entries(
        &self,
        index: usize,
        l2_offset: u64,
        share: bool,
    ) -> BlockResult<()> {
        let geo = *self.geo();
        let (table, entries) = self.l2_table_entries(index, l2_offset).await?;
        for &(_, kind) in &entries {
            let Some((host, count)) = geo.host_clusters(kind) else {
                continue;
            };
            if share {
                let mut refs = self.refs.lock().await;
                for cluster in host..host + count {
                    refs.update(cluster, true).await?;
                }
            } else {
                self.refs.lock().await.schedule_free(
                    host,
                    count,
                    self.tunables().pass_discard_snapshot,
                );
            }
        }
        if share {
            let mut t = table.lock();
            for i in 0..geo.l2_entries() as usize {
                let entry = get_entry(&t.bytes, i);
                if entry & OFLAG_COPIED != 0 {
                    set_entry(&mut t.bytes, i, entry & !OFLAG_COPIED);
                    t.dirty = true;
                }
            }
        }
        Ok(())
    }

    /// The L2 table at `l2_offset` (L1 entry `index`) and each of its
    /// entries with what it says.
    async fn l2_table_entries(
        &self,
        index: usize,
        l2_offset: u64,
    ) -> BlockResult<(Arc<Table>, Vec<(u64, ClusterKind)>)> {
        let geo = *self.geo();
        let table = self.load_l2(l2_offset).await?;
        let entries: Vec<u64> = {
            let t = table.lock();
            (0..geo.l2_entries() as usize)
                .map(|i| get_entry(&t.bytes, i))
                .collect()
        };
        let first_cluster = (index as u64) << geo.l2_bits;
        let kinds = entries
            .iter()
            .enumerate()
            .map(|(i, &entry)| Ok((entry, self.decode(entry, first_cluster + i as u64)?)))
            .collect::<BlockResult<Vec<_>>>()?;
        Ok((table, kinds))
    }

    /// Sets `COPIED` again on the active image's L2 tables and clusters
    /// whose refcount is back to one (QEMU's refcount update with 0).
    async fn restore_copied_flags(&self) -> BlockResult<()> {
        let geo = *self.geo();
        let l1_len = self.l1().len();
        for index in 0..l1_len {
            let l2_offset = self.l1().get(index) & L1E_OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let sole = self
                .refs
                .lock()
                .await
                .get(geo.cluster_index(l2_offset))
                .await?
                == 1;
            self.l1_mut().set(
                index,
                if sole {
                    l2_offset | OFLAG_COPIED
                } else {
                    l2_offset
                },
            );
            if !sole {
                continue;
            }
            let (table, entries) = self.l2_table_entries(index, l2_offset).await?;
            for (i, &(entry, kind)) in entries.iter().enumerate() {
                let copied = match kind {
                    ClusterKind::Normal { host, .. } | ClusterKind::ZeroAlloc { host, .. } => {
                        self.refs.lock().await.get(geo.cluster_index(host)).await? == 1
                    }
                    _ => continue,
                };
                let wanted = if copied {
                    entry | OFLAG_COPIED
                } else {
                    entry & !OFLAG_COPIED
                };
                if wanted != entry {
                    let mut t = table.lock();
                    set_entry(&mut t.bytes, i, wanted);
                    t.dirty = true;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_back_what_it_wrote() {
        let snapshots = vec![
            Snapshot {
                l1_offset: 0x30000,
                l1_size: 1,
                id: "1".into(),
                name: "first".into(),
                date_sec: 7,
                date_nsec: 8,
                vm_clock_nsec: 9_000_000_001,
                vm_state_size: 0,
                disk_size: 1 << 20,
                icount: NO_ICOUNT,
            },
            Snapshot {
                l1_offset: 0x50000,
                l1_size: 2,
                id: "12".into(),
                name: "second one".into(),
                date_sec: 1,
                date_nsec: 2,
                vm_clock_nsec: 3,
                vm_state_size: 5,
                disk_size: 2 << 20,
                icount: 4,
            },
        ];
        let table = encode_table(&snapshots);
        assert_eq!(table.len() % 8, 0);
        assert_eq!(
            parse_table(&table, 2).unwrap(),
            (snapshots.clone(), table.len())
        );
        let info = snapshots[0].info();
        assert_eq!(
            (info.vm_clock_sec, info.vm_clock_nsec, info.icount),
            (9, 1, None)
        );
        assert!(parse_table(&table[..table.len() - 8], 2).is_err());
    }
}

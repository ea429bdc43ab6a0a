//! QEMU's metadata overlap checks (`overlap-check`): before guest data
//! goes to a host range of the image, the range is checked against the
//! metadata the mode covers. A damaged L2 entry that points at the
//! refcount table or at an L1 table must not turn a guest write into a
//! metadata write: such a write is refused with an I/O error and the
//! image is marked corrupt (`Preventing invalid write on metadata`).
//!
//! The modes are QEMU's: `none`; `constant`, the structures whose check
//! costs the same whatever the image's size (the header, the active L1
//! table, the refcount table, the snapshot table); `cached`, the default,
//! also the active L2 tables and the refcount blocks, found from the L1
//! and refcount tables held in memory. `all` adds, in QEMU, the snapshots'
//! L1 and L2 tables, which would mean reading every snapshot's tables
//! from the file for each write; here it checks what `cached` checks.

use schema::block::{Qcow2OverlapCheckFlags, Qcow2OverlapCheckMode, Qcow2OverlapChecks};

use super::layout::corrupt;
use super::Qcow2;
use crate::error::BlockResult;

/// Which metadata structures are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlapChecks(u8);

impl OverlapChecks {
    pub const MAIN_HEADER: OverlapChecks = OverlapChecks(1);
    pub const ACTIVE_L1: OverlapChecks = OverlapChecks(1 << 1);
    pub const ACTIVE_L2: OverlapChecks = OverlapChecks(1 << 2);
    pub const REFCOUNT_TABLE: OverlapChecks = OverlapChecks(1 << 3);
    pub const REFCOUNT_BLOCK: OverlapChecks = OverlapChecks(1 << 4);
    pub const SNAPSHOT_TABLE: OverlapChecks = OverlapChecks(1 << 5);

    pub const NONE: OverlapChecks = OverlapChecks(0);
    pub const CONSTANT: OverlapChecks = OverlapChecks(
        Self::MAIN_HEADER.0 | Self::ACTIVE_L1.0 | Self::REFCOUNT_TABLE.0 | Self::SNAPSHOT_TABLE.0,
    );
    pub const CACHED: OverlapChecks =
        OverlapChecks(Self::CONSTANT.0 | Self::ACTIVE_L2.0 | Self::REFCOUNT_BLOCK.0);

    fn contains(self, other: OverlapChecks) -> bool {
        self.0 & other.0 == other.0
    }

    fn with(self, other: OverlapChecks, on: Option<bool>) -> OverlapChecks {
        match on {
            Some(true) => OverlapChecks(self.0 | other.0),
            Some(false) => OverlapChecks(self.0 & !other.0),
            None => self,
        }
    }
}

impl Default for OverlapChecks {
    /// QEMU's default mode, `cached`.
    fn default() -> Self {
        OverlapChecks::CACHED
    }
}

impl From<Qcow2OverlapCheckMode> for OverlapChecks {
    fn from(mode: Qcow2OverlapCheckMode) -> Self {
        match mode {
            Qcow2OverlapCheckMode::None => OverlapChecks::NONE,
            Qcow2OverlapCheckMode::Constant => OverlapChecks::CONSTANT,
            Qcow2OverlapCheckMode::Cached | Qcow2OverlapCheckMode::All => OverlapChecks::CACHED,
        }
    }
}

impl Qcow2 {
    /// Refuses (as corruption) a write of guest data to the host range
    /// `[offset, offset + len)` if it overlaps checked metadata.
    pub(super) async fn check_overlap(&self, offset: u64, len: u64) -> BlockResult<()> {
        let checks = self.tunables().overlap_checks;
        if checks == OverlapChecks::NONE || len == 0 {
            return Ok(());
        }
        let cs = self.geo().cluster_size();
        let end = offset.saturating_add(len);
        let hits = |start: u64, bytes: u64| bytes > 0 && offset < start + bytes && start < end;
        let clusters = |bytes: u64| bytes.div_ceil(cs) * cs;
        let mut hit = None;
        if checks.contains(OverlapChecks::MAIN_HEADER) && hits(0, cs) {
            hit = Some("qcow2_header");
        }
        if checks.contains(OverlapChecks::SNAPSHOT_TABLE) {
            let table = self.snapshot_table.load();
            if hits(table.offset, clusters(table.len)) {
                hit = hit.or(Some("snapshot table"));
            }
        }
        {
            let l1 = self.l1();
            if checks.contains(OverlapChecks::ACTIVE_L1)
                && hits(l1.offset(), clusters(l1.len() as u64 * 8))
            {
                hit = hit.or(Some("active L1 table"));
            }
            if checks.contains(OverlapChecks::ACTIVE_L2) && l1.points_into(offset, end, cs) {
                hit = hit.or(Some("active L2 table"));
            }
        }
        if checks.contains(OverlapChecks::REFCOUNT_TABLE)
            || checks.contains(OverlapChecks::REFCOUNT_BLOCK)
        {
            let refs = self.refs.lock().await;
            let (table, table_clusters) = refs.table_location();
            if checks.contains(OverlapChecks::REFCOUNT_TABLE) && hits(table, table_clusters * cs) {
                hit = hit.or(Some("refcount table"));
            }
            if checks.contains(OverlapChecks::REFCOUNT_BLOCK) && refs.block_overlaps(offset, end) {
                hit = hit.or(Some("refcount block"));
            }
        }
        match hit {
            Some(what) => {
                let message =
                    format!("Preventing invalid write on metadata (overlaps with {what})");
                Err(self
                    .signal_corruption(corrupt(message), Some((offset, len)))
                    .await)
            }
            None => Ok(()),
        }
    }
}

impl From<Qcow2OverlapChecks> for OverlapChecks {
    /// A mode, or a template (QEMU's default `cached`) with structures
    /// turned on or off; those storaged does not check (inactive L1 and L2
    /// tables, the bitmap directory) change nothing.
    fn from(checks: Qcow2OverlapChecks) -> Self {
        match checks {
            Qcow2OverlapChecks::Mode(mode) => mode.into(),
            Qcow2OverlapChecks::Flags(flags) => {
                let Qcow2OverlapCheckFlags {
                    template,
                    main_header,
                    active_l1,
                    active_l2,
                    refcount_table,
                    refcount_block,
                    snapshot_table,
                    ..
                } = flags;
                template
                    .map_or_else(OverlapChecks::default, OverlapChecks::from)
                    .with(OverlapChecks::MAIN_HEADER, main_header)
                    .with(OverlapChecks::ACTIVE_L1, active_l1)
                    .with(OverlapChecks::ACTIVE_L2, active_l2)
                    .with(OverlapChecks::REFCOUNT_TABLE, refcount_table)
                    .with(OverlapChecks::REFCOUNT_BLOCK, refcount_block)
                    .with(OverlapChecks::SNAPSHOT_TABLE, snapshot_table)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_cover_what_qemu_covers() {
        assert_eq!(
            OverlapChecks::from(Qcow2OverlapCheckMode::None),
            OverlapChecks::NONE
        );
        let constant = OverlapChecks::from(Qcow2OverlapCheckMode::Constant);
        assert!(constant.contains(OverlapChecks::REFCOUNT_TABLE));
        assert!(!constant.contains(OverlapChecks::ACTIVE_L2));
        let cached = OverlapChecks::from(Qcow2OverlapCheckMode::Cached);
        assert!(cached.contains(constant) && cached.contains(OverlapChecks::REFCOUNT_BLOCK));
        assert_eq!(OverlapChecks::default(), cached);
        let only_reftable =
            OverlapChecks::from(Qcow2OverlapChecks::Flags(Qcow2OverlapCheckFlags {
                template: Some(Qcow2OverlapCheckMode::None),
                refcount_table: Some(true),
                ..Default::default()
            }));
        assert_eq!(only_reftable, OverlapChecks::REFCOUNT_TABLE);
        let no_l2 = OverlapChecks::from(Qcow2OverlapChecks::Flags(Qcow2OverlapCheckFlags {
            active_l2: Some(false),
            ..Default::default()
        }));
        assert!(
            !no_l2.contains(OverlapChecks::ACTIVE_L2) && no_l2.contains(OverlapChecks::CONSTANT)
        );
    }
}

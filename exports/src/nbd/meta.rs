//! Metadata contexts: which ones an export offers, how client queries
//! select them, and the ids they get.
//!
//! Query syntax (NBD spec for `base:`, QEMU's `docs/interop/nbd.rst` for
//! `qemu:`): exact names select; `base:`, `qemu:` and `qemu:dirty-bitmap:`
//! are wildcards when listing and select nothing when setting; queries in
//! unknown namespaces are ignored.

use std::sync::Arc;

pub const BASE_ALLOCATION: &str = "base:allocation";
pub const ALLOCATION_DEPTH: &str = "qemu:allocation-depth";
const BASE_NAMESPACE: &str = "base:";
const QEMU_NAMESPACE: &str = "qemu:";
const DIRTY_BITMAP_PREFIX: &str = "dirty-bitmap:";

/// A dirty bitmap an export publishes as `qemu:dirty-bitmap:NAME`.
pub trait ExportedBitmap: Send + Sync + 'static {
    /// The bitmap's name as clients see it.
    fn name(&self) -> &str;

    /// Whether the byte at `offset` is dirty, and for how many bytes
    /// (between 1 and `len`) that stays the same.
    fn extent(&self, offset: u64, len: u64) -> (bool, u64);
}

/// The metadata an export offers beyond `base:allocation`.
#[derive(Clone, Default)]
pub struct ExportMeta {
    pub allocation_depth: bool,
    pub bitmaps: Vec<Arc<dyn ExportedBitmap>>,
}

/// One metadata context of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaContext {
    BaseAllocation,
    AllocationDepth,
    /// Index into the export's bitmaps.
    DirtyBitmap(usize),
}

impl MetaContext {
    /// The id a `NBD_OPT_SET_META_CONTEXT` reply assigns (stable per export).
    pub fn id(self) -> u32 {
        match self {
            MetaContext::BaseAllocation => 0,
            MetaContext::AllocationDepth => 1,
            MetaContext::DirtyBitmap(index) => 2 + index as u32,
        }
    }

    pub fn name(self, meta: &ExportMeta) -> String {
        match self {
            MetaContext::BaseAllocation => BASE_ALLOCATION.to_string(),
            MetaContext::AllocationDepth => ALLOCATION_DEPTH.to_string(),
            MetaContext::DirtyBitmap(index) => {
                format!(
                    "{QEMU_NAMESPACE}{DIRTY_BITMAP_PREFIX}{}",
                    meta.bitmaps[index].name()
                )
            }
        }
    }
}

/// Whether queries are listing what exists or choosing what to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryUse {
    List,
    Set,
}

/// The contexts that a set of queries matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextSet {
    base_allocation: bool,
    allocation_depth: bool,
    bitmaps: Vec<bool>,
}

impl ContextSet {
    pub fn new(meta: &ExportMeta) -> ContextSet {
        ContextSet {
            bitmaps: vec![false; meta.bitmaps.len()],
            ..ContextSet::default()
        }
    }

    /// Every context the export offers (a list without queries).
    pub fn all(meta: &ExportMeta) -> ContextSet {
        ContextSet {
            base_allocation: true,
            allocation_depth: meta.allocation_depth,
            bitmaps: vec![true; meta.bitmaps.len()],
        }
    }

    /// Adds what `query` matches.
    pub fn add_query(&mut self, meta: &ExportMeta, query: &str, usage: QueryUse) {
        let listing = usage == QueryUse::List;
        if let Some(leaf) = query.strip_prefix(BASE_NAMESPACE) {
            if leaf == "allocation" || (leaf.is_empty() && listing) {
                self.base_allocation = true;
            }
        } else if let Some(leaf) = query.strip_prefix(QEMU_NAMESPACE) {
            if leaf.is_empty() {
                if listing {
                    self.allocation_depth = meta.allocation_depth;
                    self.bitmaps.fill(true);
                }
            } else if leaf == "allocation-depth" {
                self.allocation_depth |= meta.allocation_depth;
            } else if let Some(bitmap) = leaf.strip_prefix(DIRTY_BITMAP_PREFIX) {
                if bitmap.is_empty() {
                    if listing {
                        self.bitmaps.fill(true);
                    }
                } else if let Some(i) = meta.bitmaps.iter().position(|b| b.name() == bitmap) {
                    self.bitmaps[i] = true;
                }
            }
        }
    }

    /// The matched contexts in id order.
    pub fn contexts(&self) -> Vec<MetaContext> {
        let mut out = Vec::new();
        if self.base_allocation {
            out.push(MetaContext::BaseAllocation);
        }
        if self.allocation_depth {
            out.push(MetaContext::AllocationDepth);
        }
        let bitmaps = self.bitmaps.iter().enumerate().filter(|(_, on)| **on);
        out.extend(bitmaps.map(|(i, _)| MetaContext::DirtyBitmap(i)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl ExportedBitmap for Named {
        fn name(&self) -> &str {
            self.0
        }

        fn extent(&self, _: u64, len: u64) -> (bool, u64) {
            (false, len)
        }
    }

    fn meta() -> ExportMeta {
        ExportMeta {
            allocation_depth: true,
            bitmaps: vec![Arc::new(Named("b0")), Arc::new(Named("b1"))],
        }
    }

    fn names(set: &ContextSet, meta: &ExportMeta) -> Vec<String> {
        set.contexts().iter().map(|c| c.name(meta)).collect()
    }

    fn query(queries: &[&str], usage: QueryUse) -> Vec<String> {
        let meta = meta();
        let mut set = ContextSet::new(&meta);
        for q in queries {
            set.add_query(&meta, q, usage);
        }
        names(&set, &meta)
    }

    #[test]
    fn wildcards_list_but_do_not_select() {
        assert_eq!(query(&["base:"], QueryUse::List), ["base:allocation"]);
        assert!(query(&["base:"], QueryUse::Set).is_empty());
        assert_eq!(
            query(&["qemu:"], QueryUse::List),
            [
                "qemu:allocation-depth",
                "qemu:dirty-bitmap:b0",
                "qemu:dirty-bitmap:b1"
            ]
        );
        assert!(query(&["qemu:", "qemu:dirty-bitmap:"], QueryUse::Set).is_empty());
        assert_eq!(
            query(&["qemu:dirty-bitmap:"], QueryUse::List),
            ["qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"]
        );
    }

    #[test]
    fn exact_names_select_and_unknown_ones_are_ignored() {
        assert_eq!(
            query(
                &[
                    "qemu:dirty-bitmap:b1",
                    "base:allocation",
                    "x-foo:bar",
                    "nocolon",
                    "base:other"
                ],
                QueryUse::Set
            ),
            ["base:allocation", "qemu:dirty-bitmap:b1"]
        );
        let ids: Vec<u32> = [
            MetaContext::BaseAllocation,
            MetaContext::AllocationDepth,
            MetaContext::DirtyBitmap(1),
        ]
        .iter()
        .map(|c| c.id())
        .collect();
        assert_eq!(ids, [0, 1, 3]);
    }

    #[test]
    fn allocation_depth_only_when_enabled() {
        let meta = ExportMeta::default();
        let mut set = ContextSet::new(&meta);
        set.add_query(&meta, "qemu:allocation-depth", QueryUse::Set);
        set.add_query(&meta, "qemu:", QueryUse::List);
        assert!(set.contexts().is_empty());
        assert_eq!(names(&ContextSet::all(&meta), &meta), ["base:allocation"]);
    }
}

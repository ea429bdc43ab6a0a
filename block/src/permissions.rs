//! Block permissions, as QEMU 10 defines them (`BLK_PERM_*`), and the
//! default rules by which a node derives what it needs from a child.
//!
//! Every user of a node (a parent node through a child edge, or a
//! [`crate::BlockBackend`]) states the permissions it takes and the ones it
//! lets others take. The graph refuses a user whose needs another user does
//! not share. QEMU 6.2 removed `GRAPH_MOD` (it was bit 4); the remaining
//! four bits are the ones its image locks use too.

use std::fmt;
use std::ops::{BitAnd, BitOr, Not};

use schema::info::BlockPermission;

/// A set of block permissions (QEMU's `BLK_PERM_*` bit mask).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perm(u8);

/// One permission bit with its two spellings.
struct PermName {
    bit: Perm,
    /// As QEMU's error messages spell it (`bdrv_perm_names`).
    human: &'static str,
    /// The QAPI enum value.
    qapi: BlockPermission,
}

/// In bit order, which is also the order of QEMU's lock bytes.
const PERM_NAMES: [PermName; 4] = [
    PermName {
        bit: Perm::CONSISTENT_READ,
        human: "consistent read",
        qapi: BlockPermission::ConsistentRead,
    },
    PermName {
        bit: Perm::WRITE,
        human: "write",
        qapi: BlockPermission::Write,
    },
    PermName {
        bit: Perm::WRITE_UNCHANGED,
        human: "write unchanged",
        qapi: BlockPermission::WriteUnchanged,
    },
    PermName {
        bit: Perm::RESIZE,
        human: "resize",
        qapi: BlockPermission::Resize,
    },
];

impl Perm {
    /// No permission.
    pub const NONE: Perm = Perm(0);
    /// Reads see a complete, self-consistent image.
    pub const CONSISTENT_READ: Perm = Perm(0x01);
    /// Writes that change the visible content.
    pub const WRITE: Perm = Perm(0x02);
    /// Writes that keep the visible content (e.g. copy-on-read).
    pub const WRITE_UNCHANGED: Perm = Perm(0x04);
    /// Changing the size.
    pub const RESIZE: Perm = Perm(0x08);
    /// Every permission.
    pub const ALL: Perm = Perm(0x0f);
    /// Permissions a filter passes through to its child unchanged.
    pub const PASSTHROUGH: Perm = Perm::ALL;

    /// Both sets (`|`, usable in constants).
    pub const fn union(self, other: Perm) -> Perm {
        Perm(self.0 | other.0)
    }

    /// The raw bit mask.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set with these bits (bits outside [`Perm::ALL`] are dropped).
    pub fn from_bits(bits: u8) -> Perm {
        Perm(bits & Perm::ALL.0)
    }

    /// Whether every permission of `other` is in `self`.
    pub fn contains(self, other: Perm) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` have a permission in common.
    pub fn intersects(self, other: Perm) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bit index of each permission in the set, lowest first (the lock
    /// byte offset relative to QEMU's lock bases).
    pub fn bit_indices(self) -> impl Iterator<Item = u32> {
        (0..4).filter(move |i| self.0 & (1 << i) != 0)
    }

    /// The permissions as QEMU's error messages list them:
    /// `"consistent read, write"`.
    pub fn human_names(self) -> String {
        PERM_NAMES
            .iter()
            .filter(|p| self.contains(p.bit))
            .map(|p| p.human)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The set of the permissions QAPI `values` name.
    pub fn from_qapi(values: &[BlockPermission]) -> Perm {
        PERM_NAMES
            .iter()
            .filter(|p| values.contains(&p.qapi))
            .fold(Perm::NONE, |set, p| set | p.bit)
    }

    /// The QAPI values, in the order `x-debug-query-block-graph` prints
    /// them (highest bit first).
    pub fn to_qapi(self) -> Vec<BlockPermission> {
        PERM_NAMES
            .iter()
            .rev()
            .filter(|p| self.contains(p.bit))
            .map(|p| p.qapi)
            .collect()
    }
}

impl BitOr for Perm {
    type Output = Perm;
    fn bitor(self, rhs: Perm) -> Perm {
        Perm(self.0 | rhs.0)
    }
}

impl BitAnd for Perm {
    type Output = Perm;
    fn bitand(self, rhs: Perm) -> Perm {
        Perm(self.0 & rhs.0)
    }
}

impl Not for Perm {
    type Output = Perm;
    /// The complement within [`Perm::ALL`].
    fn not(self) -> Perm {
        Perm(!self.0 & Perm::ALL.0)
    }
}

impl fmt::Debug for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Perm({})", self.human_names())
    }
}

/// What a child is to its parent (QEMU's `BdrvChildRole` bits); decides
/// the default permissions the parent takes on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ChildRoleFlags(u8);

impl ChildRoleFlags {
    /// The child stores guest data.
    pub const DATA: ChildRoleFlags = ChildRoleFlags(1 << 0);
    /// The child stores format metadata.
    pub const METADATA: ChildRoleFlags = ChildRoleFlags(1 << 1);
    /// The parent passes requests through to the child (filters, and
    /// `raw` without `offset`/`size`).
    pub const FILTERED: ChildRoleFlags = ChildRoleFlags(1 << 2);
    /// The child is a backing file (copy-on-write source).
    pub const COW: ChildRoleFlags = ChildRoleFlags(1 << 3);
    /// The parent's primary child.
    pub const PRIMARY: ChildRoleFlags = ChildRoleFlags(1 << 4);
    /// A format's image file: data, metadata, primary.
    pub const IMAGE: ChildRoleFlags = ChildRoleFlags(1 | (1 << 1) | (1 << 4));

    /// Both sets of flags.
    pub const fn union(self, other: ChildRoleFlags) -> ChildRoleFlags {
        ChildRoleFlags(self.0 | other.0)
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: ChildRoleFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub fn intersects(self, other: ChildRoleFlags) -> bool {
        self.0 & other.0 != 0
    }
}

/// What a parent needs and shares on a child, from what its own users need
/// (`perm`) and share (`shared`): QEMU's `bdrv_default_perms`.
/// `parent_writable` is whether the parent node is opened read-write.
pub fn default_child_perms(
    role: ChildRoleFlags,
    parent_writable: bool,
    perm: Perm,
    shared: Perm,
) -> (Perm, Perm) {
    // Filters forward what their users need and share.
    let mut nperm = perm & Perm::PASSTHROUGH;
    let mut nshared = (shared & Perm::PASSTHROUGH) | !Perm::PASSTHROUGH;
    if role.contains(ChildRoleFlags::FILTERED) {
        return (nperm, nshared);
    }
    if role.contains(ChildRoleFlags::COW) {
        // Backing files are only read, and only need consistency if the
        // parent's users do.
        nperm = perm & Perm::CONSISTENT_READ;
        nshared = if shared.contains(Perm::WRITE) {
            Perm::WRITE | Perm::RESIZE
        } else {
            Perm::NONE
        };
        return (
            nperm,
            nshared | Perm::CONSISTENT_READ | Perm::WRITE_UNCHANGED,
        );
    }
    if role.contains(ChildRoleFlags::METADATA) {
        // A format may touch metadata even when its users do not write,
        // and nobody else may change the file under it.
        if parent_writable {
            nperm = nperm | Perm::WRITE | Perm::RESIZE;
        }
        nperm = nperm | Perm::CONSISTENT_READ;
        nshared = nshared & !(Perm::WRITE | Perm::RESIZE);
    }
    if role.contains(ChildRoleFlags::DATA) {
        nshared = nshared & !Perm::RESIZE;
        if nperm.contains(Perm::WRITE_UNCHANGED) {
            nperm = nperm | Perm::WRITE;
        }
        if nperm.contains(Perm::WRITE) {
            nperm = nperm | Perm::RESIZE;
        }
    }
    (nperm, nshared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_qemu() {
        let p = Perm::CONSISTENT_READ | Perm::WRITE | Perm::RESIZE;
        assert_eq!(p.human_names(), "consistent read, write, resize");
        assert_eq!(
            p.to_qapi(),
            [
                BlockPermission::Resize,
                BlockPermission::Write,
                BlockPermission::ConsistentRead
            ]
        );
        assert_eq!(!Perm::RESIZE, Perm::from_bits(0x07));
        assert_eq!(p.bit_indices().collect::<Vec<_>>(), [0, 1, 3]);
    }

    #[test]
    fn filtered_child_passes_everything_through() {
        let role = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let (perm, shared) = default_child_perms(role, true, Perm::WRITE, !Perm::RESIZE);
        assert_eq!(perm, Perm::WRITE);
        assert_eq!(shared, !Perm::RESIZE);
    }

    #[test]
    fn data_child_never_shares_resize() {
        let role = ChildRoleFlags::DATA.union(ChildRoleFlags::PRIMARY);
        let (perm, shared) = default_child_perms(role, true, Perm::NONE, Perm::ALL);
        assert_eq!(perm, Perm::NONE);
        assert_eq!(shared, !Perm::RESIZE);
        let (perm, _) = default_child_perms(role, true, Perm::WRITE, Perm::ALL);
        assert_eq!(perm, Perm::WRITE | Perm::RESIZE);
    }

    #[test]
    fn image_child_of_writable_format_takes_write() {
        let (perm, shared) =
            default_child_perms(ChildRoleFlags::IMAGE, true, Perm::NONE, Perm::ALL);
        assert_eq!(perm, Perm::CONSISTENT_READ | Perm::WRITE | Perm::RESIZE);
        assert_eq!(shared, Perm::CONSISTENT_READ | Perm::WRITE_UNCHANGED);
    }
}

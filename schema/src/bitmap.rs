//! The dirty bitmap commands (`block-dirty-bitmap-*`), as in QEMU's
//! `qapi/block-core.json`.

use crate::introspect::Introspect;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::de::union::{Captured, Shape};

/// `block-dirty-bitmap-add`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockDirtyBitmapAdd {
    pub node: String,
    pub name: String,
    pub granularity: Option<u32>,
    pub persistent: Option<bool>,
    pub disabled: Option<bool>,
}

/// `block-dirty-bitmap-remove`, `-clear`, `-enable`, `-disable`, and
/// `x-debug-block-dirty-bitmap-sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockDirtyBitmap {
    pub node: String,
    pub name: String,
}

/// What `x-debug-block-dirty-bitmap-sha256` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockDirtyBitmapSha256 {
    pub sha256: String,
}

/// A source of `block-dirty-bitmap-merge`: a bitmap of the target's node
/// by name, or of any node (`BlockDirtyBitmapOrStr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockDirtyBitmapOrStr {
    Local(String),
    External(BlockDirtyBitmap),
}

impl<'de> Deserialize<'de> for BlockDirtyBitmapOrStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let captured = Captured::deserialize(deserializer)?;
        let result = match captured.shape() {
            Shape::String => captured.read().map(Self::Local),
            Shape::Object => captured.read().map(Self::External),
            Shape::Null | Shape::Other => Err(captured.no_branch("BlockDirtyBitmapOrStr")),
        };
        result.map_err(de::Error::custom)
    }
}

crate::introspect::alternate!(BlockDirtyBitmapOrStr: String, BlockDirtyBitmap);

/// `block-dirty-bitmap-merge`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockDirtyBitmapMerge {
    pub node: String,
    pub target: String,
    pub bitmaps: Vec<BlockDirtyBitmapOrStr>,
}

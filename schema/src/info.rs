//! Results of the query commands: `query-version`, `query-commands`,
//! `query-named-block-nodes`, `x-debug-query-block-graph`. Member names,
//! optionality and order follow QSD 10.0's schema (`query-qmp-schema`);
//! optional members are left out when absent, as QEMU does.

use crate::introspect::{tag_enum, variants, Introspect, Member, SchemaBuilder};
use crate::sockets::Wrapped;
use serde::{Deserialize, Serialize};

use crate::block::BlockdevDetectZeroesOptions;

/// A QEMU version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
pub struct VersionTriple {
    pub major: i64,
    pub minor: i64,
    pub micro: i64,
}

/// `query-version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct VersionInfo {
    pub qemu: VersionTriple,
    pub package: String,
}

/// One entry of `query-commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct CommandInfo {
    pub name: String,
}

/// The cache mode of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevCacheInfo {
    pub writeback: bool,
    pub direct: bool,
    pub no_flush: bool,
}

/// An internal snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub vm_state_size: i64,
    pub date_sec: i64,
    pub date_nsec: i64,
    pub vm_clock_sec: i64,
    pub vm_clock_nsec: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icount: Option<i64>,
}

/// Flags of a persistent qcow2 bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum Qcow2BitmapInfoFlags {
    InUse,
    Auto,
}

/// A persistent bitmap stored in a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct Qcow2BitmapInfo {
    pub name: String,
    pub granularity: i64,
    pub flags: Vec<Qcow2BitmapInfoFlags>,
}

/// The compression algorithm of a qcow2 image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum Qcow2CompressionType {
    Zlib,
    Zstd,
}

/// qcow2 details of an image (without `encrypt`: storaged opens no
/// encrypted qcow2 images).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfoSpecificQCow2 {
    /// `0.10` or `1.1`.
    pub compat: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_file_raw: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_l2: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy_refcounts: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<bool>,
    pub refcount_bits: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmaps: Option<Vec<Qcow2BitmapInfo>>,
    pub compression_type: Qcow2CompressionType,
}

/// File-driver details of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfoSpecificFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extent_size_hint: Option<i64>,
}

/// Driver-specific image details, in QAPI's legacy `{"type", "data"}` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum ImageInfoSpecific {
    Qcow2(ImageInfoSpecificQCow2),
    File(ImageInfoSpecificFile),
}

/// A legacy union: the tag `type`, and per case an object holding `data`.
impl Introspect for ImageInfoSpecific {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        const CASES: &[&str] = &["qcow2", "file"];
        schema.flat_union::<Self>(
            &[],
            |schema| {
                /// The type of the union's tag, registered apart from it.
                struct Tag;
                let tag = tag_enum::<Tag>(schema, CASES);
                vec![Member {
                    name: "type".to_owned(),
                    ty: tag,
                    default: None,
                    features: None,
                }]
            },
            "type",
            |schema| {
                let types = [
                    Wrapped::<ImageInfoSpecificQCow2>::introspect(schema),
                    Wrapped::<ImageInfoSpecificFile>::introspect(schema),
                ];
                variants(CASES, types)
            },
        )
    }
}

/// What a node's image looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_flag: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<i64>,
    pub virtual_size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<SnapshotInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<ImageInfoSpecific>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_image: Option<Box<ImageInfo>>,
}

/// A dirty bitmap of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockDirtyInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub count: i64,
    pub granularity: u32,
    pub recording: bool,
    pub busy: bool,
    pub persistent: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inconsistent: Option<bool>,
}

/// One entry of `query-named-block-nodes`. QEMU mixes `snake_case` and
/// `kebab-case` here; the names are exactly QEMU's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct BlockDeviceInfo {
    pub file: String,
    #[serde(rename = "node-name", skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub ro: bool,
    pub drv: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    pub backing_file_depth: i64,
    pub active: bool,
    pub encrypted: bool,
    pub detect_zeroes: BlockdevDetectZeroesOptions,
    pub bps: i64,
    pub bps_rd: i64,
    pub bps_wr: i64,
    pub iops: i64,
    pub iops_rd: i64,
    pub iops_wr: i64,
    pub image: ImageInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_rd_max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_wr_max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_rd_max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_wr_max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_max_length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_rd_max_length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps_wr_max_length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_max_length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_rd_max_length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_wr_max_length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops_size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub cache: BlockdevCacheInfo,
    pub write_threshold: i64,
    #[serde(rename = "dirty-bitmaps", skip_serializing_if = "Option::is_none")]
    pub dirty_bitmaps: Option<Vec<BlockDirtyInfo>>,
}

/// What a vertex of the block graph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum XDbgBlockGraphNodeType {
    BlockBackend,
    BlockJob,
    BlockDriver,
}

/// A vertex of `x-debug-query-block-graph`; `name` is empty for an
/// anonymous backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct XDbgBlockGraphNode {
    pub id: u64,
    pub r#type: XDbgBlockGraphNodeType,
    pub name: String,
}

/// A permission a parent takes on, or shares of, a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockPermission {
    ConsistentRead,
    Write,
    WriteUnchanged,
    Resize,
}

/// An edge (parent to child) of `x-debug-query-block-graph`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct XDbgBlockGraphEdge {
    pub parent: u64,
    pub child: u64,
    /// The child's role, e.g. `file`, `backing`, `root`.
    pub name: String,
    pub perm: Vec<BlockPermission>,
    pub shared_perm: Vec<BlockPermission>,
}

/// `x-debug-query-block-graph`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct XDbgBlockGraph {
    pub nodes: Vec<XDbgBlockGraphNode>,
    pub edges: Vec<XDbgBlockGraphEdge>,
}

//! Block node options (`--blockdev`, `blockdev-add`) and the arguments of
//! the block commands, as in QEMU's `qapi/block-core.json`.
//!
//! Adding a driver is one variant in [`BlockdevOptions`]'s discriminator
//! list and one options struct here.

use crate::introspect::Introspect;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::de::union::{qapi_union, Captured, Shape};
use crate::info::BlockPermission;
use crate::sockets::SocketAddress;

/// How discard requests are handled (`discard`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockdevDiscardOptions {
    #[default]
    Ignore,
    Unmap,
}

/// Whether writes of zeroes are detected and turned into zero writes
/// (`detect-zeroes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockdevDetectZeroesOptions {
    #[default]
    Off,
    On,
    Unmap,
}

/// Cache options common to all nodes (`cache.direct=on`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevCacheOptions {
    /// Bypass the host page cache (`O_DIRECT`). Default off.
    pub direct: Option<bool>,
    /// Ignore flush requests. Default off.
    pub no_flush: Option<bool>,
}

/// `on`, `off` or `auto`, for the file driver's locking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum OnOffAuto {
    #[default]
    Auto,
    On,
    Off,
}

/// The AIO backend of the file driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
pub enum BlockdevAioOptions {
    #[default]
    #[serde(rename = "threads")]
    Threads,
    #[serde(rename = "native")]
    Native,
    #[serde(rename = "io_uring")]
    IoUring,
}

/// Options of the `file` protocol driver.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
#[introspect(features("dynamic-auto-read-only"))]
pub struct BlockdevOptionsFile {
    pub filename: String,
    pub pr_manager: Option<String>,
    pub locking: Option<OnOffAuto>,
    pub aio: Option<BlockdevAioOptions>,
    pub aio_max_batch: Option<i64>,
    pub drop_cache: Option<bool>,
    #[introspect(features("unstable"))]
    pub x_check_cache_dropped: Option<bool>,
}

/// Options of the `raw` format driver: a window of its child.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsRaw {
    pub file: BlockdevRef,
    pub offset: Option<i64>,
    pub size: Option<i64>,
}

/// Options of the `copy-on-read` filter.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsCor {
    pub file: BlockdevRef,
    /// The lowest node of the backing chain whose data is copied up.
    pub bottom: Option<String>,
}

/// Options of a driver with only a `file` child (`compress`).
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsGenericFormat {
    pub file: BlockdevRef,
}

/// Options of the `preallocate` filter.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsPreallocate {
    pub file: BlockdevRef,
    /// Preallocated ends are multiples of this (default 1 MiB).
    pub prealloc_align: Option<i64>,
    /// How far past a write the file is grown (default 128 MiB).
    pub prealloc_size: Option<i64>,
}

/// Options of the `null-co` and `null-aio` drivers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsNull {
    /// Virtual size in bytes (QAPI `int`: no suffixes). Default 1 GiB.
    pub size: Option<i64>,
    pub latency_ns: Option<u64>,
    pub read_zeroes: Option<bool>,
}

/// Which metadata overlap checks qcow2 performs before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum Qcow2OverlapCheckMode {
    None,
    Constant,
    Cached,
    All,
}

/// The structures of `overlap-check` in its object form
/// (`Qcow2OverlapCheckFlags`): a template mode, and structures turned on
/// or off on top of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Qcow2OverlapCheckFlags {
    pub template: Option<Qcow2OverlapCheckMode>,
    pub main_header: Option<bool>,
    pub active_l1: Option<bool>,
    pub active_l2: Option<bool>,
    pub refcount_table: Option<bool>,
    pub refcount_block: Option<bool>,
    pub snapshot_table: Option<bool>,
    pub inactive_l1: Option<bool>,
    pub inactive_l2: Option<bool>,
    pub bitmap_directory: Option<bool>,
}

/// `overlap-check`: a mode, or a template with changes
/// (`Qcow2OverlapChecks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2OverlapChecks {
    Flags(Qcow2OverlapCheckFlags),
    Mode(Qcow2OverlapCheckMode),
}

impl<'de> Deserialize<'de> for Qcow2OverlapChecks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let captured = Captured::deserialize(deserializer)?;
        let result = match captured.shape() {
            Shape::String => captured.read().map(Self::Mode),
            Shape::Object => captured.read().map(Self::Flags),
            Shape::Null | Shape::Other => Err(captured.no_branch("Qcow2OverlapChecks")),
        };
        result.map_err(de::Error::custom)
    }
}

crate::introspect::alternate!(Qcow2OverlapChecks: Qcow2OverlapCheckFlags, Qcow2OverlapCheckMode);

/// Options of the `qcow2` format driver (`BlockdevOptionsQcow2`).
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsQcow2 {
    pub file: BlockdevRef,
    /// The backing node; absent means "the one named in the image header",
    /// null means none.
    pub backing: Option<BlockdevRefOrNull>,
    pub lazy_refcounts: Option<bool>,
    pub pass_discard_request: Option<bool>,
    pub pass_discard_snapshot: Option<bool>,
    pub pass_discard_other: Option<bool>,
    pub discard_no_unref: Option<bool>,
    pub overlap_check: Option<Qcow2OverlapChecks>,
    pub cache_size: Option<i64>,
    pub l2_cache_size: Option<i64>,
    pub l2_cache_entry_size: Option<i64>,
    pub refcount_cache_size: Option<i64>,
    pub cache_clean_interval: Option<i64>,
    pub data_file: Option<BlockdevRef>,
}

/// The events a `blkdebug` rule can wait for (`BlkdebugEvent`). In QEMU
/// the format or the generic block layer above a `blkdebug` node raises
/// them on it; which of them storaged raises is listed in
/// `docs/block-drivers.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "snake_case")]
pub enum BlkdebugEvent {
    L1Update,
    L1GrowAllocTable,
    L1GrowWriteTable,
    L1GrowActivateTable,
    L2Load,
    L2Update,
    L2UpdateCompressed,
    L2AllocCowRead,
    L2AllocWrite,
    ReadAio,
    ReadBackingAio,
    ReadCompressed,
    WriteAio,
    WriteCompressed,
    VmstateLoad,
    VmstateSave,
    CowRead,
    CowWrite,
    ReftableLoad,
    ReftableGrow,
    ReftableUpdate,
    RefblockLoad,
    RefblockUpdate,
    RefblockUpdatePart,
    RefblockAlloc,
    RefblockAllocHookup,
    RefblockAllocWrite,
    RefblockAllocWriteBlocks,
    RefblockAllocWriteTable,
    RefblockAllocSwitchTable,
    ClusterAlloc,
    ClusterAllocBytes,
    ClusterFree,
    FlushToOs,
    FlushToDisk,
    PwritevRmwHead,
    PwritevRmwAfterHead,
    PwritevRmwTail,
    PwritevRmwAfterTail,
    Pwritev,
    PwritevZero,
    PwritevDone,
    EmptyImagePrepare,
    L1ShrinkWriteTable,
    L1ShrinkFreeL2Clusters,
    CorWrite,
    ClusterAllocSpace,
    None,
}

/// The kinds of request a `blkdebug` error rule applies to
/// (`BlkdebugIOType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlkdebugIoType {
    Read,
    Write,
    WriteZeroes,
    Discard,
    Flush,
    BlockStatus,
}

/// A `blkdebug` rule that makes requests fail
/// (`BlkdebugInjectErrorOptions`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlkdebugInjectErrorOptions {
    /// The event that arms the rule.
    pub event: BlkdebugEvent,
    /// The state the rule applies in; 0 (the default) is any state.
    pub state: Option<i64>,
    /// The only kind of request that fails; default all but block status.
    pub iotype: Option<BlkdebugIoType>,
    /// The error; default `EIO`.
    pub errno: Option<i64>,
    /// Only requests covering this sector fail; default -1, any.
    pub sector: Option<i64>,
    /// The rule goes after failing one request.
    pub once: Option<bool>,
    /// Fail without first yielding to other requests.
    pub immediately: Option<bool>,
}

/// A `blkdebug` rule that changes the state (`BlkdebugSetStateOptions`);
/// QAPI spells `new_state` with an underscore.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlkdebugSetStateOptions {
    pub event: BlkdebugEvent,
    /// The state the rule applies in; 0 (the default) is any state.
    pub state: Option<i64>,
    #[serde(rename = "new_state")]
    pub new_state: i64,
}

/// Options of the `blkdebug` filter: error injection and request limits
/// over its `image` child (`BlockdevOptionsBlkdebug`).
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsBlkdebug {
    pub image: BlockdevRef,
    /// A file of rules in QEMU's blkdebug configuration format.
    pub config: Option<String>,
    pub align: Option<i64>,
    pub max_transfer: Option<i32>,
    pub opt_write_zero: Option<i32>,
    pub max_write_zero: Option<i32>,
    pub opt_discard: Option<i32>,
    pub max_discard: Option<i32>,
    pub inject_error: Option<Vec<BlkdebugInjectErrorOptions>>,
    pub set_state: Option<Vec<BlkdebugSetStateOptions>>,
    pub take_child_perms: Option<Vec<BlockPermission>>,
    pub unshare_child_perms: Option<Vec<BlockPermission>>,
}

/// Options of the `throttle` filter: requests to its `file` child pass
/// the limits of a `throttle-group` object (`BlockdevOptionsThrottle`).
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsThrottle {
    /// The id of the `throttle-group` object whose limits apply.
    pub throttle_group: String,
    pub file: BlockdevRef,
}

/// Options of the `nbd` client driver: an export of an NBD server as a
/// node (`BlockdevOptionsNbd`).
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevOptionsNbd {
    pub server: SocketAddress,
    /// Default: the empty name.
    pub export: Option<String>,
    pub tls_creds: Option<String>,
    pub tls_hostname: Option<String>,
    /// A `qemu:dirty-bitmap:` context to report as block status.
    #[introspect(features("unstable"))]
    pub x_dirty_bitmap: Option<String>,
    /// Seconds to try reconnecting before requests fail (default 0).
    pub reconnect_delay: Option<u32>,
    /// Seconds the first connection may take (default 0: one attempt).
    pub open_timeout: Option<u32>,
}

qapi_union! {
    /// Options for creating a block node (`blockdev-add`, `--blockdev`).
    pub struct BlockdevOptions {
        pub node_name: Option<String>,
        pub discard: Option<BlockdevDiscardOptions>,
        pub cache: Option<BlockdevCacheOptions>,
        pub active: Option<bool>,
        pub read_only: Option<bool>,
        pub auto_read_only: Option<bool>,
        pub force_share: Option<bool>,
        pub detect_zeroes: Option<BlockdevDetectZeroesOptions>,
    }
    /// The driver and its own options.
    discriminator "driver" => pub driver: BlockdevDriver {
        "blkdebug" => Blkdebug(BlockdevOptionsBlkdebug),
        "compress" => Compress(BlockdevOptionsGenericFormat),
        "file" => File(BlockdevOptionsFile),
        "copy-on-read" => CopyOnRead(BlockdevOptionsCor),
        "null-aio" => NullAio(BlockdevOptionsNull),
        "nbd" => Nbd(BlockdevOptionsNbd),
        "null-co" => NullCo(BlockdevOptionsNull),
        "preallocate" => Preallocate(BlockdevOptionsPreallocate),
        "qcow2" => Qcow2(BlockdevOptionsQcow2),
        "raw" => Raw(BlockdevOptionsRaw),
        "throttle" => Throttle(BlockdevOptionsThrottle),
    }
}

/// A child node: a reference to an existing node by name, or a new node
/// defined inline (`file.driver=file,file.filename=...`).
#[derive(Debug, Clone, PartialEq)]
pub enum BlockdevRef {
    Definition(Box<BlockdevOptions>),
    Reference(String),
}

impl<'de> Deserialize<'de> for BlockdevRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let captured = Captured::deserialize(deserializer)?;
        read_ref(captured, "BlockdevRef")
    }
}

crate::introspect::alternate!(BlockdevRef: BlockdevOptions, String);

/// A child that may also be explicitly absent (`"backing": null`). In
/// keyval syntax, which has no null, an empty name means null, as in QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockdevRefOrNull {
    Definition(Box<BlockdevOptions>),
    Reference(String),
    Null,
}

impl<'de> Deserialize<'de> for BlockdevRefOrNull {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let captured = Captured::deserialize(deserializer)?;
        if captured.shape() == Shape::Null {
            return Ok(Self::Null);
        }
        Ok(match read_ref(captured, "BlockdevRefOrNull")? {
            BlockdevRef::Reference(name) if name.is_empty() => Self::Null,
            BlockdevRef::Reference(name) => Self::Reference(name),
            BlockdevRef::Definition(options) => Self::Definition(options),
        })
    }
}

crate::introspect::alternate!(BlockdevRefOrNull: BlockdevOptions, String, crate::introspect::Null);

/// Reads the object or string branch of a reference alternate.
fn read_ref<E: de::Error>(captured: Captured, type_name: &str) -> Result<BlockdevRef, E> {
    let result = match captured.shape() {
        Shape::Object => captured
            .read()
            .map(|o| BlockdevRef::Definition(Box::new(o))),
        Shape::String => captured.read().map(BlockdevRef::Reference),
        Shape::Null | Shape::Other => Err(captured.no_branch(type_name)),
    };
    result.map_err(E::custom)
}

/// QAPI's `StrOrNull`: a string, or an explicit JSON null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrOrNull {
    Str(String),
    Null,
}

impl<'de> Deserialize<'de> for StrOrNull {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let captured = Captured::deserialize(deserializer)?;
        match captured.shape() {
            Shape::Null => Ok(Self::Null),
            Shape::String => captured.read().map(Self::Str).map_err(de::Error::custom),
            Shape::Object | Shape::Other => Err(de::Error::custom(captured.no_branch("StrOrNull"))),
        }
    }
}

crate::introspect::alternate!(StrOrNull: String, crate::introspect::Null);

/// `blockdev-set-active`: one node and what it needs, or every node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevSetActiveArgs {
    pub node_name: Option<String>,
    pub active: bool,
}

/// `x-blockdev-set-iothread`: `null` is the main loop.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct XBlockdevSetIothreadArgs {
    pub node_name: String,
    pub iothread: StrOrNull,
    pub force: Option<bool>,
}

/// `blockdev-reopen`: the nodes to reopen, each with all its options.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevReopenArgs {
    pub options: Vec<BlockdevOptions>,
}

/// `blockdev-del`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevDelArgs {
    pub node_name: String,
}

/// `block_resize`: one of `device` (a block backend) or `node-name`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockResizeArgs {
    pub device: Option<String>,
    pub node_name: Option<String>,
    pub size: i64,
}

/// `x-blockdev-change`: a child to take from `parent`, or a node to
/// give it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct XBlockdevChangeArgs {
    pub parent: String,
    pub child: Option<String>,
    pub node: Option<String>,
}

/// `change-backing-file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ChangeBackingFileArgs {
    pub device: String,
    pub image_node_name: String,
    pub backing_file: String,
}

/// `query-named-block-nodes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct QueryNamedBlockNodesArgs {
    /// Omit the nested `backing-image` chains. Default false.
    pub flat: Option<bool>,
}

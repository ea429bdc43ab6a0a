//! The NBD server and block exports (`qapi/block-export.json`):
//! `--nbd-server` / `nbd-server-start`, `--export` / `block-export-add`,
//! and the deprecated `nbd-server-add` / `nbd-server-remove`.

use crate::introspect::Introspect;
use serde::{Deserialize, Serialize};

pub use crate::bitmap::{BlockDirtyBitmap, BlockDirtyBitmapOrStr};
use crate::de::union::qapi_union;
use crate::size::Size;
use crate::sockets::{SocketAddress, SocketAddressLegacy};

/// Implied key of `--export`.
pub const EXPORT_IMPLIED_KEY: &str = "type";

/// `--nbd-server`: the NBD server's listening socket and limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct NbdServerOptions {
    /// Seconds a client has to finish the handshake (default 10; 0 means
    /// no limit).
    pub handshake_max_seconds: Option<u32>,
    pub tls_creds: Option<String>,
    pub tls_authz: Option<String>,
    /// 0 means unlimited (default 100).
    pub max_connections: Option<u32>,
    pub addr: SocketAddress,
}

/// `nbd-server-start`: as [`NbdServerOptions`], with the legacy nested
/// address form.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct NbdServerStartArgs {
    pub handshake_max_seconds: Option<u32>,
    pub tls_creds: Option<String>,
    pub tls_authz: Option<String>,
    pub max_connections: Option<u32>,
    pub addr: SocketAddressLegacy,
}

impl From<NbdServerStartArgs> for NbdServerOptions {
    fn from(args: NbdServerStartArgs) -> Self {
        Self {
            handshake_max_seconds: args.handshake_max_seconds,
            tls_creds: args.tls_creds,
            tls_authz: args.tls_authz,
            max_connections: args.max_connections,
            addr: args.addr.into(),
        }
    }
}

/// Options of an NBD export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockExportOptionsNbd {
    /// Export name (default: the node name).
    pub name: Option<String>,
    pub description: Option<String>,
    pub bitmaps: Option<Vec<BlockDirtyBitmapOrStr>>,
    /// Report allocation depth in the `qemu:allocation-depth` context.
    pub allocation_depth: Option<bool>,
}

/// Options of a vhost-user-blk export.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockExportOptionsVhostUserBlk {
    pub addr: SocketAddress,
    /// Default 512.
    pub logical_block_size: Option<Size>,
    /// Default 1.
    pub num_queues: Option<u16>,
}

/// Who besides the owner may access a FUSE export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum FuseExportAllowOther {
    Off,
    On,
    #[default]
    Auto,
}

/// Options of a FUSE export.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockExportOptionsFuse {
    /// A regular file to mount the export over.
    pub mountpoint: String,
    /// Writes past the end grow the image.
    pub growable: Option<bool>,
    pub allow_other: Option<FuseExportAllowOther>,
}

/// Options of a VDUSE block export.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockExportOptionsVduseBlk {
    pub name: String,
    pub num_queues: Option<u16>,
    pub queue_size: Option<u16>,
    pub logical_block_size: Option<Size>,
    pub serial: Option<String>,
}

qapi_union! {
    /// An export (`--export`, `block-export-add`).
    pub struct BlockExportOptions {
        pub id: String,
        pub fixed_iothread: Option<bool>,
        pub iothread: Option<String>,
        pub node_name: String,
        pub writable: Option<bool>,
        pub writethrough: Option<bool>,
        pub allow_inactive: Option<bool>,
    }
    /// The export type and its own options.
    discriminator "type" => pub kind: BlockExportKind {
        "nbd" => Nbd(BlockExportOptionsNbd),
        "vhost-user-blk" => VhostUserBlk(BlockExportOptionsVhostUserBlk),
        "fuse" => Fuse(BlockExportOptionsFuse),
        "vduse-blk" => VduseBlk(BlockExportOptionsVduseBlk),
    }
}

/// How an export is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockExportRemoveMode {
    /// Refuse while clients are connected.
    #[default]
    Safe,
    /// Disconnect clients.
    Hard,
}

/// `block-export-del`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockExportDelArgs {
    pub id: String,
    pub mode: Option<BlockExportRemoveMode>,
}

/// `nbd-server-add` (deprecated): an NBD export of a node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct NbdServerAddArgs {
    pub name: Option<String>,
    pub description: Option<String>,
    pub device: String,
    pub writable: Option<bool>,
    pub bitmap: Option<String>,
}

/// `nbd-server-remove` (deprecated).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct NbdServerRemoveArgs {
    pub name: String,
    pub mode: Option<BlockExportRemoveMode>,
}

/// The export type as `query-block-exports` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum BlockExportType {
    Nbd,
    VhostUserBlk,
    Fuse,
    VduseBlk,
}

/// One entry of `query-block-exports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct BlockExportInfo {
    pub id: String,
    pub r#type: BlockExportType,
    pub node_name: String,
    pub shutting_down: bool,
}

impl BlockExportKind {
    /// The plain export type of this variant.
    pub fn export_type(&self) -> BlockExportType {
        match self {
            Self::Nbd(_) => BlockExportType::Nbd,
            Self::VhostUserBlk(_) => BlockExportType::VhostUserBlk,
            Self::Fuse(_) => BlockExportType::Fuse,
            Self::VduseBlk(_) => BlockExportType::VduseBlk,
        }
    }
}

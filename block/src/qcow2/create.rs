//! Image creation (`blockdev-create` with `driver=qcow2`), as QEMU's
//! `qcow2_co_create` does it: a minimal image (header, a one-cluster
//! refcount table, one refcount block, no L1 table) is written, then
//! opened, grown to its size and, if asked, preallocated.

use std::sync::Arc;

use schema::create::{
    BlockdevCreateOptionsQcow2, BlockdevQcow2Version, PreallocMode, Qcow2CompressionType,
};

use super::child::BlockChild;
use super::header::{
    build_first_cluster, compat, incompat, CompressionType, Header, MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS, V2_HEADER_LENGTH, V3_HEADER_LENGTH,
};
use super::layout::{set_entry, set_refcount, Geometry, OFLAG_COPIED};
use super::options::Qcow2Options;
use super::Qcow2;
use crate::error::{BlockError, BlockResult, ErrorKind};

/// The default cluster size (64 KiB).
pub const DEFAULT_CLUSTER_SIZE: u64 = 65536;
/// The default refcount width.
pub const DEFAULT_REFCOUNT_BITS: u32 = 16;
/// Sizes are whole sectors.
const SECTOR_SIZE: u64 = 512;
/// Clusters written by the minimal image: header, refcount table, block.
const INITIAL_CLUSTERS: u64 = 3;

/// The on-disk version (`BlockdevQcow2Version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qcow2Version {
    /// `compat=0.10`.
    V2,
    /// `compat=1.1`.
    #[default]
    V3,
}

/// What to allocate at creation (`PreallocMode`, the modes qcow2 images
/// support here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing.
    #[default]
    Off,
    /// L2 tables and data clusters (reading as zeroes).
    Metadata,
}

/// The backing file recorded in a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingSpec {
    /// The name stored in the header.
    pub file: String,
    /// The format stored in the backing format extension.
    pub format: Option<String>,
}

/// Creation options (`BlockdevCreateOptionsQcow2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    pub size: u64,
    pub version: Qcow2Version,
    pub cluster_size: u64,
    pub backing: Option<BackingSpec>,
    pub lazy_refcounts: bool,
    pub refcount_bits: u32,
    pub preallocation: Preallocation,
    pub compression_type: CompressionType,
}

impl CreateOptions {
    /// Options with QEMU's defaults for an image of `size` bytes.
    pub fn new(size: u64) -> Self {
        CreateOptions {
            size,
            version: Qcow2Version::V3,
            cluster_size: DEFAULT_CLUSTER_SIZE,
            backing: None,
            lazy_refcounts: false,
            refcount_bits: DEFAULT_REFCOUNT_BITS,
            preallocation: Preallocation::Off,
            compression_type: CompressionType::Zlib,
        }
    }

    /// The options of `blockdev-create` (the `file` child is the caller's
    /// business), checked. What this driver cannot create is refused.
    pub fn from_schema(options: &BlockdevCreateOptionsQcow2) -> BlockResult<Self> {
        let unsupported = |m: &str| Err(BlockError::new(ErrorKind::NotSupported, m));
        if options.data_file.is_some() {
            return unsupported("qcow2 images with an external data file are not supported");
        }
        if options.data_file_raw == Some(true) {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "data-file-raw requires data-file",
            ));
        }
        if options.extended_l2 == Some(true) {
            return unsupported("qcow2 images with extended L2 entries are not supported");
        }
        if options.backing_fmt.is_some() && options.backing_file.is_none() {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "Backing format cannot be used without backing file",
            ));
        }
        let preallocation = match options.preallocation.unwrap_or_default() {
            PreallocMode::Off => Preallocation::Off,
            PreallocMode::Metadata => Preallocation::Metadata,
            PreallocMode::Falloc => return unsupported("Unsupported preallocation mode 'falloc'"),
            PreallocMode::Full => return unsupported("Unsupported preallocation mode 'full'"),
        };
        let refcount_bits = match options.refcount_bits {
            None => DEFAULT_REFCOUNT_BITS,
            Some(bits) => u32::try_from(bits).map_err(|_| {
                BlockError::new(
                    ErrorKind::InvalidArgument,
                    "Refcount width must be a power of two and may not exceed 64 bits",
                )
            })?,
        };
        let create_options = CreateOptions {
            size: options.size.bytes(),
            version: match options.version {
                Some(BlockdevQcow2Version::V2) => Qcow2Version::V2,
                Some(BlockdevQcow2Version::V3) | None => Qcow2Version::V3,
            },
            cluster_size: options
                .cluster_size
                .map_or(DEFAULT_CLUSTER_SIZE, |s| s.bytes()),
            backing: options.backing_file.as_ref().map(|file| BackingSpec {
                file: file.clone(),
                format: options.backing_fmt.clone(),
            }),
            lazy_refcounts: options.lazy_refcounts.unwrap_or(false),
            refcount_bits,
            preallocation,
            compression_type: match options.compression_type {
                Some(Qcow2CompressionType::Zstd) => CompressionType::Zstd,
                Some(Qcow2CompressionType::Zlib) | None => CompressionType::Zlib,
            },
        };
        // Checked here, before the caller takes permissions on the file,
        // so errors come in QEMU's order.
        create_options.validate()?;
        Ok(create_options)
    }

    /// QEMU's checks, with its messages.
    fn validate(&self) -> BlockResult<()> {
        let invalid = |m: &str| Err(BlockError::new(ErrorKind::InvalidArgument, m));
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(1 << MIN_CLUSTER_BITS..=1 << MAX_CLUSTER_BITS).contains(&cs) {
            return invalid("Cluster size must be a power of two between 512 and 2048k");
        }
        if !self.size.is_multiple_of(SECTOR_SIZE) {
            return invalid("Image size must be a multiple of 512 bytes");
        }
        let v2 = self.version == Qcow2Version::V2;
        if v2 && self.lazy_refcounts {
            return invalid(
                "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)",
            );
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return invalid("Refcount width must be a power of two and may not exceed 64 bits");
        }
        if v2 && self.refcount_bits != DEFAULT_REFCOUNT_BITS {
            return invalid(
                "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)",
            );
        }
        if v2 && self.compression_type != CompressionType::Zlib {
            return invalid(
                "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)",
            );
        }
        if self.backing.is_some() && self.preallocation != Preallocation::Off {
            return invalid(
                "Backing file and preallocation can only be used at the same time if extended_l2 is on",
            );
        }
        Ok(())
    }
}

/// Writes a new image into `file` (whose contents are replaced).
pub async fn create(file: Arc<dyn BlockChild>, options: &CreateOptions) -> BlockResult<()> {
    options.validate()?;
    let cluster_bits = options.cluster_size.trailing_zeros();
    let refcount_order = options.refcount_bits.trailing_zeros();
    let v3 = options.version == Qcow2Version::V3;
    let cs = options.cluster_size;
    let mut header = Header {
        version: if v3 { 3 } else { 2 },
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits,
        size: 0,
        crypt_method: 0,
        l1_size: 0,
        l1_table_offset: 0,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: if options.compression_type == CompressionType::Zlib {
            0
        } else {
            incompat::COMPRESSION
        },
        compatible_features: if options.lazy_refcounts {
            compat::LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: 0,
        refcount_order,
        header_length: if v3 {
            V3_HEADER_LENGTH
        } else {
            V2_HEADER_LENGTH
        },
        compression_type: options.compression_type,
    };
    let backing = options.backing.as_ref();
    let first = build_first_cluster(
        &mut header,
        backing.map(|b| b.file.as_str()),
        backing.and_then(|b| b.format.as_deref()),
    )?;
    let geo = Geometry::new(cluster_bits, refcount_order, header.version);
    let mut image = vec![0u8; (INITIAL_CLUSTERS * cs) as usize];
    image[..cs as usize].copy_from_slice(&first);
    set_entry(&mut image[cs as usize..], 0, 2 * cs);
    let block = &mut image[2 * cs as usize..];
    for cluster in 0..INITIAL_CLUSTERS as usize {
        set_refcount(block, geo.refcount_order, cluster, 1);
    }
    file.resize(0).await?;
    file.write_slice(0, &image).await?;
    file.flush().await?;

    let options_rw = Qcow2Options {
        writable: true,
        ..Qcow2Options::default()
    };
    let qcow2 = Qcow2::open(file, None, options_rw).await?;
    qcow2.resize_to(options.size).await?;
    if options.preallocation == Preallocation::Metadata {
        qcow2.preallocate_metadata().await?;
    }
    qcow2.close().await
}

impl Qcow2 {
    /// Points every guest cluster at a host cluster of its own (which
    /// reads as zeroes) and makes the file long enough to hold them.
    async fn preallocate_metadata(&self) -> BlockResult<()> {
        let geo = *self.geo();
        let cs = geo.cluster_size();
        let clusters = self.virtual_size().div_ceil(cs);
        let mut cluster = 0;
        let mut end = 0;
        while cluster < clusters {
            let table = self.l2_for_write((cluster >> geo.l2_bits) as usize).await?;
            let index = (cluster & (geo.l2_entries() - 1)) as usize;
            let count = (clusters - cluster).min(geo.l2_entries() - index as u64);
            let allocation = self.alloc_clusters(count).await?;
            {
                let mut t = table.lock();
                for i in 0..count {
                    let host = allocation.offset + i * cs;
                    set_entry(&mut t.bytes, index + i as usize, host | OFLAG_COPIED);
                }
                t.dirty = true;
            }
            end = end.max(allocation.offset + count * cs);
            cluster += count;
        }
        if end > self.file.size() {
            self.file.resize(end).await?;
        }
        self.writeback().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_options_map_to_create_options() {
        let parsed: BlockdevCreateOptionsQcow2 = schema::from_json(serde_json::json!({
            "file": "node0", "size": 1048576, "version": "v2", "cluster-size": 4096,
            "backing-file": "base.img", "backing-fmt": "raw", "refcount-bits": 16,
        }))
        .unwrap();
        let o = CreateOptions::from_schema(&parsed).unwrap();
        assert_eq!(o.version, Qcow2Version::V2);
        assert_eq!(o.cluster_size, 4096);
        assert_eq!(o.backing.unwrap().format.as_deref(), Some("raw"));
        let parsed: BlockdevCreateOptionsQcow2 = schema::from_json(serde_json::json!({
            "file": "node0", "size": 1048576, "preallocation": "full",
        }))
        .unwrap();
        assert!(CreateOptions::from_schema(&parsed).is_err());
        // Geometry is checked by from_schema itself, before any permission
        // on the file is taken (QEMU's order of errors).
        let parsed: BlockdevCreateOptionsQcow2 = schema::from_json(serde_json::json!({
            "file": "node0", "size": 1048576, "cluster-size": 1000,
        }))
        .unwrap();
        let err = CreateOptions::from_schema(&parsed).unwrap_err();
        assert!(err.message.starts_with("Cluster size must be"));
    }

    #[test]
    fn rejects_what_qemu_rejects() {
        let mut o = CreateOptions::new(1 << 20);
        o.cluster_size = 1000;
        assert!(o
            .validate()
            .unwrap_err()
            .message
            .starts_with("Cluster size must be"));
        let mut o = CreateOptions::new(1000);
        assert_eq!(
            o.validate().unwrap_err().message,
            "Image size must be a multiple of 512 bytes"
        );
        o.size = 1024;
        o.version = Qcow2Version::V2;
        o.refcount_bits = 8;
        assert!(o
            .validate()
            .unwrap_err()
            .message
            .starts_with("Different refcount widths"));
        o.refcount_bits = 16;
        o.lazy_refcounts = true;
        assert!(o
            .validate()
            .unwrap_err()
            .message
            .starts_with("Lazy refcounts"));
    }
}

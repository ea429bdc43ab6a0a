//! The qcow2 header: the fixed fields (versions 2 and 3), the feature bits,
//! and the header extensions that follow it in the first cluster.
//!
//! Parsing checks everything QEMU checks before it trusts a field, with
//! QEMU's messages. The first cluster is kept as read, so that rewriting
//! the header (feature bits, sizes, table offsets) patches the fixed fields
//! and leaves the extensions, unknown fields and the backing file name
//! exactly as they were on disk.

use crate::error::{BlockError, BlockResult, ErrorKind};

/// `QFI\xfb`.
pub const QCOW_MAGIC: u32 = 0x5146_49fb;
/// Smallest cluster: 512 bytes.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster QEMU opens: 2 MiB.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Length of a version 2 header.
pub const V2_HEADER_LENGTH: u32 = 72;
/// Shortest version 3 header.
pub const V3_MIN_HEADER_LENGTH: u32 = 104;
/// The version 3 header as QEMU writes it: 104 bytes, the compression type
/// byte, padding to a multiple of 8.
pub const V3_HEADER_LENGTH: u32 = 112;
/// Offset of the `compression_type` byte.
const COMPRESSION_TYPE_OFFSET: usize = 104;
/// QEMU's limit on the active L1 table (`QCOW_MAX_L1_SIZE`), in bytes.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on the refcount table (`QCOW_MAX_REFTABLE_SIZE`), in bytes.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU's limit on internal snapshots (`QCOW_MAX_SNAPSHOTS`).
pub const MAX_SNAPSHOTS: u64 = 65_536;
/// Size of a snapshot table entry without its variable part.
pub const SNAPSHOT_HEADER_SIZE: u64 = 40;
/// Longest backing file name (the spec's limit).
pub const MAX_BACKING_FILE_NAME: usize = 1023;
/// QEMU keeps the backing format in a 16-byte array.
const MAX_BACKING_FORMAT_LEN: usize = 15;

/// Incompatible feature bits.
pub mod incompat {
    /// Refcounts may be stale (lazy refcounts in use, not cleanly closed).
    pub const DIRTY: u64 = 1 << 0;
    /// Metadata may be corrupt: no writes.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external data file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// `compression_type` is not zlib.
    pub const COMPRESSION: u64 = 1 << 3;
    /// L2 entries have subcluster bitmaps.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// The bits this driver handles.
    pub const SUPPORTED: u64 = DIRTY | CORRUPT | COMPRESSION;
    /// The bits QEMU 10 knows.
    pub const KNOWN: u64 = SUPPORTED | DATA_FILE | EXTENDED_L2;
}

/// Compatible feature bits.
pub mod compat {
    /// Refcount updates may be postponed while the dirty bit is set.
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Auto-clear feature bits (bit 0: bitmaps, bit 1: raw external data).
pub mod autoclear {
    /// The bitmaps extension is consistent with the image.
    pub const BITMAPS: u64 = 1 << 0;
    /// The bits this driver keeps consistent: the bitmaps (see
    /// `bitmaps` module). Others are cleared before it writes.
    pub const SUPPORTED: u64 = BITMAPS;
}

/// Header extension types.
mod ext {
    pub const END: u32 = 0;
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    pub const FEATURE_TABLE: u32 = 0x6803_f857;
    pub const BITMAPS: u32 = 0x2385_2875;
}

/// The bitmaps extension's fields (its 24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitmapsExtension {
    pub nb_bitmaps: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

impl BitmapsExtension {
    const LEN: usize = 24;

    fn parse(data: &[u8]) -> BlockResult<Self> {
        if data.len() != Self::LEN {
            return Err(invalid("bitmaps_ext: Invalid extension length"));
        }
        if be32(data, 4) != 0 {
            return Err(invalid("bitmaps_ext: Reserved field is not zero"));
        }
        Ok(BitmapsExtension {
            nb_bitmaps: be32(data, 0),
            directory_size: be64(data, 8),
            directory_offset: be64(data, 16),
        })
    }

    fn encode(&self) -> [u8; Self::LEN] {
        let mut data = [0u8; Self::LEN];
        put32(&mut data, 0, self.nb_bitmaps);
        put64(&mut data, 8, self.directory_size);
        put64(&mut data, 16, self.directory_offset);
        data
    }
}

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (the default).
    Zlib,
    /// zstd frames.
    Zstd,
}

impl CompressionType {
    /// The QAPI name (`Qcow2CompressionType`).
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }

    /// The header byte.
    pub fn code(self) -> u8 {
        match self {
            CompressionType::Zlib => 0,
            CompressionType::Zstd => 1,
        }
    }
}

/// The fixed header fields (a version 2 image reads as version 3 with
/// every feature off, refcount order 4 and a 72-byte header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: CompressionType,
}

/// One entry of the feature name table extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    pub bit: u8,
    pub name: String,
}

/// The parsed first cluster: header, extensions, backing file name.
#[derive(Debug, Clone)]
pub struct ImageHeader {
    pub header: Header,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub feature_names: Vec<FeatureName>,
    /// The bitmaps extension, if present (it counts only while the
    /// header's `autoclear::BITMAPS` bit is set).
    pub bitmaps: Option<BitmapsExtension>,
    /// The first cluster as read (or as last written).
    raw: Vec<u8>,
}

fn invalid(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

fn unsupported(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::NotSupported, message)
}

fn be32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}

fn be64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// QEMU's `qcow2_validate_table`: a table of `entries` entries of
/// `entry_len` bytes at `offset` is within limits and cluster aligned.
pub fn validate_table(
    offset: u64,
    entries: u64,
    entry_len: u64,
    max_bytes: u64,
    cluster_size: u64,
    name: &str,
) -> BlockResult<()> {
    if entries > max_bytes / entry_len {
        return Err(BlockError::new(
            ErrorKind::TooLarge,
            format!("{name} too large"),
        ));
    }
    let bytes = entries * entry_len;
    if (i64::MAX as u64) - bytes < offset || !offset.is_multiple_of(cluster_size) {
        return Err(invalid(format!("{name} offset invalid")));
    }
    Ok(())
}

impl Header {
    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parses the fixed fields from the start of the image. `buf` must hold
    /// at least [`V3_HEADER_LENGTH`] bytes (zero-padded past the file end).
    pub fn parse(buf: &[u8]) -> BlockResult<Header> {
        if buf.len() < V3_HEADER_LENGTH as usize || be32(buf, 0) != QCOW_MAGIC {
            return Err(invalid("Image is not in qcow2 format"));
        }
        let version = be32(buf, 4);
        if !(2..=3).contains(&version) {
            return Err(unsupported(format!("Unsupported qcow2 version {version}")));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(invalid(format!(
                "Unsupported cluster size: 2^{cluster_bits}"
            )));
        }
        let mut header = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LENGTH,
            compression_type: CompressionType::Zlib,
        };
        if version >= 3 {
            header.incompatible_features = be64(buf, 72);
            header.compatible_features = be64(buf, 80);
            header.autoclear_features = be64(buf, 88);
            header.refcount_order = be32(buf, 96);
            header.header_length = be32(buf, 100);
            if header.header_length < V3_MIN_HEADER_LENGTH {
                return Err(invalid("qcow2 header too short"));
            }
        }
        let cluster_size = header.cluster_size();
        if u64::from(header.header_length) > cluster_size {
            return Err(invalid("qcow2 header exceeds cluster size"));
        }
        if header.backing_file_offset > cluster_size {
            return Err(invalid("Invalid backing file offset"));
        }
        let compression_code = if header.header_length as usize > COMPRESSION_TYPE_OFFSET {
            buf[COMPRESSION_TYPE_OFFSET]
        } else {
            0
        };
        header.compression_type = match compression_code {
            0 => CompressionType::Zlib,
            1 => CompressionType::Zstd,
            other => {
                return Err(unsupported(format!(
                    "qcow2: unknown compression type: {other}"
                )))
            }
        };
        let flagged = header.incompatible_features & incompat::COMPRESSION != 0;
        match (header.compression_type, flagged) {
            (CompressionType::Zlib, true) => {
                return Err(invalid(
                    "qcow2: Compression type incompatible feature bit must not be set",
                ))
            }
            (CompressionType::Zstd, false) => {
                return Err(invalid(
                    "qcow2: Compression type incompatible feature bit must be set",
                ))
            }
            _ => {}
        }
        if header.refcount_order > 6 {
            return Err(invalid(
                "Reference count entry width too large; may not exceed 64 bits",
            ));
        }
        Ok(header)
    }

    /// Writes the fixed fields into `buf` (the first cluster), leaving the
    /// bytes past the fields this driver knows untouched.
    pub fn encode_into(&self, buf: &mut [u8]) {
        put32(buf, 0, QCOW_MAGIC);
        put32(buf, 4, self.version);
        put64(buf, 8, self.backing_file_offset);
        put32(buf, 16, self.backing_file_size);
        put32(buf, 20, self.cluster_bits);
        put64(buf, 24, self.size);
        put32(buf, 32, self.crypt_method);
        put32(buf, 36, self.l1_size);
        put64(buf, 40, self.l1_table_offset);
        put64(buf, 48, self.refcount_table_offset);
        put32(buf, 56, self.refcount_table_clusters);
        put32(buf, 60, self.nb_snapshots);
        put64(buf, 64, self.snapshots_offset);
        if self.version >= 3 {
            put64(buf, 72, self.incompatible_features);
            put64(buf, 80, self.compatible_features);
            put64(buf, 88, self.autoclear_features);
            put32(buf, 96, self.refcount_order);
            put32(buf, 100, self.header_length);
            if self.header_length as usize > COMPRESSION_TYPE_OFFSET {
                buf[COMPRESSION_TYPE_OFFSET] = self.compression_type.code();
            }
        }
    }

    /// Refuses images this driver cannot serve; `writable` also refuses
    /// corrupt ones, as QEMU does.
    pub fn check_features(&self, writable: bool, names: &[FeatureName]) -> BlockResult<()> {
        let unknown = self.incompatible_features & !incompat::KNOWN;
        if unknown != 0 {
            return Err(unsupported(unsupported_features_message(unknown, names)));
        }
        if self.incompatible_features & incompat::DATA_FILE != 0 {
            return Err(unsupported(
                "qcow2 images with an external data file are not supported",
            ));
        }
        if self.incompatible_features & incompat::EXTENDED_L2 != 0 {
            return Err(unsupported(
                "qcow2 images with extended L2 entries (subclusters) are not supported",
            ));
        }
        if self.crypt_method != 0 {
            return Err(unsupported("Encrypted qcow2 images are not supported"));
        }
        if writable && self.incompatible_features & incompat::CORRUPT != 0 {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "qcow2: Image is corrupt; cannot be opened read/write",
            ));
        }
        Ok(())
    }
}

/// QEMU's `report_unsupported_feature`.
fn unsupported_features_message(mut mask: u64, names: &[FeatureName]) -> String {
    let mut parts = Vec::new();
    for feature in names.iter().filter(|f| f.kind == 0 && f.bit < 64) {
        let bit = 1u64 << feature.bit;
        if mask & bit != 0 {
            parts.push(feature.name.clone());
            mask &= !bit;
        }
    }
    if mask != 0 {
        parts.push(format!("Unknown incompatible feature: {mask:x}"));
    }
    format!("Unsupported qcow2 feature(s): {}", parts.join(", "))
}

impl ImageHeader {
    /// Parses the whole first cluster (`raw` is exactly one cluster,
    /// zero-padded past the end of the file).
    pub fn parse(raw: Vec<u8>) -> BlockResult<ImageHeader> {
        let header = Header::parse(&raw)?;
        let cluster_size = header.cluster_size() as usize;
        if raw.len() != cluster_size {
            return Err(invalid("qcow2 header cluster is truncated"));
        }
        let ext_end = if header.backing_file_offset != 0 {
            header.backing_file_offset as usize
        } else {
            cluster_size
        };
        let mut image = ImageHeader {
            header,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            bitmaps: None,
            raw,
        };
        image.parse_extensions(ext_end)?;
        image.parse_backing_file()?;
        Ok(image)
    }

    /// QEMU's `qcow2_read_extensions`: walks the extensions up to `end`.
    fn parse_extensions(&mut self, end: usize) -> BlockResult<()> {
        let mut offset = self.header.header_length as usize;
        while offset < end {
            if end - offset < 8 {
                return Err(invalid("Header extension too large"));
            }
            let kind = be32(&self.raw, offset);
            let len = be32(&self.raw, offset + 4) as usize;
            offset += 8;
            if len > end - offset {
                return Err(invalid("Header extension too large"));
            }
            let data = &self.raw[offset..offset + len];
            match kind {
                ext::END => return Ok(()),
                ext::BACKING_FORMAT => {
                    if len > MAX_BACKING_FORMAT_LEN {
                        return Err(invalid(format!(
                            "ERROR: ext_backing_format: len={len} too large (>={})",
                            MAX_BACKING_FORMAT_LEN + 1
                        )));
                    }
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                ext::FEATURE_TABLE => {
                    self.feature_names = data
                        .chunks_exact(48)
                        .map(|entry| {
                            let name = &entry[2..];
                            let name_len = name.iter().position(|&b| b == 0).unwrap_or(46);
                            FeatureName {
                                kind: entry[0],
                                bit: entry[1],
                                name: String::from_utf8_lossy(&name[..name_len]).into_owned(),
                            }
                        })
                        .collect();
                }
                ext::BITMAPS => self.bitmaps = Some(BitmapsExtension::parse(data)?),
                // Every other extension (crypto, data file, unknown) stays
                // in `raw` untouched.
                _ => {}
            }
            offset += len.div_ceil(8) * 8;
        }
        Ok(())
    }

    fn parse_backing_file(&mut self) -> BlockResult<()> {
        let offset = self.header.backing_file_offset as usize;
        if offset == 0 {
            return Ok(());
        }
        let len = self.header.backing_file_size as usize;
        if len > MAX_BACKING_FILE_NAME.min(self.raw.len() - offset) {
            return Err(invalid("Backing file name too long"));
        }
        let name = &self.raw[offset..offset + len];
        self.backing_file = Some(String::from_utf8_lossy(name).into_owned());
        Ok(())
    }

    /// The first cluster with another backing file name and format (QEMU's
    /// `qcow2_change_backing_file`): the backing format extension if there
    /// is a format, every other extension as it was, then the name. `None`
    /// removes both.
    pub fn with_backing(
        &self,
        backing_file: Option<&str>,
        backing_format: Option<&str>,
    ) -> BlockResult<Vec<u8>> {
        let mut extensions = backing_format_extension(backing_format)?;
        extensions.extend(self.extensions_except(ext::BACKING_FORMAT));
        let mut header = self.header.clone();
        assemble(&mut header, &extensions, backing_file)
    }

    /// The bitmaps extension, if the header vouches for it (its auto-clear
    /// bit is set: a program that knows no bitmaps clears it when it
    /// writes the image).
    pub fn valid_bitmaps(&self) -> Option<BitmapsExtension> {
        self.bitmaps
            .filter(|_| self.header.autoclear_features & autoclear::BITMAPS != 0)
    }

    /// The first cluster with another bitmaps extension (`None`: none),
    /// and the header's bitmaps bit set to match; the rest as it was.
    pub fn with_bitmaps(&self, bitmaps: Option<BitmapsExtension>) -> BlockResult<Vec<u8>> {
        let encoded = bitmaps.map(|b| b.encode());
        let mut extensions: Vec<(u32, &[u8])> = self.extensions_except(ext::BITMAPS);
        if let Some(data) = &encoded {
            extensions.push((ext::BITMAPS, data));
        }
        let mut header = self.header.clone();
        if bitmaps.is_some() {
            header.autoclear_features |= autoclear::BITMAPS;
        } else {
            header.autoclear_features &= !autoclear::BITMAPS;
        }
        let backing_file = self.backing_file.clone();
        assemble(&mut header, &extensions, backing_file.as_deref())
    }

    /// The extensions as stored, but those of type `skip`.
    fn extensions_except(&self, skip: u32) -> Vec<(u32, &[u8])> {
        let ext_end = if self.header.backing_file_offset != 0 {
            self.header.backing_file_offset as usize
        } else {
            self.raw.len()
        };
        let mut extensions = Vec::new();
        let mut offset = self.header.header_length as usize;
        while offset + 8 <= ext_end {
            let kind = be32(&self.raw, offset);
            let len = be32(&self.raw, offset + 4) as usize;
            if kind == ext::END || offset + 8 + len > ext_end {
                break;
            }
            if kind != skip {
                extensions.push((kind, &self.raw[offset + 8..offset + 8 + len]));
            }
            offset += 8 + len.div_ceil(8) * 8;
        }
        extensions
    }

    /// The bytes to write at offset 0 after `header` changed: the fixed
    /// fields (rounded up to a sector) with the rest as on disk.
    pub fn encoded_prefix(&mut self) -> &[u8] {
        self.header.encode_into(&mut self.raw);
        let len = (self.header.header_length as usize)
            .div_ceil(512)
            .saturating_mul(512)
            .min(self.raw.len());
        &self.raw[..len]
    }
}

/// Builds the first cluster of a new image: header fields, the backing
/// format and feature name extensions, the end marker, and the backing
/// file name after them (QEMU's layout).
pub fn build_first_cluster(
    header: &mut Header,
    backing_file: Option<&str>,
    backing_format: Option<&str>,
) -> BlockResult<Vec<u8>> {
    let mut extensions = backing_format_extension(backing_format)?;
    let table = feature_table();
    if header.version >= 3 {
        extensions.push((ext::FEATURE_TABLE, &table));
    }
    assemble(header, &extensions, backing_file)
}

/// The backing format extension for `format`, if any (as the start of an
/// extension list).
fn backing_format_extension(format: Option<&str>) -> BlockResult<Vec<(u32, &[u8])>> {
    let Some(format) = format else {
        return Ok(Vec::new());
    };
    if format.len() > MAX_BACKING_FORMAT_LEN {
        return Err(invalid(format!("Backing format name too long: {format}")));
    }
    Ok(vec![(ext::BACKING_FORMAT, format.as_bytes())])
}

/// A first cluster: `header`'s fields, `extensions` each padded to 8
/// bytes, the end marker, then the backing file name (whose place is
/// written into `header`).
fn assemble(
    header: &mut Header,
    extensions: &[(u32, &[u8])],
    backing_file: Option<&str>,
) -> BlockResult<Vec<u8>> {
    let cluster_size = header.cluster_size() as usize;
    let mut raw = vec![0u8; cluster_size];
    let mut at = header.header_length as usize;
    for &(kind, data) in extensions.iter().chain([&(ext::END, &[][..])]) {
        let padded = data.len().div_ceil(8) * 8;
        if at + 8 + padded > cluster_size {
            return Err(invalid(
                "Header extensions do not fit into the first cluster",
            ));
        }
        put32(&mut raw, at, kind);
        put32(&mut raw, at + 4, data.len() as u32);
        raw[at + 8..at + 8 + data.len()].copy_from_slice(data);
        at += 8 + padded;
    }
    match backing_file {
        Some(name) => {
            if name.len() > MAX_BACKING_FILE_NAME || at + name.len() > cluster_size {
                return Err(invalid("Backing file name too long"));
            }
            raw[at..at + name.len()].copy_from_slice(name.as_bytes());
            header.backing_file_offset = at as u64;
            header.backing_file_size = name.len() as u32;
        }
        None => {
            header.backing_file_offset = 0;
            header.backing_file_size = 0;
        }
    }
    header.encode_into(&mut raw);
    Ok(raw)
}

/// The feature name table QEMU writes into new version 3 images.
fn feature_table() -> Vec<u8> {
    const NAMES: [(u8, u8, &str); 8] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
        (2, 1, "raw external data"),
    ];
    let mut table = Vec::with_capacity(NAMES.len() * 48);
    for (kind, bit, name) in NAMES {
        let mut entry = [0u8; 48];
        entry[0] = kind;
        entry[1] = bit;
        entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
        table.extend_from_slice(&entry);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3_header() -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 2,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: compat::LAZY_REFCOUNTS,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LENGTH,
            compression_type: CompressionType::Zlib,
        }
    }

    #[test]
    fn first_cluster_round_trips() {
        let mut header = v3_header();
        let raw = build_first_cluster(&mut header, Some("base.qcow2"), Some("qcow2")).unwrap();
        let image = ImageHeader::parse(raw).unwrap();
        assert_eq!(image.header, header);
        assert_eq!(image.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(image.backing_format.as_deref(), Some("qcow2"));
        assert!(image
            .feature_names
            .iter()
            .any(|f| f.kind == 1 && f.bit == 0 && f.name == "lazy refcounts"));
    }

    #[test]
    fn rejects_bad_headers_with_qemu_messages() {
        let mut header = v3_header();
        let raw = build_first_cluster(&mut header, None, None).unwrap();
        let mut bad = raw.clone();
        bad[0] = 0;
        assert_eq!(
            ImageHeader::parse(bad).unwrap_err().message,
            "Image is not in qcow2 format"
        );
        let mut bad = raw.clone();
        put32(&mut bad, 20, 22);
        assert_eq!(
            Header::parse(&bad).unwrap_err().message,
            "Unsupported cluster size: 2^22"
        );
        let mut bad = raw.clone();
        put32(&mut bad, 96, 7);
        assert!(Header::parse(&bad)
            .unwrap_err()
            .message
            .starts_with("Reference count entry width"));
        let mut bad = raw;
        bad[COMPRESSION_TYPE_OFFSET] = 1;
        assert_eq!(
            Header::parse(&bad).unwrap_err().message,
            "qcow2: Compression type incompatible feature bit must be set"
        );
    }

    #[test]
    fn unknown_incompatible_bits_are_named_from_the_table() {
        let mut header = v3_header();
        header.incompatible_features = 1 << 5 | 1 << 9;
        let names = vec![FeatureName {
            kind: 0,
            bit: 5,
            name: "future thing".into(),
        }];
        let err = header.check_features(false, &names).unwrap_err();
        assert_eq!(
            err.message,
            "Unsupported qcow2 feature(s): future thing, Unknown incompatible feature: 200"
        );
    }

    #[test]
    fn validate_table_limits() {
        assert!(validate_table(0x10000, 1, 8, MAX_L1_BYTES, 0x10000, "Active L1 table").is_ok());
        let err = validate_table(0x10001, 1, 8, MAX_L1_BYTES, 0x10000, "Active L1 table");
        assert_eq!(err.unwrap_err().message, "Active L1 table offset invalid");
        let err = validate_table(0, MAX_L1_BYTES, 8, MAX_L1_BYTES, 0x10000, "Active L1 table");
        assert_eq!(err.unwrap_err().message, "Active L1 table too large");
    }
}

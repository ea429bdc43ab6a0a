//! The runtime options of a qcow2 node and how they size the caches
//! (QEMU's `read_cache_sizes`).

use std::sync::Arc;

use schema::block::BlockdevOptionsQcow2;

use super::overlap::OverlapChecks;

use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::node::NodeSettings;

/// QEMU's default ceiling of the L2 cache (`DEFAULT_L2_CACHE_MAX_SIZE`).
pub const DEFAULT_L2_CACHE_MAX_BYTES: u64 = 32 << 20;
/// Fewest L2 tables cached (QEMU's `MIN_L2_CACHE_SIZE`).
pub const MIN_L2_CACHE_TABLES: u64 = 2;
/// Fewest refcount blocks cached. QEMU's minimum is 4; a few more avoid
/// writebacks forced by eviction with small clusters.
pub const MIN_REFCOUNT_CACHE_TABLES: u64 = 16;
/// QEMU's minimum refcount cache, in clusters, used when splitting
/// `cache-size` (`MIN_REFCOUNT_CACHE_SIZE`).
const QEMU_MIN_REFCOUNT_CACHE_CLUSTERS: u64 = 4;
/// The most tables any cache holds (bounds memory whatever is asked).
pub const MAX_CACHE_TABLES: u64 = 1 << 20;

/// What the driver reports when it finds its metadata corrupt
/// (`BLOCK_IMAGE_CORRUPTED`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptionEvent {
    /// What was found.
    pub message: String,
    /// Host offset of the bad structure, if known.
    pub offset: Option<u64>,
    /// Its size, if known.
    pub size: Option<u64>,
    /// The image was marked corrupt and is read-only from now on.
    pub fatal: bool,
}

/// Called once, when corruption is first detected.
pub type CorruptionHook = Arc<dyn Fn(&CorruptionEvent) + Send + Sync>;

/// Options of an open qcow2 image.
#[derive(Clone, Default)]
pub struct Qcow2Options {
    /// The node is opened read-write.
    pub writable: bool,
    /// `cache-size`: L2 plus refcount cache, in bytes.
    pub cache_size: Option<u64>,
    /// `l2-cache-size`.
    pub l2_cache_size: Option<u64>,
    /// `refcount-cache-size`.
    pub refcount_cache_size: Option<u64>,
    /// `lazy-refcounts`; the header's bit when absent.
    pub lazy_refcounts: Option<bool>,
    /// `pass-discard-request`: guest discards reach the file.
    pub pass_discard_request: Option<bool>,
    /// `pass-discard-other`: clusters freed for other reasons are
    /// discarded in the file too.
    pub pass_discard_other: Option<bool>,
    /// `pass-discard-snapshot`: clusters freed by deleting a snapshot are
    /// discarded in the file too (default on).
    pub pass_discard_snapshot: Option<bool>,
    /// `discard-no-unref`: discarded and zeroed clusters keep their host
    /// clusters (version 3 only).
    pub discard_no_unref: bool,
    /// Reports corruption (`BLOCK_IMAGE_CORRUPTED`).
    pub on_corruption: Option<CorruptionHook>,
    /// `overlap-check`: metadata guest writes are checked against.
    pub overlap_checks: OverlapChecks,
}

impl std::fmt::Debug for Qcow2Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Options")
            .field("writable", &self.writable)
            .field("cache_size", &self.cache_size)
            .field("l2_cache_size", &self.l2_cache_size)
            .field("refcount_cache_size", &self.refcount_cache_size)
            .field("lazy_refcounts", &self.lazy_refcounts)
            .finish_non_exhaustive()
    }
}

fn invalid(message: impl Into<String>) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

fn size_option(name: &str, value: Option<i64>) -> BlockResult<Option<u64>> {
    value
        .map(|v| {
            u64::try_from(v).map_err(|_| {
                invalid(format!(
                    "Parameter '{name}' expects a non-negative number below 2^64"
                ))
            })
        })
        .transpose()
}

impl Qcow2Options {
    /// The options of `blockdev-add` for a node with `settings`.
    /// `data-file` is refused: external data files are not supported.
    /// `pass-discard-request` defaults to the node's `discard=unmap`, as in
    /// QEMU. The cache tuning options QEMU has beyond the sizes
    /// (`l2-cache-entry-size`, `cache-clean-interval`) are accepted and
    /// have no effect: whole tables are cached.
    pub fn from_schema(
        options: &BlockdevOptionsQcow2,
        settings: &NodeSettings,
    ) -> BlockResult<Self> {
        if options.data_file.is_some() {
            return Err(BlockError::new(
                ErrorKind::NotSupported,
                "'data-file' can only be set for images with an external data file",
            ));
        }
        Ok(Qcow2Options {
            writable: !settings.read_only && !settings.inactive,
            cache_size: size_option("cache-size", options.cache_size)?,
            l2_cache_size: size_option("l2-cache-size", options.l2_cache_size)?,
            refcount_cache_size: size_option("refcount-cache-size", options.refcount_cache_size)?,
            lazy_refcounts: options.lazy_refcounts,
            pass_discard_request: Some(
                options
                    .pass_discard_request
                    .unwrap_or(settings.discard_unmap),
            ),
            pass_discard_other: options.pass_discard_other,
            pass_discard_snapshot: options.pass_discard_snapshot,
            discard_no_unref: options.discard_no_unref.unwrap_or(false),
            on_corruption: None,
            overlap_checks: options
                .overlap_check
                .map(OverlapChecks::from)
                .unwrap_or_default(),
        })
    }

    /// (L2 tables, refcount blocks) to cache for an image of `size` bytes
    /// with `cluster_size` clusters, from the options as QEMU reads them.
    pub fn cache_tables(&self, size: u64, cluster_size: u64) -> BlockResult<(u64, u64)> {
        let max_l2_cache = size
            .div_ceil(cluster_size)
            .saturating_mul(8)
            .div_ceil(cluster_size)
            .saturating_mul(cluster_size)
            .max(cluster_size);
        let min_refcount_cache = QEMU_MIN_REFCOUNT_CACHE_CLUSTERS * cluster_size;
        let mut l2 = max_l2_cache.min(self.l2_cache_size.unwrap_or(DEFAULT_L2_CACHE_MAX_BYTES));
        let mut refcount = self.refcount_cache_size.unwrap_or(0);
        if let Some(combined) = self.cache_size {
            match (self.l2_cache_size, self.refcount_cache_size) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
                    ))
                }
                (Some(l2_set), None) if l2_set > combined => {
                    return Err(invalid("l2-cache-size may not exceed cache-size"))
                }
                (None, Some(rc)) if rc > combined => {
                    return Err(invalid("refcount-cache-size may not exceed cache-size"))
                }
                (Some(_), None) => refcount = combined - l2,
                (None, Some(rc)) => l2 = combined - rc,
                (None, None) => {
                    if combined >= max_l2_cache + min_refcount_cache {
                        l2 = max_l2_cache;
                        refcount = combined - l2;
                    } else {
                        refcount = combined.min(min_refcount_cache);
                        l2 = combined - refcount;
                    }
                }
            }
        }
        let l2_tables = (l2 / cluster_size).clamp(MIN_L2_CACHE_TABLES, MAX_CACHE_TABLES);
        let refcount_tables =
            (refcount / cluster_size).clamp(MIN_REFCOUNT_CACHE_TABLES, MAX_CACHE_TABLES);
        Ok((l2_tables, refcount_tables))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_l2_cache_covers_the_disk_up_to_32_mib() {
        let o = Qcow2Options::default();
        // 1 GiB with 64 KiB clusters: 16384 entries, 128 KiB of L2 tables.
        assert_eq!(o.cache_tables(1 << 30, 65536).unwrap(), (2, 16));
        // 64 GiB: 8 MiB of L2 tables.
        assert_eq!(o.cache_tables(64 << 30, 65536).unwrap().0, 128);
        // 100 TiB: capped at 32 MiB.
        assert_eq!(o.cache_tables(100 << 40, 65536).unwrap().0, 512);
    }

    #[test]
    fn combined_cache_size_is_split_as_qemu_does() {
        let o = Qcow2Options {
            cache_size: Some(4 << 20),
            ..Default::default()
        };
        // 1 TiB needs 128 MiB of L2: the refcount cache gets its minimum.
        assert_eq!(o.cache_tables(1 << 40, 65536).unwrap(), (60, 16));
        let o = Qcow2Options {
            cache_size: Some(1 << 20),
            l2_cache_size: Some(2 << 20),
            ..Default::default()
        };
        assert_eq!(
            o.cache_tables(1 << 40, 65536).unwrap_err().message,
            "l2-cache-size may not exceed cache-size"
        );
    }
}

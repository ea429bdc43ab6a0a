//! What `query-named-block-nodes` and `qemu-img info` show of a qcow2
//! image (`ImageInfoSpecificQCow2`).

use std::sync::atomic::Ordering;

use schema::info::{ImageInfoSpecific, ImageInfoSpecificQCow2, Qcow2CompressionType};

use super::header::CompressionType;
use super::Qcow2;

impl Qcow2 {
    pub(super) fn format_specific_info(&self) -> ImageInfoSpecific {
        let geo = self.geo();
        let v3 = geo.version >= 3;
        ImageInfoSpecific::Qcow2(ImageInfoSpecificQCow2 {
            compat: if v3 { "1.1" } else { "0.10" }.to_string(),
            data_file: None,
            data_file_raw: None,
            extended_l2: v3.then_some(false),
            lazy_refcounts: v3.then_some(self.facts.lazy_in_header),
            corrupt: v3.then(|| self.corrupt.load(Ordering::Acquire)),
            refcount_bits: 1i64 << geo.refcount_order,
            bitmaps: Some(self.bitmap_dir.load().info()).filter(|list| !list.is_empty()),
            compression_type: match self.facts.compression {
                CompressionType::Zlib => Qcow2CompressionType::Zlib,
                CompressionType::Zstd => Qcow2CompressionType::Zstd,
            },
        })
    }
}

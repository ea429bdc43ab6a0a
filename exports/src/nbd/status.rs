//! `NBD_CMD_BLOCK_STATUS`: the extents of each selected metadata context
//! over a range, and their encoding as status chunks.
//!
//! One pass of block-status calls serves both `base:allocation` and
//! `qemu:allocation-depth`; each context then merges neighbours with equal
//! status, so descriptors alternate as the spec asks.

use block::{BlockBackend, BlockResult, Extent};

use super::codec::{ReplyMode, Request};
use super::meta::{ExportMeta, ExportedBitmap, MetaContext};
use super::proto::*;
use super::reply::chunk;

/// Descriptors per status chunk: 1 MiB of compact descriptors, well under
/// the spec's 2^20 limit.
pub const MAX_DESCRIPTORS: usize = (1 << 20) / 8;

/// One status descriptor: `length` bytes with `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub length: u64,
    pub flags: u32,
}

/// The most memory one block status request may take while it runs and
/// until its reply is sent, with `contexts` contexts selected: the
/// extents found, and per context the descriptors and their encoding
/// (16 bytes each at most, with extended headers). A request with
/// `NBD_CMD_FLAG_REQ_ONE` takes a few hundred bytes.
pub fn worst_case_bytes(contexts: usize, req_one: bool) -> u64 {
    let descriptors = if req_one { 1 } else { MAX_DESCRIPTORS };
    let per_descriptor =
        std::mem::size_of::<Extent>() + contexts * (std::mem::size_of::<Descriptor>() + 16);
    (descriptors * per_descriptor + contexts * 64) as u64
}

/// The allocation status of `[offset, offset + len)`, at most `max` extents,
/// clamped to the range.
pub async fn allocation(
    backend: &BlockBackend,
    offset: u64,
    len: u64,
    max: usize,
) -> BlockResult<Vec<Extent>> {
    let mut extents = Vec::new();
    let end = offset + len;
    let mut at = offset;
    while at < end && extents.len() < max {
        let mut extent = backend.block_status(at, end - at).await?;
        extent.length = extent.length.min(end - at);
        if extent.length == 0 {
            break;
        }
        at += extent.length;
        extents.push(extent);
    }
    if extents.is_empty() {
        // A node that reports nothing still has a status: unknown data.
        extents.push(Extent {
            length: len,
            data: true,
            zero: false,
            depth: 1,
        });
    }
    Ok(extents)
}

/// The descriptors of one context, merged and limited to `max`.
pub fn descriptors(
    context: MetaContext,
    meta: &ExportMeta,
    extents: &[Extent],
    offset: u64,
    len: u64,
    max: usize,
) -> Vec<Descriptor> {
    match context {
        MetaContext::BaseAllocation => {
            merge(extents.iter().map(|e| (e.length, base_flags(e))), max)
        }
        MetaContext::AllocationDepth => merge(extents.iter().map(|e| (e.length, e.depth)), max),
        MetaContext::DirtyBitmap(index) => bitmap(meta.bitmaps[index].as_ref(), offset, len, max),
    }
}

fn base_flags(extent: &Extent) -> u32 {
    let hole = if extent.data { 0 } else { STATE_HOLE };
    let zero = if extent.zero { STATE_ZERO } else { 0 };
    hole | zero
}

fn bitmap(bitmap: &dyn ExportedBitmap, offset: u64, len: u64, max: usize) -> Vec<Descriptor> {
    let end = offset + len;
    let mut at = offset;
    let runs = std::iter::from_fn(|| {
        if at >= end {
            return None;
        }
        let (dirty, run) = bitmap.extent(at, end - at);
        let run = run.clamp(1, end - at);
        at += run;
        Some((run, if dirty { STATE_DIRTY } else { 0 }))
    });
    merge(runs.take(max), max)
}

/// Joins neighbours with equal flags, keeping at most `max` descriptors.
fn merge(runs: impl Iterator<Item = (u64, u32)>, max: usize) -> Vec<Descriptor> {
    let mut out: Vec<Descriptor> = Vec::new();
    for (length, flags) in runs {
        if let Some(last) = out.last_mut().filter(|last| last.flags == flags) {
            last.length += length;
        } else if out.len() < max {
            out.push(Descriptor { length, flags });
        } else {
            break;
        }
    }
    out
}

/// Appends one status chunk for `context` to `out`.
pub fn encode_chunk(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    req: &Request,
    context: MetaContext,
    descriptors: &[Descriptor],
    last: bool,
) {
    let flags = if last { REPLY_FLAG_DONE } else { 0 };
    let count = descriptors.len();
    if mode == ReplyMode::Extended {
        let mut fixed = [0; 8];
        fixed[..4].copy_from_slice(&context.id().to_be_bytes());
        fixed[4..].copy_from_slice(&(count as u32).to_be_bytes());
        let len = 8 + 16 * count as u64;
        let head = chunk(mode, req, flags, REPLY_TYPE_BLOCK_STATUS_EXT, len, &fixed);
        out.extend_from_slice(head.as_bytes());
        for d in descriptors {
            out.extend_from_slice(&d.length.to_be_bytes());
            out.extend_from_slice(&u64::from(d.flags).to_be_bytes());
        }
    } else {
        let len = 4 + 8 * count as u64;
        let head = chunk(
            mode,
            req,
            flags,
            REPLY_TYPE_BLOCK_STATUS,
            len,
            &context.id().to_be_bytes(),
        );
        out.extend_from_slice(head.as_bytes());
        for d in descriptors {
            // Compact requests are at most 2^32 - 1 bytes long, and
            // descriptors never leave the requested range.
            out.extend_from_slice(&(d.length as u32).to_be_bytes());
            out.extend_from_slice(&d.flags.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(length: u64, data: bool, zero: bool, depth: u32) -> Extent {
        Extent {
            length,
            data,
            zero,
            depth,
        }
    }

    #[test]
    fn contexts_merge_their_own_way() {
        let extents = [
            extent(512, true, false, 1),
            extent(512, true, false, 2),
            extent(1024, false, true, 0),
            extent(512, false, true, 0),
        ];
        let meta = ExportMeta::default();
        let base = descriptors(MetaContext::BaseAllocation, &meta, &extents, 0, 2560, 10);
        assert_eq!(
            base,
            [
                Descriptor {
                    length: 1024,
                    flags: 0
                },
                Descriptor {
                    length: 1536,
                    flags: STATE_HOLE | STATE_ZERO
                }
            ]
        );
        let depth = descriptors(MetaContext::AllocationDepth, &meta, &extents, 0, 2560, 10);
        assert_eq!(
            depth,
            [
                Descriptor {
                    length: 512,
                    flags: 1
                },
                Descriptor {
                    length: 512,
                    flags: 2
                },
                Descriptor {
                    length: 1536,
                    flags: 0
                }
            ]
        );
        let one = descriptors(MetaContext::AllocationDepth, &meta, &extents, 0, 2560, 1);
        assert_eq!(
            one,
            [Descriptor {
                length: 512,
                flags: 1
            }]
        );
    }

    struct Stripes;

    impl ExportedBitmap for Stripes {
        fn name(&self) -> &str {
            "stripes"
        }

        /// Dirty in odd 4 KiB blocks.
        fn extent(&self, offset: u64, len: u64) -> (bool, u64) {
            let block_end = (offset / 4096 + 1) * 4096;
            ((offset / 4096) % 2 == 1, (block_end - offset).min(len))
        }
    }

    #[test]
    fn bitmaps_report_dirty_runs() {
        let meta = ExportMeta {
            allocation_depth: false,
            bitmaps: vec![std::sync::Arc::new(Stripes)],
        };
        let runs = descriptors(MetaContext::DirtyBitmap(0), &meta, &[], 2048, 8192, 10);
        assert_eq!(
            runs,
            [
                Descriptor {
                    length: 2048,
                    flags: 0
                },
                Descriptor {
                    length: 4096,
                    flags: STATE_DIRTY
                },
                Descriptor {
                    length: 2048,
                    flags: 0
                }
            ]
        );
    }

    #[test]
    fn chunks_encode_per_mode() {
        let req = Request {
            flags: 0,
            command: CMD_BLOCK_STATUS,
            cookie: 1,
            offset: 0,
            length: 100,
        };
        let d = [Descriptor {
            length: 100,
            flags: 3,
        }];
        let mut compact = Vec::new();
        encode_chunk(
            &mut compact,
            ReplyMode::Structured,
            &req,
            MetaContext::AllocationDepth,
            &d,
            true,
        );
        assert_eq!(compact.len(), 20 + 4 + 8);
        let mut ext = Vec::new();
        encode_chunk(
            &mut ext,
            ReplyMode::Extended,
            &req,
            MetaContext::BaseAllocation,
            &d,
            false,
        );
        assert_eq!(ext.len(), 32 + 8 + 16);
        assert_eq!(&ext[32..40], &[0, 0, 0, 0, 0, 0, 0, 1]);
    }
}

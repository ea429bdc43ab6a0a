//! Block status: data, zero or unallocated, with the depth in the backing
//! chain where the range was found (1 for this image, 2 for its backing
//! image, ...; 0 where no image of the chain has it).

use super::layout::ClusterKind;
use super::Qcow2;
use crate::driver::Extent;
use crate::error::BlockResult;

impl Qcow2 {
    pub(super) async fn status_at(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        let mapping = self.map(offset, len).await?;
        let here = |data: bool| Extent {
            length: mapping.bytes,
            data,
            zero: !data,
            depth: 1,
        };
        Ok(match mapping.kind {
            ClusterKind::Normal { .. } | ClusterKind::Compressed { .. } => here(true),
            ClusterKind::ZeroPlain | ClusterKind::ZeroAlloc { .. } => here(false),
            ClusterKind::Unallocated => match self.backing() {
                Some(backing) if offset < backing.size() => {
                    let available = mapping.bytes.min(backing.size() - offset);
                    let below = backing.block_status(offset, available).await?;
                    Extent {
                        length: if below.length == 0 {
                            available
                        } else {
                            below.length.min(available)
                        },
                        data: below.data,
                        zero: below.zero,
                        depth: if below.depth == 0 { 0 } else { below.depth + 1 },
                    }
                }
                _ => Extent {
                    length: mapping.bytes,
                    data: false,
                    zero: true,
                    depth: 0,
                },
            },
        })
    }
}

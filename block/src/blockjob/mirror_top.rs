//! `mirror_top`: the filter a mirror puts above its source while it runs
//! (QEMU's of the same name). Every user of the source goes through it,
//! so the job's completion can hand them all to the target in one graph
//! change. It passes everything to the source; in `write-blocking` copy
//! mode a write (write-zeroes, discard) also goes to the target before it
//! completes, so the target keeps up with what the source's users write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::driver::{BlockDriver, WriteFlags, ZeroFlags};
use crate::error::BlockResult;
use crate::iobuf::IoBuf;
use crate::node::{Node, NodeChild};

/// What the filter shares with its job.
pub(super) struct ActiveWrites {
    pub target: Arc<Node>,
    /// `copy-mode=write-blocking`.
    pub enabled: AtomicBool,
}

impl ActiveWrites {
    fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

pub(super) struct MirrorTop {
    pub source: Arc<NodeChild>,
    pub active: Arc<ActiveWrites>,
}

#[async_trait]
impl BlockDriver for MirrorTop {
    fn format_name(&self) -> &'static str {
        "mirror_top"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.source)
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.source.write(offset, buf, flags).await?;
        if self.active.enabled() {
            self.active.target.write(offset, buf, flags).await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.source.write_zeroes(offset, len, flags).await?;
        if self.active.enabled() {
            self.active.target.write_zeroes(offset, len, flags).await?;
        }
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.source.discard(offset, len).await?;
        if self.active.enabled() {
            self.active.target.discard(offset, len).await?;
        }
        Ok(())
    }
}

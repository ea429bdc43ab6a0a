//! What happens when the metadata turns out to be corrupt (QEMU's
//! `qcow2_signal_corruption`): a writable image gets its corrupt bit set
//! and refuses further writes, the first occurrence is reported through the
//! corruption hook (`BLOCK_IMAGE_CORRUPTED`), and the request fails with
//! an I/O error.

use std::sync::atomic::Ordering;

use super::header::incompat;
use super::options::CorruptionEvent;
use super::Qcow2;
use crate::error::{BlockError, BlockResult, ErrorKind};

impl Qcow2 {
    /// Passes `result` through, signalling corruption if it reports some.
    pub(super) async fn check_corruption<T>(&self, result: BlockResult<T>) -> BlockResult<T> {
        match result {
            Err(e) if e.kind == ErrorKind::Corrupt => Err(self.signal_corruption(e, None).await),
            other => other,
        }
    }

    /// Marks the image corrupt (if writable) and reports it the first
    /// time, with the host range concerned if known.
    pub(super) async fn signal_corruption(
        &self,
        error: BlockError,
        range: Option<(u64, u64)>,
    ) -> BlockError {
        let fatal = self.writable();
        if fatal && !self.corrupt.swap(true, Ordering::AcqRel) {
            // Best effort: the image is unusable for writing either way.
            let marked = self
                .header
                .update(|h| h.incompatible_features |= incompat::CORRUPT)
                .await;
            if let Err(e) = marked {
                tracing::error!("qcow2: could not set the corrupt bit: {e}");
            }
        }
        if !self.corruption_reported.swap(true, Ordering::AcqRel) {
            if fatal {
                tracing::error!(
                    "qcow2: Marking image as corrupt: {}; further corruption events will be suppressed",
                    error.message
                );
            } else {
                tracing::error!(
                    "qcow2: Image is corrupt: {}; further non-fatal corruption events will be suppressed",
                    error.message
                );
            }
            if let Some(hook) = &self.facts.on_corruption {
                hook(&CorruptionEvent {
                    message: error.message.clone(),
                    offset: range.map(|(offset, _)| offset),
                    size: range.map(|(_, size)| size),
                    fatal,
                });
            }
        }
        BlockError {
            kind: ErrorKind::Corrupt,
            message: error.message,
            errno: Some(libc::EIO),
        }
    }
}

//! Running one checked request against the export's backend and building
//! its reply.
//!
//! Reads of at least `SPARSE_READ_MIN` bytes ask for block status first and
//! answer holes with `OFFSET_HOLE` chunks, so zero ranges are neither read
//! nor sent.

use std::sync::Arc;

use block::{BlockError, WriteFlags, ZeroFlags};

use super::buffers::{Buffer, BufferPool};
use super::codec::{ReplyMode, Request};
use super::meta::{ExportMeta, MetaContext};
use super::proto::*;
use super::reply::{Reply, SparseRead};
use super::request::Command;
use super::status;
use block::BlockBackend;

/// Structured reads this large look for holes before reading.
const SPARSE_READ_MIN: usize = 64 << 10;
/// Extents one sparse read inspects before reading the rest as data.
const SPARSE_READ_MAX_EXTENTS: usize = 64;
/// Bytes `NBD_CMD_CACHE` reads at a time.
pub const CACHE_CHUNK: u64 = 1 << 20;

/// What a request handler needs from its connection.
pub struct Context {
    pub backend: BlockBackend,
    pub meta: ExportMeta,
    pub mode: ReplyMode,
    /// Writes are made durable before their reply (`writethrough`).
    pub writethrough: bool,
    /// Contexts selected with `NBD_OPT_SET_META_CONTEXT`, in id order.
    pub contexts: Vec<MetaContext>,
    pub buffers: Arc<BufferPool>,
}

/// Executes `command`; `payload` is the write data, if any.
pub async fn execute(
    cx: &Context,
    req: &Request,
    command: Command,
    payload: Option<Buffer>,
) -> Reply {
    let command = if cx.writethrough {
        command.with_fua()
    } else {
        command
    };
    let result = match command {
        Command::Read { df } => return read(cx, req, df).await,
        Command::Write { fua } => {
            let data = payload.as_ref().map_or(&[][..], |p| p.as_ref());
            cx.backend.write(req.offset, data, WriteFlags { fua }).await
        }
        Command::Flush => cx.backend.flush().await,
        Command::Trim { fua } => trim(cx, req, fua).await,
        Command::Cache => cache(cx, req).await,
        Command::WriteZeroes {
            fua,
            may_unmap,
            fast,
        } => {
            if fast && !cx.backend.can_fast_zero() {
                return Reply::error(cx.mode, req, ENOTSUP, "fast zeroing is not supported");
            }
            let flags = ZeroFlags {
                may_unmap,
                no_fallback: fast,
                fua,
            };
            cx.backend.write_zeroes(req.offset, req.length, flags).await
        }
        Command::BlockStatus { req_one } => return block_status(cx, req, req_one).await,
    };
    match result {
        Ok(()) => Reply::ok(cx.mode, req),
        Err(e) => failure(cx, req, &e),
    }
}

fn failure(cx: &Context, req: &Request, err: &BlockError) -> Reply {
    let message = format!("{} failed: {}", command_name(req.command), err.message);
    Reply::error(cx.mode, req, errno_to_nbd(err.errno()), &message)
}

async fn read(cx: &Context, req: &Request, df: bool) -> Reply {
    // The request checks bound reads by the maximum payload.
    let len = req.length as usize;
    if len == 0 {
        return Reply::ok(cx.mode, req);
    }
    let mut buffer = cx.buffers.get(len);
    if cx.mode.structured() && !df && len >= SPARSE_READ_MIN {
        return sparse_read(cx, req, buffer).await;
    }
    match cx.backend.read(req.offset, buffer.as_mut()).await {
        Ok(()) => Reply::read_data(cx.mode, req, buffer),
        Err(e) => failure(cx, req, &e),
    }
}

async fn sparse_read(cx: &Context, req: &Request, mut buffer: Buffer) -> Reply {
    let len = buffer.len();
    // Status is only an optimisation: on failure, read everything.
    let extents = status::allocation(&cx.backend, req.offset, len as u64, SPARSE_READ_MAX_EXTENTS)
        .await
        .unwrap_or_default();
    // Runs of (zero?, range within the read), neighbours merged.
    let mut runs: Vec<(bool, std::ops::Range<usize>)> = Vec::new();
    let mut at = 0;
    for extent in &extents {
        let end = at + extent.length as usize;
        match runs.last_mut() {
            Some((zero, range)) if *zero == extent.zero => range.end = end,
            _ => runs.push((extent.zero, at..end)),
        }
        at = end;
    }
    if at < len {
        match runs.last_mut() {
            Some((false, range)) => range.end = len,
            _ => runs.push((false, at..len)),
        }
    }
    let mut reply = SparseRead::new(cx.mode, req);
    let count = runs.len();
    for (i, (zero, range)) in runs.into_iter().enumerate() {
        let last = i + 1 == count;
        if zero {
            reply.hole(range, last);
            continue;
        }
        let offset = req.offset + range.start as u64;
        if let Err(e) = cx
            .backend
            .read(offset, &mut buffer.as_mut()[range.clone()])
            .await
        {
            return failure(cx, req, &e);
        }
        reply.data(range, last);
    }
    reply.finish(buffer)
}

async fn trim(cx: &Context, req: &Request, fua: bool) -> block::BlockResult<()> {
    cx.backend.discard(req.offset, req.length).await?;
    if fua {
        cx.backend.flush().await?;
    }
    Ok(())
}

/// Reads the range so the next reads find it cached; the data is dropped.
async fn cache(cx: &Context, req: &Request) -> block::BlockResult<()> {
    let end = req.offset + req.length;
    let mut at = req.offset;
    let mut scratch = cx.buffers.get(req.length.min(CACHE_CHUNK) as usize);
    while at < end {
        let n = (end - at).min(CACHE_CHUNK) as usize;
        cx.backend.read(at, &mut scratch.as_mut()[..n]).await?;
        at += n as u64;
    }
    Ok(())
}

async fn block_status(cx: &Context, req: &Request, req_one: bool) -> Reply {
    let max = if req_one { 1 } else { status::MAX_DESCRIPTORS };
    let len = req.length;
    let needs_allocation = cx.contexts.iter().any(|c| {
        matches!(
            c,
            MetaContext::BaseAllocation | MetaContext::AllocationDepth
        )
    });
    let extents = if needs_allocation {
        match status::allocation(&cx.backend, req.offset, len, max).await {
            Ok(extents) => extents,
            Err(e) => return failure(cx, req, &e),
        }
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    for (i, &context) in cx.contexts.iter().enumerate() {
        let descriptors = status::descriptors(context, &cx.meta, &extents, req.offset, len, max);
        let last = i + 1 == cx.contexts.len();
        status::encode_chunk(&mut out, cx.mode, req, context, &descriptors, last);
    }
    Reply::encoded(out)
}

//! Running one checked request against the export's backend and building
//! its reply.
//!
//! An export of an inactive node (`allow-inactive`) serves reads only:
//! every other command fails with `EPERM` until the node is activated,
//! as in QEMU's `nbd_handle_request`.
//!
//! Large reads of data that lives in an in-memory file are spliced from
//! the file to the socket (no copy). Other structured reads send the zero
//! parts of what they read as `OFFSET_HOLE` chunks, so zero ranges cost
//! nothing on the wire. Zeroes are found in the data rather than by block
//! status, which on some file systems (tmpfs) scans the whole file.

use std::ops::Range;
use std::sync::Arc;

use block::node::buffer_is_zero;
use block::{BlockBackend, BlockError, IoBuf, WriteFlags, ZeroFlags};

use super::codec::{ReplyMode, Request};
use super::meta::{ExportMeta, MetaContext};
use super::proto::*;
use super::reply::{Reply, SparseRead};
use super::request::Command;
use super::splice::FileRange;
use super::status;
use crate::buffers::{Buffer, BufferPool};

/// Structured reads are checked for zeroes in pieces this large (and only
/// reads at least this large); zero pieces are sent as holes.
const HOLE_GRANULE: usize = 64 << 10;
/// Reads at least this long are spliced when their data lives in a file
/// that reads never wait on.
const SPLICE_MIN_LEN: usize = 64 << 10;
/// Bytes `NBD_CMD_CACHE` reads at a time.
pub const CACHE_CHUNK: u64 = 1 << 20;

/// What a request handler needs from its connection.
pub struct Context {
    pub backend: BlockBackend,
    pub meta: ExportMeta,
    pub mode: ReplyMode,
    /// Contexts selected with `NBD_OPT_SET_META_CONTEXT`, in id order.
    pub contexts: Vec<MetaContext>,
    pub buffers: Arc<BufferPool>,
    /// Whether reads may be answered by splicing file pages into the
    /// socket (not under TLS, which must see every byte).
    pub splice: bool,
}

/// Executes `command`; `payload` is the write data, if any.
pub async fn execute(
    cx: &Context,
    req: &Request,
    command: Command,
    payload: Option<Buffer>,
) -> Reply {
    if !matches!(command, Command::Read { .. }) && !cx.backend.node().is_active() {
        return Reply::error(cx.mode, req, EPERM, "export is inactive");
    }
    let result = match command {
        Command::Read { df } => return read(cx, req, df).await,
        Command::Write { fua } => {
            let data = payload.map_or_else(IoBuf::empty, IoBuf::from_owner);
            cx.backend
                .write(
                    req.offset,
                    &data,
                    WriteFlags {
                        fua,
                        ..WriteFlags::default()
                    },
                )
                .await
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

/// The error reply of a failed request. The client learns what failed and
/// the errno's text, not the node's own message, which may name server
/// files (that goes to the log).
fn failure(cx: &Context, req: &Request, err: &BlockError) -> Reply {
    let command = command_name(req.command);
    tracing::debug!("NBD {command} failed: {}", err.message);
    let reason = std::io::Error::from_raw_os_error(err.errno());
    let message = format!("{command} failed: {}", block::error::os_error_text(&reason));
    Reply::error(cx.mode, req, errno_to_nbd(err.errno()), &message)
}

async fn read(cx: &Context, req: &Request, df: bool) -> Reply {
    // The request checks bound reads by the maximum payload.
    let len = req.length as usize;
    if len == 0 {
        return Reply::ok(cx.mode, req);
    }
    if cx.splice && len >= SPLICE_MIN_LEN {
        if let Some(range) = FileRange::of(&cx.backend, req.offset, len) {
            return Reply::read_file(cx.mode, req, range);
        }
    }
    let data = IoBuf::from_owner(cx.buffers.get(len));
    if let Err(e) = cx.backend.read(req.offset, &data).await {
        return failure(cx, req, &e);
    }
    let buffer = take_back(cx, data);
    if cx.mode.structured() && !df && len >= HOLE_GRANULE {
        return sparse_reply(cx.mode, req, buffer);
    }
    Reply::read_data(cx.mode, req, buffer)
}

/// The pool buffer a read filled. The block layer keeps no view of a
/// request's buffer once the request is done; should one be left, the
/// data is copied rather than shared with it.
fn take_back(cx: &Context, data: IoBuf) -> Buffer {
    data.into_owner::<Buffer>().unwrap_or_else(|data| {
        let mut copy = cx.buffers.get(data.len());
        data.copy_to_slice(0, copy.as_mut());
        copy
    })
}

/// Sends the zero granules of a read as holes and the rest as data.
fn sparse_reply(mode: ReplyMode, req: &Request, buffer: Buffer) -> Reply {
    let mut runs: Vec<(bool, Range<usize>)> = Vec::new();
    for start in (0..buffer.len()).step_by(HOLE_GRANULE) {
        let end = (start + HOLE_GRANULE).min(buffer.len());
        let zero = buffer_is_zero(&buffer.as_ref()[start..end]);
        match runs.last_mut() {
            Some((was_zero, range)) if *was_zero == zero => range.end = end,
            _ => runs.push((zero, start..end)),
        }
    }
    if let [(false, _)] = runs[..] {
        return Reply::read_data(mode, req, buffer);
    }
    let mut reply = SparseRead::new(mode, req);
    let count = runs.len();
    for (i, (zero, range)) in runs.into_iter().enumerate() {
        let last = i + 1 == count;
        if zero {
            reply.hole(range, last);
        } else {
            reply.data(range, last);
        }
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
    let scratch = IoBuf::from_owner(cx.buffers.get(req.length.min(CACHE_CHUNK) as usize));
    while at < end {
        let n = (end - at).min(CACHE_CHUNK) as usize;
        cx.backend.read(at, &scratch.slice(0..n)).await?;
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

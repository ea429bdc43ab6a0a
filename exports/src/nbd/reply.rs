//! Replies of the transmission phase as the writer sends them: fixed bytes
//! kept inline, payload left in the buffer the data was read into.
//!
//! A reply is a sequence of segments, byte slices or a range of a file;
//! the writer gathers the slices of many replies into one vectored write
//! and splices file ranges. Builders here pick simple, structured or
//! extended framing from the connection's [`ReplyMode`].

use std::ops::Range;

use super::codec::{ReplyHead, ReplyMode, Request};
use super::proto::*;
use super::splice::FileRange;
use crate::buffers::Buffer;

/// A piece of a reply on the wire.
pub enum Segment<'a> {
    Bytes(&'a [u8]),
    /// Read data sent straight from its file.
    File(&'a FileRange),
}

impl Segment<'_> {
    pub fn len(&self) -> usize {
        match self {
            Segment::Bytes(bytes) => bytes.len(),
            Segment::File(range) => range.len,
        }
    }
}

/// One reply, ready to be written.
pub struct Reply {
    head: ReplyHead,
    body: Body,
    /// Total bytes on the wire.
    len: usize,
    /// The payload bytes its request counts against the connection's
    /// in-flight limit, released once the reply is written.
    cost: u32,
}

enum Body {
    None,
    /// Bytes of a buffer (read data) after the head.
    Buffer(Buffer, Range<usize>),
    /// Owned bytes after the head (error messages, block status).
    Bytes(Vec<u8>),
    /// Read data spliced from a file after the head.
    File(FileRange),
    /// Alternating metadata and data ranges (sparse reads).
    Parts {
        buffer: Buffer,
        meta: Vec<u8>,
        parts: Vec<Part>,
    },
}

enum Part {
    Meta(Range<usize>),
    Data(Range<usize>),
}

impl Reply {
    /// Success without payload. A simple reply where the mode allows one:
    /// with structured replies on, the spec allows it for everything but a
    /// read (QEMU sends it too), and clients read it in one piece.
    pub fn ok(mode: ReplyMode, req: &Request) -> Reply {
        let simple = match mode {
            ReplyMode::Simple => true,
            ReplyMode::Structured => req.command != CMD_READ,
            ReplyMode::Extended => false,
        };
        let head = if simple {
            ReplyHead::simple(0, req.cookie)
        } else {
            chunk(mode, req, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, &[])
        };
        Reply::new(head, Body::None)
    }

    /// A failed request: a simple reply with `error`, or an error chunk
    /// carrying `message` for a person to read.
    pub fn error(mode: ReplyMode, req: &Request, error: u32, message: &str) -> Reply {
        if mode == ReplyMode::Simple {
            return Reply::new(ReplyHead::simple(error, req.cookie), Body::None);
        }
        let message = truncate_message(message);
        let mut fixed = [0; 6];
        fixed[..4].copy_from_slice(&error.to_be_bytes());
        fixed[4..].copy_from_slice(&(message.len() as u16).to_be_bytes());
        let len = (fixed.len() + message.len()) as u64;
        let head = chunk(mode, req, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, len, &fixed);
        Reply::new(head, Body::Bytes(message.as_bytes().to_vec()))
    }

    /// A read whose whole range is in `buffer`: a simple reply with data, or
    /// one final data chunk.
    pub fn read_data(mode: ReplyMode, req: &Request, buffer: Buffer) -> Reply {
        let len = buffer.len();
        Reply::new(read_head(mode, req, len), Body::Buffer(buffer, 0..len))
    }

    /// A read whose data goes straight from a file: a simple reply or one
    /// final data chunk, as [`Reply::read_data`].
    pub fn read_file(mode: ReplyMode, req: &Request, range: FileRange) -> Reply {
        Reply::new(read_head(mode, req, range.len), Body::File(range))
    }

    /// A reply made of pre-encoded chunks (block status).
    pub fn encoded(bytes: Vec<u8>) -> Reply {
        Reply::new(ReplyHead::default(), Body::Bytes(bytes))
    }

    fn new(head: ReplyHead, body: Body) -> Reply {
        let mut reply = Reply {
            head,
            body,
            len: 0,
            cost: 0,
        };
        let mut len = 0;
        reply.visit(|segment| {
            len += segment.len();
            true
        });
        reply.len = len;
        reply
    }

    /// Records what the request counts against the in-flight limit.
    pub fn set_cost(&mut self, cost: u32) {
        self.cost = cost;
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` on each segment in order until it returns false.
    pub fn visit<'a>(&'a self, mut f: impl FnMut(Segment<'a>) -> bool) {
        let head = self.head.as_bytes();
        if !head.is_empty() && !f(Segment::Bytes(head)) {
            return;
        }
        match &self.body {
            Body::None => {}
            Body::Buffer(buffer, range) => {
                if !range.is_empty() {
                    f(Segment::Bytes(&buffer.as_ref()[range.clone()]));
                }
            }
            Body::Bytes(bytes) => {
                if !bytes.is_empty() {
                    f(Segment::Bytes(bytes));
                }
            }
            Body::File(range) => {
                f(Segment::File(range));
            }
            Body::Parts {
                buffer,
                meta,
                parts,
            } => {
                for part in parts {
                    let slice = match part {
                        Part::Meta(r) => &meta[r.clone()],
                        Part::Data(r) => &buffer.as_ref()[r.clone()],
                    };
                    if !f(Segment::Bytes(slice)) {
                        return;
                    }
                }
            }
        }
    }
}

/// Builds the reply to a structured read from content chunks: data ranges
/// of the read buffer and holes.
pub struct SparseRead {
    mode: ReplyMode,
    req: Request,
    meta: Vec<u8>,
    parts: Vec<Part>,
}

impl SparseRead {
    pub fn new(mode: ReplyMode, req: &Request) -> SparseRead {
        SparseRead {
            mode,
            req: *req,
            meta: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// Bytes `range` of the read (relative to the request offset) are data
    /// in the buffer at the same positions.
    pub fn data(&mut self, range: Range<usize>, last: bool) {
        let offset = self.req.offset + range.start as u64;
        let len = 8 + range.len() as u64;
        self.push_head(last, REPLY_TYPE_OFFSET_DATA, len, &offset.to_be_bytes());
        self.parts.push(Part::Data(range));
    }

    /// Bytes `range` of the read are zeroes.
    pub fn hole(&mut self, range: Range<usize>, last: bool) {
        let mut fixed = [0; 12];
        fixed[..8].copy_from_slice(&(self.req.offset + range.start as u64).to_be_bytes());
        // A read never exceeds the maximum payload, so a hole fits 32 bits.
        fixed[8..].copy_from_slice(&(range.len() as u32).to_be_bytes());
        self.push_head(last, REPLY_TYPE_OFFSET_HOLE, 12, &fixed);
    }

    fn push_head(&mut self, last: bool, kind: u16, len: u64, fixed: &[u8]) {
        let flags = if last { REPLY_FLAG_DONE } else { 0 };
        let head = chunk(self.mode, &self.req, flags, kind, len, fixed);
        let start = self.meta.len();
        self.meta.extend_from_slice(head.as_bytes());
        self.parts.push(Part::Meta(start..self.meta.len()));
    }

    pub fn finish(self, buffer: Buffer) -> Reply {
        Reply::new(
            ReplyHead::default(),
            Body::Parts {
                buffer,
                meta: self.meta,
                parts: self.parts,
            },
        )
    }
}

/// The header of a read answered whole: a simple reply, or the head of
/// one final data chunk of `len` bytes (with its offset).
fn read_head(mode: ReplyMode, req: &Request, len: usize) -> ReplyHead {
    match mode {
        ReplyMode::Simple => ReplyHead::simple(0, req.cookie),
        _ => chunk(
            mode,
            req,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            8 + len as u64,
            &req.offset.to_be_bytes(),
        ),
    }
}

/// A chunk header for `req` with its fixed payload fields.
pub fn chunk(
    mode: ReplyMode,
    req: &Request,
    flags: u16,
    kind: u16,
    payload_len: u64,
    fixed: &[u8],
) -> ReplyHead {
    ReplyHead::chunk(
        mode,
        flags,
        kind,
        req.cookie,
        req.offset,
        payload_len,
        fixed,
    )
}

/// Error messages are strings: at most `MAX_STRING_LEN` bytes, cut at a
/// character boundary.
fn truncate_message(message: &str) -> &str {
    if message.len() <= MAX_STRING_LEN {
        return message;
    }
    let mut end = MAX_STRING_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::super::codec::{be16, be32, be64};
    use super::*;
    use crate::buffers::BufferPool;

    fn req(offset: u64, length: u64) -> Request {
        Request {
            flags: 0,
            command: CMD_READ,
            cookie: 5,
            offset,
            length,
        }
    }

    fn bytes(reply: &Reply) -> Vec<u8> {
        let mut out = Vec::new();
        reply.visit(|segment| {
            match segment {
                Segment::Bytes(bytes) => out.extend_from_slice(bytes),
                Segment::File(_) => panic!("no file data here"),
            }
            true
        });
        assert_eq!(out.len(), reply.len());
        out
    }

    #[test]
    fn simple_read_is_header_then_data() {
        let pool = BufferPool::new();
        let mut buf = pool.get(4);
        buf.as_mut().copy_from_slice(b"abcd");
        let out = bytes(&Reply::read_data(ReplyMode::Simple, &req(0, 4), buf));
        assert_eq!(out.len(), 16 + 4);
        assert_eq!(be32(&out, 0), SIMPLE_REPLY_MAGIC);
        assert_eq!(&out[16..], b"abcd");
    }

    #[test]
    fn error_chunk_carries_message() {
        let out = bytes(&Reply::error(
            ReplyMode::Structured,
            &req(0, 1),
            EINVAL,
            "bad",
        ));
        assert_eq!(be16(&out, 6), REPLY_TYPE_ERROR);
        assert_eq!(be32(&out, 16), 9);
        assert_eq!(be32(&out, 20), EINVAL);
        assert_eq!(be16(&out, 24), 3);
        assert_eq!(&out[26..], b"bad");
    }

    #[test]
    fn sparse_read_interleaves_data_and_holes() {
        let pool = BufferPool::new();
        let mut buf = pool.get(12);
        buf.as_mut().copy_from_slice(b"dataXXXXtail");
        let mut sparse = SparseRead::new(ReplyMode::Extended, &req(100, 12));
        sparse.data(0..4, false);
        sparse.hole(4..8, false);
        sparse.data(8..12, true);
        let out = bytes(&sparse.finish(buf));
        // data chunk: 32 header + 8 offset + 4 data
        assert_eq!(be16(&out, 6), REPLY_TYPE_OFFSET_DATA);
        assert_eq!(be64(&out, 16), 100);
        assert_eq!(be64(&out, 32), 100);
        assert_eq!(&out[40..44], b"data");
        // hole chunk
        assert_eq!(be16(&out, 44 + 6), REPLY_TYPE_OFFSET_HOLE);
        assert_eq!(be64(&out, 44 + 32), 104);
        assert_eq!(be32(&out, 44 + 40), 4);
        // final data chunk has DONE
        let last = 44 + 44;
        assert_eq!(be16(&out, last + 4), REPLY_FLAG_DONE);
        assert_eq!(&out[last + 40..], b"tail");
    }
}

//! Byte layouts of the transmission phase: decoding request headers and
//! encoding reply headers (simple, structured and extended).
//!
//! Pure functions over byte arrays; no I/O and no policy.

use super::proto::*;

/// The reply style negotiated for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplyMode {
    /// Only simple replies (no `NBD_OPT_STRUCTURED_REPLY`).
    Simple,
    /// Structured reply chunks with compact headers.
    Structured,
    /// Extended headers for both requests and replies.
    Extended,
}

impl ReplyMode {
    /// Length of a request header in this mode.
    pub fn request_len(self) -> usize {
        match self {
            ReplyMode::Extended => EXTENDED_REQUEST_LEN,
            _ => REQUEST_LEN,
        }
    }

    /// Whether replies can carry chunks (and so payloads beyond read data).
    pub fn structured(self) -> bool {
        self != ReplyMode::Simple
    }
}

/// One decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    /// Effect length, or payload length for a write (or any request with
    /// `NBD_CMD_FLAG_PAYLOAD_LEN` under extended headers).
    pub length: u64,
}

/// A request header whose magic is not the one the negotiated mode expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMagic(pub u32);

impl Request {
    /// Decodes a header of `mode.request_len()` bytes.
    pub fn decode(mode: ReplyMode, bytes: &[u8]) -> Result<Request, BadMagic> {
        let magic = be32(bytes, 0);
        let expected = match mode {
            ReplyMode::Extended => EXTENDED_REQUEST_MAGIC,
            _ => REQUEST_MAGIC,
        };
        if magic != expected {
            return Err(BadMagic(magic));
        }
        let length = match mode {
            ReplyMode::Extended => be64(bytes, 24),
            _ => u64::from(be32(bytes, 24)),
        };
        Ok(Request {
            flags: be16(bytes, 4),
            command: be16(bytes, 6),
            cookie: be64(bytes, 8),
            offset: be64(bytes, 16),
            length,
        })
    }
}

/// Room for the largest fixed part of a reply: an extended chunk header
/// plus the fixed fields of its payload.
pub const MAX_REPLY_HEAD: usize = EXTENDED_REPLY_LEN + 16;

/// The fixed bytes at the start of a reply (header and fixed payload fields),
/// kept inline so that building a reply allocates nothing.
#[derive(Clone, Copy)]
pub struct ReplyHead {
    bytes: [u8; MAX_REPLY_HEAD],
    len: usize,
}

impl ReplyHead {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, data: &[u8]) {
        self.bytes[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// A simple reply header.
    pub fn simple(error: u32, cookie: u64) -> ReplyHead {
        let mut head = ReplyHead::default();
        head.push(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        head.push(&error.to_be_bytes());
        head.push(&cookie.to_be_bytes());
        head
    }

    /// A chunk header (structured or extended by `mode`) followed by the
    /// `fixed` payload fields; `payload_len` counts `fixed` and any payload
    /// the caller sends after it. `offset` is the request's offset (only
    /// extended headers carry it).
    pub fn chunk(
        mode: ReplyMode,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        payload_len: u64,
        fixed: &[u8],
    ) -> ReplyHead {
        let mut head = ReplyHead::default();
        if mode == ReplyMode::Extended {
            head.push(&EXTENDED_REPLY_MAGIC.to_be_bytes());
            head.push(&flags.to_be_bytes());
            head.push(&kind.to_be_bytes());
            head.push(&cookie.to_be_bytes());
            head.push(&offset.to_be_bytes());
            head.push(&payload_len.to_be_bytes());
        } else {
            head.push(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            head.push(&flags.to_be_bytes());
            head.push(&kind.to_be_bytes());
            head.push(&cookie.to_be_bytes());
            // Compact chunks never exceed 32 bits: payloads are bounded by
            // the maximum payload size.
            head.push(&(payload_len as u32).to_be_bytes());
        }
        head.push(fixed);
        head
    }
}

impl Default for ReplyHead {
    /// No bytes: for replies whose chunks are all in the body.
    fn default() -> ReplyHead {
        ReplyHead {
            bytes: [0; MAX_REPLY_HEAD],
            len: 0,
        }
    }
}

impl std::fmt::Debug for ReplyHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReplyHead").field(&self.as_bytes()).finish()
    }
}

/// Encodes one option reply (header and data) onto `out`.
pub fn push_option_reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[&[u8]]) {
    let len: usize = data.iter().map(|d| d.len()).sum();
    out.extend_from_slice(&REP_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    // Option replies are built from bounded strings and lists.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for d in data {
        out.extend_from_slice(d);
    }
}

pub fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

pub fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

pub fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_compact_and_extended_requests() {
        let mut compact = Vec::new();
        compact.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        compact.extend_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        compact.extend_from_slice(&CMD_WRITE.to_be_bytes());
        compact.extend_from_slice(&7u64.to_be_bytes());
        compact.extend_from_slice(&4096u64.to_be_bytes());
        compact.extend_from_slice(&512u32.to_be_bytes());
        let req = Request::decode(ReplyMode::Structured, &compact).unwrap();
        assert_eq!(
            req,
            Request {
                flags: CMD_FLAG_FUA,
                command: CMD_WRITE,
                cookie: 7,
                offset: 4096,
                length: 512
            }
        );
        assert_eq!(
            Request::decode(ReplyMode::Extended, &[compact.clone(), vec![0; 4]].concat()),
            Err(BadMagic(REQUEST_MAGIC))
        );

        let mut extended = Vec::new();
        extended.extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        extended.extend_from_slice(&0u16.to_be_bytes());
        extended.extend_from_slice(&CMD_WRITE_ZEROES.to_be_bytes());
        extended.extend_from_slice(&9u64.to_be_bytes());
        extended.extend_from_slice(&0u64.to_be_bytes());
        extended.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let req = Request::decode(ReplyMode::Extended, &extended).unwrap();
        assert_eq!(req.length, 1 << 40);
        assert_eq!(req.command, CMD_WRITE_ZEROES);
    }

    #[test]
    fn encodes_reply_heads() {
        let simple = ReplyHead::simple(EPERM, 0x0102);
        assert_eq!(
            simple.as_bytes(),
            &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2]
        );
        let chunk = ReplyHead::chunk(
            ReplyMode::Structured,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            3,
            0,
            8 + 512,
            &4096u64.to_be_bytes(),
        );
        assert_eq!(chunk.as_bytes().len(), STRUCTURED_REPLY_LEN + 8);
        assert_eq!(be32(chunk.as_bytes(), 16), 520);
        let ext = ReplyHead::chunk(ReplyMode::Extended, 1, 0, 3, 77, 0, &[]);
        assert_eq!(ext.as_bytes().len(), EXTENDED_REPLY_LEN);
        assert_eq!(be32(ext.as_bytes(), 0), EXTENDED_REPLY_MAGIC);
        assert_eq!(be64(ext.as_bytes(), 16), 77);
    }
}

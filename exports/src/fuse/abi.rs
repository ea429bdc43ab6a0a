//! The FUSE kernel protocol, as far as the export speaks it: the messages
//! of `include/uapi/linux/fuse.h` (protocol 7.23 to 7.38) that one
//! regular file needs, decoded from the kernel's bytes and encoded for
//! its replies.
//!
//! Everything here is plain bytes in the machine's order, read and
//! written field by field: a message too short for its arguments is a
//! [`BadRequest`], never a panic. This module owns no descriptor and
//! does no I/O (see `session`).

/// The inode of the mountpoint, the only one the export has.
pub const ROOT_ID: u64 = 1;
/// The protocol version offered; the kernel's minor may be lower, down
/// to [`MIN_MINOR`].
pub const MAJOR: u32 = 7;
pub const MINOR: u32 = 38;
/// The oldest minor spoken: every structure then has its current size
/// (`fuse_init_out` grew last in 7.23).
pub const MIN_MINOR: u32 = 23;

/// `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// `fuse_in_header` and `fuse_write_in`: what precedes a write's payload.
pub const WRITE_HEADER_LEN: usize = IN_HEADER_LEN + 40;

/// `FUSE_*` opcodes.
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const LSEEK: u32 = 46;
}

/// `FUSE_*` flags of `fuse_init_in` and `fuse_init_out`.
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const ASYNC_DIO: u32 = 1 << 15;
    pub const MAX_PAGES: u32 = 1 << 22;
}

/// `FATTR_*` bits of `fuse_setattr_in.valid`.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const CTIME: u32 = 1 << 10;
}

/// A message the kernel should not have sent: too short, or with a
/// length that disagrees with what was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRequest;

/// Fields read in order from a message, each checked against its end.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BadRequest> {
        let (field, rest) = self.0.split_first_chunk::<N>().ok_or(BadRequest)?;
        self.0 = rest;
        Ok(*field)
    }

    fn u16(&mut self) -> Result<u16, BadRequest> {
        self.take().map(u16::from_ne_bytes)
    }

    fn u32(&mut self) -> Result<u32, BadRequest> {
        self.take().map(u32::from_ne_bytes)
    }

    fn u64(&mut self) -> Result<u64, BadRequest> {
        self.take().map(u64::from_ne_bytes)
    }

    fn skip(&mut self, len: usize) -> Result<(), BadRequest> {
        self.0 = self.0.get(len..).ok_or(BadRequest)?;
        Ok(())
    }
}

/// `fuse_in_header`, less what the export does not use (the caller's
/// ids: the kernel checks permissions itself, `default_permissions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    /// The whole message's length, header included.
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
}

impl InHeader {
    pub fn parse(bytes: &[u8]) -> Result<InHeader, BadRequest> {
        let mut fields = Fields(bytes);
        let header = InHeader {
            len: fields.u32()?,
            opcode: fields.u32()?,
            unique: fields.u64()?,
            nodeid: fields.u64()?,
        };
        // uid, gid, pid, total_extlen, padding.
        fields.skip(3 * 4)?;
        fields.u16()?;
        fields.u16()?;
        Ok(header)
    }
}

/// `fuse_setattr_in`, as far as Linux fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetAttr {
    pub valid: u32,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl SetAttr {
    fn field<T>(&self, bit: u32, value: T) -> Option<T> {
        (self.valid & bit != 0).then_some(value)
    }

    pub fn mode(&self) -> Option<u32> {
        self.field(fattr::MODE, self.mode)
    }

    pub fn uid(&self) -> Option<u32> {
        self.field(fattr::UID, self.uid)
    }

    pub fn gid(&self) -> Option<u32> {
        self.field(fattr::GID, self.gid)
    }

    pub fn size(&self) -> Option<u64> {
        self.field(fattr::SIZE, self.size)
    }

    /// Whether any time is to change (not supported, as in QSD).
    pub fn times(&self) -> bool {
        self.valid & (fattr::ATIME | fattr::MTIME | fattr::CTIME) != 0
    }
}

/// A request, its arguments decoded (a write's payload is apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
    },
    Lookup,
    /// `FORGET` and `BATCH_FORGET`: no reply.
    Forget,
    GetAttr,
    SetAttr(SetAttr),
    Open,
    Read {
        offset: u64,
        size: u32,
    },
    /// The payload is the `size` bytes after the arguments.
    Write {
        offset: u64,
        size: u32,
    },
    Statfs,
    Release,
    Fsync,
    Flush,
    Fallocate {
        offset: u64,
        length: u64,
        mode: u32,
    },
    Lseek {
        offset: u64,
        whence: u32,
    },
    /// No reply: the export finishes every request anyway.
    Interrupt,
    Destroy,
    /// Anything else: `ENOSYS`.
    Unsupported(u32),
}

impl Request {
    /// Decodes the arguments `args` (what follows the header) of a
    /// request with `opcode`. Arguments longer than this protocol's are
    /// accepted (a newer kernel may append); shorter ones are not.
    pub fn parse(opcode: u32, args: &[u8]) -> Result<Request, BadRequest> {
        let mut f = Fields(args);
        Ok(match opcode {
            opcode::INIT => Request::Init {
                major: f.u32()?,
                minor: f.u32()?,
                max_readahead: f.u32()?,
                flags: f.u32()?,
            },
            opcode::LOOKUP => Request::Lookup,
            opcode::FORGET | opcode::BATCH_FORGET => Request::Forget,
            opcode::GETATTR => {
                f.skip(16)?;
                Request::GetAttr
            }
            opcode::SETATTR => {
                let valid = f.u32()?;
                // padding, fh
                f.skip(4 + 8)?;
                let size = f.u64()?;
                // lock_owner, atime, mtime, ctime, their nanoseconds
                f.skip(4 * 8 + 3 * 4)?;
                let mode = f.u32()?;
                f.skip(4)?;
                let uid = f.u32()?;
                let gid = f.u32()?;
                f.skip(4)?;
                Request::SetAttr(SetAttr {
                    valid,
                    size,
                    mode,
                    uid,
                    gid,
                })
            }
            opcode::OPEN => {
                f.skip(8)?;
                Request::Open
            }
            opcode::READ | opcode::WRITE => {
                f.skip(8)?;
                let offset = f.u64()?;
                let size = f.u32()?;
                // read_flags or write_flags, lock_owner, flags, padding
                f.skip(4 + 8 + 4 + 4)?;
                if opcode == opcode::READ {
                    Request::Read { offset, size }
                } else {
                    Request::Write { offset, size }
                }
            }
            opcode::STATFS => Request::Statfs,
            opcode::RELEASE => {
                f.skip(24)?;
                Request::Release
            }
            opcode::FSYNC => {
                f.skip(16)?;
                Request::Fsync
            }
            opcode::FLUSH => {
                f.skip(24)?;
                Request::Flush
            }
            opcode::FALLOCATE => {
                f.skip(8)?;
                let offset = f.u64()?;
                let length = f.u64()?;
                let mode = f.u32()?;
                f.skip(4)?;
                Request::Fallocate {
                    offset,
                    length,
                    mode,
                }
            }
            opcode::LSEEK => {
                f.skip(8)?;
                let offset = f.u64()?;
                let whence = f.u32()?;
                f.skip(4)?;
                Request::Lseek { offset, whence }
            }
            opcode::INTERRUPT => {
                f.skip(8)?;
                Request::Interrupt
            }
            opcode::DESTROY => Request::Destroy,
            other => Request::Unsupported(other),
        })
    }

    /// Whether the kernel expects no reply.
    pub fn is_one_way(&self) -> bool {
        matches!(self, Request::Forget | Request::Interrupt)
    }
}

/// A reply's fields, written in order in the machine's byte order.
#[derive(Default)]
pub struct Encoder(Vec<u8>);

impl Encoder {
    pub fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }

    pub fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }

    pub fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }

    pub fn zeroes(mut self, len: usize) -> Self {
        self.0.resize(self.0.len() + len, 0);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// `fuse_out_header` of a reply `payload_len` bytes long after it.
pub fn out_header(unique: u64, error: i32, payload_len: usize) -> [u8; OUT_HEADER_LEN] {
    let len = (OUT_HEADER_LEN + payload_len) as u32;
    let mut header = [0; OUT_HEADER_LEN];
    header[..4].copy_from_slice(&len.to_ne_bytes());
    header[4..8].copy_from_slice(&error.to_ne_bytes());
    header[8..].copy_from_slice(&unique.to_ne_bytes());
    header
}

/// What `fuse_init_out` answers.
pub struct InitOut {
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub max_pages: u16,
}

impl InitOut {
    pub fn encode(&self) -> Vec<u8> {
        Encoder::default()
            .u32(MAJOR)
            .u32(self.minor)
            .u32(self.max_readahead)
            .u32(self.flags)
            .u16(self.max_background)
            .u16(self.congestion_threshold)
            .u32(self.max_write)
            // time_gran: nanoseconds
            .u32(1)
            .u16(self.max_pages)
            // map_alignment, flags2, unused
            .u16(0)
            .u32(0)
            .zeroes(7 * 4)
            .finish()
    }
}

/// Only the version, for a kernel whose major version is newer: it then
/// sends another `INIT` in ours.
pub fn init_version_only() -> Vec<u8> {
    Encoder::default().u32(MAJOR).u32(MINOR).finish()
}

/// The file's attributes (`fuse_attr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Every time of the file: seconds and nanoseconds since the epoch.
    pub time: (u64, u32),
    /// Type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

/// `fuse_attr_out`: `attr` valid for `valid_s` seconds.
pub fn attr_out(valid_s: u64, attr: &Attr) -> Vec<u8> {
    let (secs, nsecs) = attr.time;
    Encoder::default()
        .u64(valid_s)
        .u32(0)
        .u32(0)
        .u64(ROOT_ID)
        .u64(attr.size)
        .u64(attr.blocks)
        .u64(secs)
        .u64(secs)
        .u64(secs)
        .u32(nsecs)
        .u32(nsecs)
        .u32(nsecs)
        .u32(attr.mode)
        // nlink
        .u32(1)
        .u32(attr.uid)
        .u32(attr.gid)
        // rdev
        .u32(0)
        .u32(attr.blksize)
        // flags
        .u32(0)
        .finish()
}

/// `fuse_open_out`: no file handle, no flags (cached pages are dropped
/// on open, as QSD's export has them).
pub fn open_out() -> Vec<u8> {
    Encoder::default().u64(0).u32(0).u32(0).finish()
}

/// `fuse_write_out`.
pub fn write_out(size: u32) -> Vec<u8> {
    Encoder::default().u32(size).u32(0).finish()
}

/// `fuse_lseek_out`.
pub fn lseek_out(offset: u64) -> Vec<u8> {
    Encoder::default().u64(offset).finish()
}

/// `fuse_statfs_out` of a file system with nothing to say but a block
/// size of 512 and names up to 255 bytes.
pub fn statfs_out() -> Vec<u8> {
    Encoder::default()
        .zeroes(5 * 8)
        .u32(512)
        .u32(255)
        .zeroes(4 + 4 + 6 * 4)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32, opcode: u32, unique: u64) -> Vec<u8> {
        Encoder::default()
            .u32(len)
            .u32(opcode)
            .u64(unique)
            .u64(ROOT_ID)
            .zeroes(16)
            .finish()
    }

    #[test]
    fn headers_and_replies_have_the_uapi_sizes() {
        assert_eq!(header(40, 3, 7).len(), IN_HEADER_LEN);
        let parsed = InHeader::parse(&header(40, 3, 7)).unwrap();
        assert_eq!((parsed.len, parsed.opcode, parsed.unique), (40, 3, 7));
        assert_eq!(InHeader::parse(&header(40, 3, 7)[..39]), Err(BadRequest));
        let init = InitOut {
            minor: MINOR,
            max_readahead: 0,
            flags: 0,
            max_background: 1,
            congestion_threshold: 1,
            max_write: 4096,
            max_pages: 1,
        };
        assert_eq!(init.encode().len(), 64);
        let attr = Attr {
            size: 1,
            blocks: 1,
            time: (0, 0),
            mode: 0,
            uid: 0,
            gid: 0,
            blksize: 512,
        };
        assert_eq!(attr_out(1, &attr).len(), 16 + 88);
        assert_eq!(open_out().len(), 16);
        assert_eq!(write_out(1).len(), 8);
        assert_eq!(lseek_out(1).len(), 8);
        assert_eq!(statfs_out().len(), 80);
    }

    #[test]
    fn arguments_are_decoded_and_short_ones_refused() {
        let write = Encoder::default()
            .u64(9)
            .u64(4096)
            .u32(512)
            .zeroes(20)
            .finish();
        assert_eq!(
            Request::parse(opcode::WRITE, &write),
            Ok(Request::Write {
                offset: 4096,
                size: 512
            })
        );
        let setattr = Encoder::default()
            .u32(fattr::SIZE | fattr::MODE)
            .zeroes(12)
            .u64(1 << 20)
            .zeroes(44)
            .u32(0o644)
            .zeroes(16)
            .finish();
        assert_eq!(setattr.len(), 88);
        let Ok(Request::SetAttr(attr)) = Request::parse(opcode::SETATTR, &setattr) else {
            panic!("setattr")
        };
        assert_eq!(
            (attr.size(), attr.mode(), attr.uid()),
            (Some(1 << 20), Some(0o644), None)
        );
        for (opcode, len) in [
            (opcode::INIT, 16),
            (opcode::GETATTR, 16),
            (opcode::SETATTR, 88),
            (opcode::OPEN, 8),
            (opcode::READ, 40),
            (opcode::WRITE, 40),
            (opcode::RELEASE, 24),
            (opcode::FSYNC, 16),
            (opcode::FLUSH, 24),
            (opcode::FALLOCATE, 32),
            (opcode::LSEEK, 24),
            (opcode::INTERRUPT, 8),
        ] {
            let args = vec![0; len];
            assert!(Request::parse(opcode, &args).is_ok(), "{opcode}");
            assert_eq!(
                Request::parse(opcode, &args[..len - 1]),
                Err(BadRequest),
                "{opcode}"
            );
        }
        assert_eq!(Request::parse(12345, &[]), Ok(Request::Unsupported(12345)));
    }
}

//! `O_DIRECT` I/O for the `file` driver (`cache.direct=on`): the alignment
//! the file demands, found by trying reads as QEMU does, and buffers whose
//! memory does not meet it served through aligned bounce buffers. The
//! node layer aligns the requests themselves ([`crate::limits`]): partial
//! blocks are its read-modify-write, under range locks of those blocks
//! only.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::aligned::AlignedBuf;
use crate::blocking::offload;
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::posix_io::{self, read_into, write_from, RwFlags};

/// The largest alignment probed (QEMU's `MAX_BLOCKSIZE`, which is also the
/// page size here).
const MAX_DIRECT_ALIGN: usize = 4096;

/// Request sizes probed, as QEMU's `raw_probe_alignment`.
const PROBED_ALIGNMENTS: [usize; 5] = [1, 512, 1024, 2048, 4096];

/// The alignment an `O_DIRECT` descriptor needs.
pub(crate) struct DirectIo {
    /// Offsets and lengths must be multiples of this.
    request_align: usize,
    /// Buffers must start at a multiple of this.
    memory_align: usize,
}

/// A failure of a direct request: the I/O, or no memory for the bounce.
pub(crate) enum DirectError {
    /// The system call failed.
    Io(io::Error),
    /// The bounce buffer could not be had.
    Block(BlockError),
}

impl From<io::Error> for DirectError {
    fn from(e: io::Error) -> Self {
        DirectError::Io(e)
    }
}

impl From<BlockError> for DirectError {
    fn from(e: BlockError) -> Self {
        DirectError::Block(e)
    }
}

impl DirectIo {
    /// Finds the request and memory alignment of `fd` by trying reads, as
    /// QEMU's `raw_probe_alignment`; a file that accepts any size (nothing
    /// allocated yet) gets the safe maximum.
    pub(crate) fn probe(fd: RawFd) -> BlockResult<Self> {
        let mut buf = AlignedBuf::zeroed(2 * MAX_DIRECT_ALIGN, MAX_DIRECT_ALIGN)?;
        let works = |r: io::Result<usize>| match r {
            Ok(_) => true,
            Err(e) => e.raw_os_error() != Some(libc::EINVAL),
        };
        let request_align = PROBED_ALIGNMENTS
            .iter()
            .find(|&&align| works(posix_io::pread(fd, &mut buf[..align], 0, RwFlags::NONE)))
            .map(|&align| if align == 1 { MAX_DIRECT_ALIGN } else { align });
        let memory_align = PROBED_ALIGNMENTS.iter().find_map(|&align| {
            let probe = &mut buf[align..align + MAX_DIRECT_ALIGN];
            works(posix_io::pread(fd, probe, 0, RwFlags::NONE)).then_some(align)
        });
        match (request_align, memory_align) {
            (Some(request_align), Some(memory_align)) => Ok(DirectIo {
                request_align,
                memory_align: if memory_align == 1 {
                    request_align
                } else {
                    memory_align
                },
            }),
            _ => Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "Could not find working O_DIRECT alignment",
            )),
        }
    }

    /// Offsets and lengths must be multiples of this.
    pub(crate) fn request_align(&self) -> usize {
        self.request_align
    }

    /// Buffers must start at a multiple of this.
    pub(crate) fn memory_align(&self) -> usize {
        self.memory_align
    }

    /// Fills `buf` from `offset`; past the end of the file reads zeroes.
    pub(crate) async fn read(
        &self,
        fd: &Arc<OwnedFd>,
        offset: u64,
        buf: &IoBuf,
    ) -> Result<(), DirectError> {
        let fd = Arc::clone(fd);
        if self.is_aligned(offset, buf) {
            let target = buf.clone();
            let n =
                offload(move || read_into(fd.as_raw_fd(), &target, offset, RwFlags::NONE, true))
                    .await?;
            buf.slice(n..buf.len()).fill_zeroes();
            return Ok(());
        }
        let (start, bounce) = self.bounce_for(offset, buf.len())?;
        let target = bounce.clone();
        offload(move || read_into(fd.as_raw_fd(), &target, start, RwFlags::NONE, true)).await?;
        let skip = (offset - start) as usize;
        buf.copy_from(0, &bounce.slice(skip..skip + buf.len()));
        Ok(())
    }

    /// Writes `buf` at `offset`, a request aligned by the node layer; a
    /// buffer whose memory is not aligned goes through a bounce copy.
    pub(crate) async fn write(
        &self,
        fd: &Arc<OwnedFd>,
        offset: u64,
        buf: &IoBuf,
        flags: RwFlags,
    ) -> Result<(), DirectError> {
        let align = self.request_align as u64;
        if !offset.is_multiple_of(align) || !(buf.len() as u64).is_multiple_of(align) {
            return Err(DirectError::Block(BlockError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "O_DIRECT write of {} bytes at {offset} is not aligned to {align}",
                    buf.len()
                ),
            )));
        }
        let fd = Arc::clone(fd);
        let data = if self.is_aligned(offset, buf) {
            buf.clone()
        } else {
            let (_, bounce) = self.bounce_for(offset, buf.len())?;
            bounce.copy_from(0, buf);
            bounce
        };
        offload(move || write_from(fd.as_raw_fd(), &data, offset, flags)).await?;
        Ok(())
    }

    fn is_aligned(&self, offset: u64, buf: &IoBuf) -> bool {
        offset.is_multiple_of(self.request_align as u64)
            && buf.is_aligned(self.memory_align, self.request_align)
    }

    /// An aligned buffer covering `[offset, offset + len)` in whole blocks,
    /// and the file offset where it starts.
    fn bounce_for(&self, offset: u64, len: usize) -> BlockResult<(u64, IoBuf)> {
        let align = self.request_align as u64;
        let start = offset - offset % align;
        let end = (offset + len as u64).div_ceil(align) * align;
        let size = usize::try_from(end - start).map_err(|_| {
            BlockError::new(ErrorKind::TooLarge, "Request too large for a bounce buffer")
        })?;
        let bounce = AlignedBuf::zeroed(size, self.memory_align)?;
        Ok((start, IoBuf::from_owner(bounce)))
    }
}

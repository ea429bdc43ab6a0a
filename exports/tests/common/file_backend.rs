//! A file-backed export backend for the tests: positioned I/O on a file,
//! holes through `fallocate`, block status through `SEEK_DATA`/`SEEK_HOLE`
//! (allocation depth 1 for data, 0 for holes).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use block::{BlockError, BlockResult, Extent, WriteFlags, ZeroFlags};
use exports::nbd::{Backend, BackendOps};

pub struct FileBackend {
    file: File,
    writable: bool,
    fast_zero: bool,
}

impl FileBackend {
    pub fn open(path: &Path, writable: bool, fast_zero: bool) -> Backend {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .expect("open image");
        Arc::new(FileBackend {
            file,
            writable,
            fast_zero,
        })
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> BlockResult<()> {
        // SAFETY: plain syscall on an owned descriptor.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if rc != 0 {
            return Err(BlockError::from_io(
                "fallocate",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn seek(&self, offset: u64, whence: i32) -> Option<u64> {
        // SAFETY: plain syscall on an owned descriptor.
        let pos = unsafe { libc::lseek(self.file.as_raw_fd(), offset as i64, whence) };
        (pos >= 0).then_some(pos as u64)
    }
}

fn io(context: &str) -> impl Fn(std::io::Error) -> BlockError + '_ {
    move |e| BlockError::from_io(context, e)
}

#[async_trait]
impl BackendOps for FileBackend {
    fn size(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()> {
        self.file.read_exact_at(buf, offset).map_err(io("read"))
    }

    async fn write(&self, offset: u64, buf: &[u8], flags: WriteFlags) -> BlockResult<()> {
        self.file.write_all_at(buf, offset).map_err(io("write"))?;
        if flags.fua {
            self.file.sync_data().map_err(io("fsync"))?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let mode = if flags.may_unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        self.fallocate(mode, offset, len)
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    async fn flush(&self) -> BlockResult<()> {
        self.file.sync_all().map_err(io("fsync"))
    }

    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        let end = offset + len;
        let data_at = self.seek(offset, libc::SEEK_DATA).unwrap_or(u64::MAX);
        if data_at > offset {
            let length = data_at.min(end) - offset;
            return Ok(Extent {
                length,
                data: false,
                zero: true,
                depth: 0,
            });
        }
        let hole_at = self.seek(offset, libc::SEEK_HOLE).unwrap_or(end);
        Ok(Extent {
            length: hole_at.min(end) - offset,
            data: true,
            zero: false,
            depth: 1,
        })
    }

    fn is_read_only(&self) -> bool {
        !self.writable
    }

    fn can_fast_zero(&self) -> bool {
        self.fast_zero
    }

    fn request_alignment(&self) -> u32 {
        1
    }
}

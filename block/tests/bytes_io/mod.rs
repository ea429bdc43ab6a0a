//! Reads into and writes from plain byte slices, for tests: the block
//! layer's I/O takes [`IoBuf`]s, which tests would otherwise build and
//! copy out of at every call.

#![allow(dead_code)] // each test binary uses a different subset

use async_trait::async_trait;
use block::file::FileDriver;
use block::null::NullDriver;
use block::qcow2::{BlockChild, Qcow2};
use block::raw::RawDriver;
use block::{BlockBackend, BlockDriver, BlockResult, IoBuf, Node, WriteFlags};

/// `read` and `write` with byte slices.
#[async_trait]
pub trait BytesIo {
    /// Fills `buf` from `offset`.
    async fn read_into(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()>;
    /// Writes `data` at `offset`.
    async fn write_from(&self, offset: u64, data: &[u8], flags: WriteFlags) -> BlockResult<()>;
}

macro_rules! bytes_io {
    ($($receiver:ty => $read:path, $write:path;)*) => {$(
        #[async_trait]
        impl BytesIo for $receiver {
            async fn read_into(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()> {
                let io = IoBuf::copy_of(buf);
                $read(self, offset, &io).await?;
                io.copy_to_slice(0, buf);
                Ok(())
            }

            async fn write_from(
                &self,
                offset: u64,
                data: &[u8],
                flags: WriteFlags,
            ) -> BlockResult<()> {
                $write(self, offset, &IoBuf::copy_of(data), flags).await
            }
        }
    )*};
}

bytes_io! {
    BlockBackend => BlockBackend::read, BlockBackend::write;
    Node => Node::read, Node::write;
    Qcow2 => BlockDriver::read, BlockDriver::write;
    FileDriver => BlockDriver::read, BlockDriver::write;
    RawDriver => BlockDriver::read, BlockDriver::write;
    NullDriver => BlockDriver::read, BlockDriver::write;
    dyn BlockChild => BlockChild::read, BlockChild::write;
    dyn BlockDriver => BlockDriver::read, BlockDriver::write;
}

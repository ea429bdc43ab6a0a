//! The `null-co` and `null-aio` protocol drivers (one driver, two names,
//! as in QEMU): a device of a given size that stores nothing. Reads leave the buffer untouched unless
//! `read-zeroes` is on; every request can be delayed by `latency-ns`.
//! Block status says "not allocated" (neither data nor zero) unless reads
//! return zeroes, exactly as QEMU reports it.

use std::time::Duration;

use async_trait::async_trait;
use schema::block::BlockdevOptionsNull;
use serde_json::{Map, Value as Json};

use crate::driver::{BlockDriver, Extent, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::open::OpenContext;

/// The default size: 1 GiB.
const DEFAULT_SIZE: u64 = 1 << 30;

/// A `null-co` or `null-aio` node.
pub struct NullDriver {
    /// `null-co` or `null-aio`.
    name: &'static str,
    size: u64,
    read_zeroes: bool,
    latency: Option<Duration>,
    /// The options as given, for `json:` file names.
    given_size: Option<i64>,
    given_read_zeroes: Option<bool>,
}

impl NullDriver {
    /// A null device named `name` (`null-co`, `null-aio`) with these
    /// options.
    pub fn open(
        _cx: &OpenContext<'_>,
        name: &'static str,
        options: &BlockdevOptionsNull,
    ) -> BlockResult<Self> {
        let size = match options.size {
            None => DEFAULT_SIZE,
            Some(size) => u64::try_from(size).map_err(|_| {
                BlockError::new(
                    ErrorKind::InvalidArgument,
                    format!("Value '{size}' is out of range for parameter 'size'"),
                )
            })?,
        };
        if size > crate::graph::MAX_IMAGE_LENGTH {
            return Err(BlockError::new(
                ErrorKind::TooLarge,
                "Could not refresh total sector count: File too large",
            ));
        }
        // QEMU's limit: a delay must fit a signed 64-bit count.
        if options.latency_ns.is_some_and(|ns| ns > i64::MAX as u64) {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "latency-ns is invalid",
            ));
        }
        Ok(NullDriver {
            name,
            size,
            read_zeroes: options.read_zeroes.unwrap_or(false),
            latency: options
                .latency_ns
                .filter(|&ns| ns > 0)
                .map(Duration::from_nanos),
            given_size: options.size,
            given_read_zeroes: options.read_zeroes,
        })
    }

    async fn delay(&self) {
        if let Some(latency) = self.latency {
            tokio::time::sleep(latency).await;
        }
    }
}

#[async_trait]
impl BlockDriver for NullDriver {
    fn format_name(&self) -> &'static str {
        self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, _offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.delay().await;
        if self.read_zeroes {
            buf.fill_zeroes();
        }
        Ok(())
    }

    async fn write(&self, _offset: u64, _buf: &IoBuf, _flags: WriteFlags) -> BlockResult<()> {
        self.delay().await;
        Ok(())
    }

    async fn write_zeroes(&self, _offset: u64, _len: u64, _flags: ZeroFlags) -> BlockResult<()> {
        self.delay().await;
        Ok(())
    }

    async fn flush(&self) -> BlockResult<()> {
        self.delay().await;
        Ok(())
    }

    async fn block_status(&self, _offset: u64, len: u64) -> BlockResult<Extent> {
        Ok(Extent {
            length: len,
            data: false,
            zero: self.read_zeroes,
            depth: u32::from(self.read_zeroes),
        })
    }

    fn can_fast_zero(&self) -> bool {
        true
    }

    /// `null-co://` (`null-aio://`), unless options other than the latency
    /// were given
    /// (QEMU's `null_refresh_filename`).
    fn filename(&self) -> String {
        if self.strong_options().is_empty() {
            format!("{}://", self.name)
        } else {
            String::new()
        }
    }

    fn strong_options(&self) -> Map<String, Json> {
        let mut options = Map::new();
        if let Some(size) = self.given_size {
            options.insert("size".to_string(), Json::from(size));
        }
        if let Some(read_zeroes) = self.given_read_zeroes {
            options.insert("read-zeroes".to_string(), Json::from(read_zeroes));
        }
        options
    }

    fn is_protocol(&self) -> bool {
        true
    }

    fn allocated_size(&self) -> Option<u64> {
        Some(0)
    }
}

//! How a node is born: one `match` on the schema's driver enum, each arm
//! the driver's own `open` in its [`OpenContext`]. Adding a driver is one
//! line here and one file (or directory).

use schema::block::BlockdevDriver;

use crate::blkdebug::BlkdebugDriver;
use crate::compress::CompressFilter;
use crate::copy_on_read::CopyOnRead;
use crate::driver::BlockDriver;
use crate::error::BlockResult;
use crate::file::FileDriver;
use crate::nbd::NbdClient;
use crate::null::NullDriver;
use crate::open::OpenContext;
use crate::preallocate::Preallocate;
use crate::qcow2::Qcow2;
use crate::raw::RawDriver;
use crate::throttle::ThrottleDriver;

/// Opens the driver `options` name, in `cx`.
pub(crate) async fn open_driver(
    cx: &mut OpenContext<'_>,
    options: &BlockdevDriver,
) -> BlockResult<Box<dyn BlockDriver>> {
    Ok(match options {
        BlockdevDriver::Blkdebug(options) => Box::new(BlkdebugDriver::open(cx, options).await?),
        BlockdevDriver::Compress(options) => Box::new(CompressFilter::open(cx, options).await?),
        BlockdevDriver::CopyOnRead(options) => Box::new(CopyOnRead::open(cx, options).await?),
        BlockdevDriver::File(options) => Box::new(FileDriver::open(cx, options)?),
        BlockdevDriver::Nbd(options) => Box::new(NbdClient::open(cx, options).await?),
        BlockdevDriver::NullAio(options) => Box::new(NullDriver::open(cx, "null-aio", options)?),
        BlockdevDriver::NullCo(options) => Box::new(NullDriver::open(cx, "null-co", options)?),
        BlockdevDriver::Preallocate(options) => Box::new(Preallocate::open(cx, options).await?),
        BlockdevDriver::Qcow2(options) => Box::new(Qcow2::open_node(cx, options).await?),
        BlockdevDriver::Raw(options) => Box::new(RawDriver::open(cx, options).await?),
        BlockdevDriver::Throttle(options) => Box::new(ThrottleDriver::open(cx, options).await?),
    })
}

//! One virtio-blk request (virtio 1.2, section 5.2.6): its header, its
//! checks and its execution against the export's backend.
//!
//! A request is a 16-byte header the device reads (type, priority,
//! sector), data, and one status byte the device writes last. Every
//! range is checked against the node and the logical block size before
//! the node sees it; what the specification or QEMU answers with
//! `IOERR` or `UNSUPP` gets that status here, never a dropped request.

use block::{BlockBackend, IoBuf, WriteFlags, ZeroFlags};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_BARRIER, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

use super::config::{
    MAX_DISCARD_SECTORS, MAX_TRANSFER_BYTES, MAX_WRITE_ZEROES_SECTORS, SECTOR_SIZE,
};

/// Bytes of the request header.
const HEADER_SIZE: usize = 16;

/// Bytes of one discard or write-zeroes segment.
const SEGMENT_SIZE: usize = 16;

/// What a request is served with: the export's side of the device.
pub struct Disk<'a> {
    pub backend: &'a BlockBackend,
    pub logical_block_size: u32,
    /// Whether writes may be cached (the guest sends flushes); otherwise
    /// every write is durable before it completes.
    pub writeback: bool,
    /// What `GET_ID` answers.
    pub serial: &'a str,
}

/// The status byte and how many bytes the device wrote into the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub status: u8,
    pub used_len: u32,
}

/// Serves the request whose device-readable bytes are `readable` and
/// device-writable bytes `writable` (both already mapped and checked
/// against guest memory), then writes its status byte. `None` when the
/// chain has no room for a status byte: it is returned with nothing
/// written.
pub async fn serve(disk: &Disk<'_>, readable: IoBuf, writable: IoBuf) -> Option<Completion> {
    let status_at = writable.len().checked_sub(1)?;
    let data_in = writable.slice(0..status_at);
    let (status, data_len) = match parse_header(&readable) {
        Some(header) => {
            let data_out = readable.slice(HEADER_SIZE..readable.len());
            execute(disk, header, data_out, &data_in).await
        }
        None => (VIRTIO_BLK_S_IOERR, 0),
    };
    let status = status as u8;
    writable
        .slice(status_at..status_at + 1)
        .copy_from_slice(0, &[status]);
    Some(Completion {
        status,
        used_len: u32::try_from(data_len + 1).unwrap_or(u32::MAX),
    })
}

/// Writes `IOERR` into the status byte of a chain that could not be
/// mapped whole (`writable` is its last writable descriptor, if that one
/// mapped).
pub fn fail(writable: &IoBuf) -> Option<Completion> {
    let status_at = writable.len().checked_sub(1)?;
    let status = VIRTIO_BLK_S_IOERR as u8;
    writable
        .slice(status_at..status_at + 1)
        .copy_from_slice(0, &[status]);
    Some(Completion {
        status,
        used_len: 1,
    })
}

/// The header's type (without the legacy barrier bit) and sector.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: u32,
    sector: u64,
}

fn parse_header(readable: &IoBuf) -> Option<Header> {
    if readable.len() < HEADER_SIZE {
        return None;
    }
    let mut bytes = [0u8; HEADER_SIZE];
    readable.copy_to_slice(0, &mut bytes);
    let kind = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let sector = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    Some(Header {
        kind: kind & !VIRTIO_BLK_T_BARRIER,
        sector,
    })
}

/// Runs the request; returns its status and the bytes of data written
/// into the chain (besides the status byte).
async fn execute(
    disk: &Disk<'_>,
    header: Header,
    data_out: IoBuf,
    data_in: &IoBuf,
) -> (u32, usize) {
    let writable = !disk.backend.is_read_only();
    match header.kind {
        VIRTIO_BLK_T_IN => {
            let Some(offset) = checked_range(disk, header.sector, data_in.len() as u64) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            match disk.backend.read(offset, data_in).await {
                Ok(()) => (VIRTIO_BLK_S_OK, data_in.len()),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        VIRTIO_BLK_T_OUT => {
            let Some(offset) = checked_range(disk, header.sector, data_out.len() as u64) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            if !writable {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let flags = WriteFlags {
                fua: !disk.writeback,
                ..WriteFlags::default()
            };
            status_of(disk.backend.write(offset, &data_out, flags).await)
        }
        VIRTIO_BLK_T_FLUSH => status_of(disk.backend.flush().await),
        VIRTIO_BLK_T_GET_ID => {
            // The serial, NUL-terminated if there is room, at most 20 bytes.
            let mut id = disk.serial.as_bytes().to_vec();
            id.push(0);
            let len = id
                .len()
                .min(data_in.len())
                .min(VIRTIO_BLK_ID_BYTES as usize);
            data_in.copy_from_slice(0, &id[..len]);
            (VIRTIO_BLK_S_OK, data_in.len())
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if !writable => (VIRTIO_BLK_S_IOERR, 0),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            (discard_or_zero(disk, header.kind, &data_out).await, 0)
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

fn status_of(result: block::BlockResult<()>) -> (u32, usize) {
    match result {
        Ok(()) => (VIRTIO_BLK_S_OK, 0),
        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
    }
}

/// The byte offset of `len` bytes at `sector`, if the range is whole
/// sectors, starts on a logical block, is not too long and lies inside
/// the node.
fn checked_range(disk: &Disk<'_>, sector: u64, len: u64) -> Option<u64> {
    if len & (SECTOR_SIZE - 1) != 0 || len > MAX_TRANSFER_BYTES {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    if offset & (u64::from(disk.logical_block_size) - 1) != 0 {
        return None;
    }
    let end = offset.checked_add(len)?;
    (end <= disk.backend.size()).then_some(offset)
}

/// One discard or write-zeroes segment (only one per request is offered:
/// `max_discard_seg` and `max_write_zeroes_seg` are 1).
async fn discard_or_zero(disk: &Disk<'_>, kind: u32, data_out: &IoBuf) -> u32 {
    if data_out.len() > SEGMENT_SIZE {
        return VIRTIO_BLK_S_UNSUPP;
    }
    if data_out.len() < SEGMENT_SIZE {
        return VIRTIO_BLK_S_IOERR;
    }
    let mut segment = [0u8; SEGMENT_SIZE];
    data_out.copy_to_slice(0, &mut segment);
    let sector = u64::from_le_bytes(segment[0..8].try_into().unwrap_or_default());
    let sectors = u32::from_le_bytes(segment[8..12].try_into().unwrap_or_default());
    let flags = u32::from_le_bytes(segment[12..16].try_into().unwrap_or_default());
    let max_sectors = if kind == VIRTIO_BLK_T_WRITE_ZEROES {
        MAX_WRITE_ZEROES_SECTORS
    } else {
        MAX_DISCARD_SECTORS
    };
    if sectors > max_sectors {
        return VIRTIO_BLK_S_IOERR;
    }
    let len = u64::from(sectors) * SECTOR_SIZE;
    let Some(offset) = checked_range(disk, sector, len) else {
        return VIRTIO_BLK_S_IOERR;
    };
    // Unknown flags, and the unmap flag on a discard, are refused as the
    // specification requires.
    let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
    if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (kind == VIRTIO_BLK_T_DISCARD && unmap) {
        return VIRTIO_BLK_S_UNSUPP;
    }
    let result = if kind == VIRTIO_BLK_T_WRITE_ZEROES {
        let flags = ZeroFlags {
            may_unmap: unmap,
            no_fallback: false,
            fua: !disk.writeback,
        };
        disk.backend.write_zeroes(offset, len, flags).await
    } else {
        // A discard is not ordered against a volatile cache by itself: a
        // guest that runs without one needs it durable too.
        match disk.backend.discard(offset, len).await {
            Ok(()) if !disk.writeback => disk.backend.flush().await,
            other => other,
        }
    };
    status_of(result).0
}

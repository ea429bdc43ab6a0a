//! Request limits, enforced once, in the node layer: a driver states what
//! its requests must respect ([`Limits`], QEMU's `BlockLimits`) and never
//! sees a request that does not.
//!
//! - Reads and writes are padded to the request alignment. A read reads
//!   the whole blocks into one vectored buffer whose middle is the
//!   caller's (no copy). A write that covers blocks only partly is a
//!   read-modify-write of its first and last block; it holds an exclusive
//!   range lock on the blocks it touches, and aligned writes hold a shared
//!   one, so a cycle never writes stale data over a concurrent write.
//!   Only these blocks are locked: writes elsewhere go on. Zeroing and
//!   discarding whole blocks hold a shared lock on them too.
//! - Requests longer than the maximum transfer (or the maximum zeroing or
//!   discard length) are split into aligned pieces.
//! - Write-zeroes writes explicit zeroes over partial blocks and zeroes
//!   the aligned middle; a discard is a hint and drops its partial
//!   blocks.
//!
//! Nodes without limits (alignment 1, no maxima) take none of these
//! paths.

use std::future::Future;

use crate::driver::{WriteFlags, ZeroFlags};
use crate::error::BlockResult;
use crate::iobuf::IoBuf;
use crate::range_lock::RangeLocks;

/// What a node's requests must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Offsets and lengths of reads and writes are multiples of this (a
    /// power of two; 1 is any).
    pub request_alignment: u32,
    /// The most bytes one read or write covers (a multiple of the
    /// alignment), if limited.
    pub max_transfer: Option<u32>,
    /// The transfer size that works best, if the driver knows one.
    pub opt_transfer: Option<u32>,
    /// The most bytes one write-zeroes covers, if limited.
    pub max_write_zeroes: Option<u64>,
    /// The most bytes one discard covers, if limited.
    pub max_discard: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_alignment: 1,
            max_transfer: None,
            opt_transfer: None,
            max_write_zeroes: None,
            max_discard: None,
        }
    }
}

impl Limits {
    /// Whether `[offset, offset + len)` may go to the driver as it is.
    fn passes(&self, offset: u64, len: u64) -> bool {
        let align = u64::from(self.request_alignment);
        offset.is_multiple_of(align)
            && len.is_multiple_of(align)
            && self.max_transfer.is_none_or(|max| len <= u64::from(max))
    }

    /// The longest piece of a split transfer: the maximum, rounded down to
    /// the alignment (at least one block).
    fn transfer_piece(&self) -> u64 {
        let align = u64::from(self.request_alignment);
        let max = self.max_transfer.map_or(u64::MAX, u64::from);
        (max / align * align).max(align)
    }
}

/// `[start, end)` rounded out to whole blocks of `align`.
fn blocks(offset: u64, len: u64, align: u64) -> (u64, u64) {
    (
        offset / align * align,
        (offset + len).div_ceil(align) * align,
    )
}

/// Reads `buf` at `offset` with `read` (the driver's), padded and split
/// as `limits` demand.
pub(crate) async fn read<F, Fut>(
    limits: &Limits,
    offset: u64,
    buf: &IoBuf,
    read: F,
) -> BlockResult<()>
where
    F: Fn(u64, IoBuf) -> Fut,
    Fut: Future<Output = BlockResult<()>>,
{
    if limits.passes(offset, buf.len() as u64) {
        return read(offset, buf.clone()).await;
    }
    let align = u64::from(limits.request_alignment);
    let (start, end) = blocks(offset, buf.len() as u64, align);
    let head = (offset - start) as usize;
    let tail = (end - offset) as usize - buf.len();
    let padded = IoBuf::concat([IoBuf::zeroed(head), buf.clone(), IoBuf::zeroed(tail)]);
    split(limits.transfer_piece(), start, &padded, &read).await
}

/// Writes `buf` at `offset` with `write` (the driver's) and `read` (for
/// the partial blocks), padded, locked and split as `limits` demand.
pub(crate) async fn write<W, WFut, R, RFut>(
    limits: &Limits,
    locks: &RangeLocks,
    offset: u64,
    buf: &IoBuf,
    write: W,
    read: R,
) -> BlockResult<()>
where
    W: Fn(u64, IoBuf) -> WFut,
    WFut: Future<Output = BlockResult<()>>,
    R: Fn(u64, IoBuf) -> RFut,
    RFut: Future<Output = BlockResult<()>>,
{
    let align = u64::from(limits.request_alignment);
    if align == 1 {
        return split(limits.transfer_piece(), offset, buf, &write).await;
    }
    let (start, end) = blocks(offset, buf.len() as u64, align);
    let head = offset - start;
    let tail = end - offset - buf.len() as u64;
    let partial = head > 0 || tail > 0;
    let _blocks = locks.lock(start / align, end / align, partial).await;
    if !partial {
        return split(limits.transfer_piece(), offset, buf, &write).await;
    }
    // The old contents of the first and last block, around the data.
    let first = IoBuf::zeroed(align as usize);
    read(start, first.clone()).await?;
    let last = if end - start == align {
        first.clone()
    } else {
        let last = IoBuf::zeroed(align as usize);
        read(end - align, last.clone()).await?;
        last
    };
    let padded = IoBuf::concat([
        first.slice(0..head as usize),
        buf.clone(),
        last.slice((align - tail) as usize..align as usize),
    ]);
    split(limits.transfer_piece(), start, &padded, &write).await
}

/// Zeroes `[offset, offset + len)`: explicit zeroes over partial blocks
/// (through `write_partial`), the aligned middle with `zero` in pieces of
/// at most the maximum.
pub(crate) async fn write_zeroes<Z, ZFut, P, PFut>(
    limits: &Limits,
    locks: &RangeLocks,
    offset: u64,
    len: u64,
    flags: ZeroFlags,
    zero: Z,
    write_partial: P,
) -> BlockResult<()>
where
    Z: Fn(u64, u64, ZeroFlags) -> ZFut,
    ZFut: Future<Output = BlockResult<()>>,
    P: Fn(u64, IoBuf, WriteFlags) -> PFut,
    PFut: Future<Output = BlockResult<()>>,
{
    let align = u64::from(limits.request_alignment);
    let end = offset + len;
    let inner_start = offset.div_ceil(align) * align;
    let inner_end = end / align * align;
    let write_flags = WriteFlags {
        fua: flags.fua,
        ..WriteFlags::default()
    };
    if inner_start >= inner_end {
        // Within one or two partial blocks: all explicit zeroes.
        return write_partial(offset, IoBuf::zeroed(len as usize), write_flags).await;
    }
    if inner_start > offset {
        let head = IoBuf::zeroed((inner_start - offset) as usize);
        write_partial(offset, head, write_flags).await?;
    }
    let piece = limits
        .max_write_zeroes
        .map_or(u64::MAX, |max| (max / align * align).max(align));
    {
        let _blocks = shared_lock(locks, align, inner_start, inner_end).await;
        let mut at = inner_start;
        while at < inner_end {
            let n = (inner_end - at).min(piece);
            zero(at, n, flags).await?;
            at += n;
        }
    }
    if end > inner_end {
        let tail = IoBuf::zeroed((end - inner_end) as usize);
        write_partial(inner_end, tail, write_flags).await?;
    }
    Ok(())
}

/// Discards the whole blocks of `[offset, offset + len)` with `discard`
/// in pieces of at most the maximum; partial blocks are left as they are.
pub(crate) async fn discard<D, DFut>(
    limits: &Limits,
    locks: &RangeLocks,
    offset: u64,
    len: u64,
    discard: D,
) -> BlockResult<()>
where
    D: Fn(u64, u64) -> DFut,
    DFut: Future<Output = BlockResult<()>>,
{
    let align = u64::from(limits.request_alignment);
    let start = offset.div_ceil(align) * align;
    let end = (offset + len) / align * align;
    let piece = limits
        .max_discard
        .map_or(u64::MAX, |max| (max / align * align).max(align));
    let _blocks = shared_lock(locks, align, start, end).await;
    let mut at = start;
    while at < end {
        let n = (end - at).min(piece);
        discard(at, n).await?;
        at += n;
    }
    Ok(())
}

/// A shared lock on the whole blocks `[start, end)`, where blocks need
/// locking at all (alignment above 1, a non-empty range).
async fn shared_lock(
    locks: &RangeLocks,
    align: u64,
    start: u64,
    end: u64,
) -> Option<crate::range_lock::RangeGuard<'_>> {
    if align == 1 || start >= end {
        return None;
    }
    Some(locks.lock(start / align, end / align, false).await)
}

/// Runs `op` over `buf` at `offset` in pieces of at most `piece` bytes.
async fn split<F, Fut>(piece: u64, offset: u64, buf: &IoBuf, op: &F) -> BlockResult<()>
where
    F: Fn(u64, IoBuf) -> Fut,
    Fut: Future<Output = BlockResult<()>>,
{
    if buf.len() as u64 <= piece {
        return op(offset, buf.clone()).await;
    }
    let mut at = 0usize;
    while at < buf.len() {
        let n = (buf.len() - at).min(piece as usize);
        op(offset + at as u64, buf.slice(at..at + n)).await?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A disk in memory that insists on `limits` and records requests.
    struct StrictDisk {
        limits: Limits,
        bytes: Mutex<Vec<u8>>,
        requests: Mutex<Vec<(char, u64, u64)>>,
    }

    impl StrictDisk {
        fn new(limits: Limits, len: usize) -> StrictDisk {
            StrictDisk {
                limits,
                bytes: Mutex::new((0..len).map(|i| (i % 251) as u8).collect()),
                requests: Mutex::new(Vec::new()),
            }
        }

        fn check(&self, kind: char, offset: u64, len: u64) {
            assert!(self.limits.passes(offset, len), "{kind} {offset}+{len}");
            self.requests.lock().unwrap().push((kind, offset, len));
        }

        async fn read(&self, offset: u64, buf: IoBuf) -> BlockResult<()> {
            self.check('r', offset, buf.len() as u64);
            let bytes = self.bytes.lock().unwrap();
            buf.copy_from_slice(0, &bytes[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }

        async fn write(&self, offset: u64, buf: IoBuf) -> BlockResult<()> {
            self.check('w', offset, buf.len() as u64);
            let mut bytes = self.bytes.lock().unwrap();
            buf.copy_to_slice(0, &mut bytes[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
    }

    fn limits(align: u32, max: Option<u32>) -> Limits {
        Limits {
            request_alignment: align,
            max_transfer: max,
            ..Limits::default()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unaligned_reads_are_padded_and_split() {
        let disk = StrictDisk::new(limits(512, Some(1024)), 8192);
        let buf = IoBuf::zeroed(1500);
        read(&disk.limits, 700, &buf, |o, b| disk.read(o, b))
            .await
            .unwrap();
        let expect: Vec<u8> = (700..2200).map(|i| (i % 251) as u8).collect();
        assert_eq!(buf.to_vec(), expect);
        assert_eq!(
            *disk.requests.lock().unwrap(),
            [('r', 512, 1024), ('r', 1536, 1024)]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unaligned_writes_keep_the_bytes_around_them() {
        let disk = StrictDisk::new(limits(512, None), 4096);
        let locks = RangeLocks::default();
        let before = disk.bytes.lock().unwrap().clone();
        let write_op = |o, b| disk.write(o, b);
        let read_op = |o, b| disk.read(o, b);
        // Within one block: read once (head and tail share it), written
        // back once; across two: both read, written back in one request.
        for (offset, requests) in [
            (600, vec![('r', 512, 512), ('w', 512, 512)]),
            (
                1000,
                vec![('r', 512, 512), ('r', 1024, 512), ('w', 512, 1024)],
            ),
        ] {
            disk.requests.lock().unwrap().clear();
            let data = IoBuf::copy_of(&[0xee; 100]);
            write(&disk.limits, &locks, offset, &data, write_op, read_op)
                .await
                .unwrap();
            let after = disk.bytes.lock().unwrap().clone();
            let at = offset as usize;
            assert_eq!(&after[at..at + 100], &[0xee; 100]);
            assert_eq!(&after[..at], &before[..at]);
            assert_eq!(&after[at + 100..], &before[at + 100..]);
            assert_eq!(*disk.requests.lock().unwrap(), requests);
            disk.bytes.lock().unwrap().copy_from_slice(&before);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn zeroes_and_discards_respect_alignment_and_maxima() {
        let limits = Limits {
            request_alignment: 512,
            max_write_zeroes: Some(1024),
            max_discard: Some(1024),
            ..Limits::default()
        };
        let calls = Mutex::new(Vec::new());
        let locks = RangeLocks::default();
        write_zeroes(
            &limits,
            &locks,
            100,
            3000,
            ZeroFlags::default(),
            |o, n, _| {
                calls.lock().unwrap().push(('z', o, n));
                async { Ok(()) }
            },
            |o, b: IoBuf, _| {
                assert!(b.is_zero());
                calls.lock().unwrap().push(('w', o, b.len() as u64));
                async { Ok(()) }
            },
        )
        .await
        .unwrap();
        discard(&limits, &locks, 100, 3000, |o, n| {
            calls.lock().unwrap().push(('d', o, n));
            async { Ok(()) }
        })
        .await
        .unwrap();
        assert_eq!(
            *calls.lock().unwrap(),
            [
                ('w', 100, 412),
                ('z', 512, 1024),
                ('z', 1536, 1024),
                ('z', 2560, 512),
                ('w', 3072, 28),
                ('d', 512, 1024),
                ('d', 1536, 1024),
                ('d', 2560, 512),
            ]
        );
    }
}

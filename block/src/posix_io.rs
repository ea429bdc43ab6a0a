//! Thin safe wrappers over the positioned I/O and space-management system
//! calls the `file` driver uses. They retry `EINTR` and report errors as
//! `std::io::Error`; they never touch the file offset that other calls
//! might share, except `lseek` for `SEEK_DATA`/`SEEK_HOLE`, whose result
//! is read atomically.

use std::io;
use std::os::fd::RawFd;

use smallvec::SmallVec;

use crate::iobuf::IoBuf;

/// `preadv2`/`pwritev2` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RwFlags(libc::c_int);

impl RwFlags {
    /// None.
    pub(crate) const NONE: RwFlags = RwFlags(0);
    /// Fail with `EAGAIN` rather than wait (page cache misses).
    pub(crate) const NOWAIT: RwFlags = RwFlags(libc::RWF_NOWAIT);
    /// Per-write `O_DSYNC`: durable on return (FUA).
    pub(crate) const DSYNC: RwFlags = RwFlags(libc::RWF_DSYNC);
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn check(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

fn to_off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// One `preadv2` into `buf` at `offset`; returns the bytes read.
pub(crate) fn pread(fd: RawFd, buf: &mut [u8], offset: u64, flags: RwFlags) -> io::Result<usize> {
    let off = to_off(offset)?;
    retry(|| {
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: the iovec describes `buf`, valid and writable for the call.
        check(unsafe { libc::preadv2(fd, &iov, 1, off, flags.0) })
    })
}

/// `fallocate(2)`.
pub(crate) fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = (to_off(offset)?, to_off(len)?);
    retry(|| {
        // SAFETY: plain system call on a descriptor we own.
        if unsafe { libc::fallocate(fd, mode, off, len) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    })
}

/// `fdatasync(2)`.
pub(crate) fn fdatasync(fd: RawFd) -> io::Result<()> {
    retry(|| {
        // SAFETY: plain system call on a descriptor we own.
        if unsafe { libc::fdatasync(fd) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    })
}

/// `ftruncate(2)`.
pub(crate) fn ftruncate(fd: RawFd, len: u64) -> io::Result<()> {
    let len = to_off(len)?;
    retry(|| {
        // SAFETY: plain system call on a descriptor we own.
        if unsafe { libc::ftruncate(fd, len) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    })
}

/// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE`.
pub(crate) fn lseek(fd: RawFd, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = to_off(offset)?;
    // SAFETY: plain system call on a descriptor we own.
    let ret = unsafe { libc::lseek(fd, off, whence) };
    u64::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// `fstat(2)`.
pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for the call.
    if unsafe { libc::fstat(fd, &mut st) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The most `iovec`s one call takes (Linux's `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// One `preadv2` into `iov` at `offset`; returns the bytes read.
///
/// # Safety
///
/// Every `iovec` must describe memory valid for writes for the call.
unsafe fn preadv(fd: RawFd, iov: &[libc::iovec], offset: u64, flags: RwFlags) -> io::Result<usize> {
    let off = to_off(offset)?;
    let count = iov.len().min(MAX_IOVECS) as libc::c_int;
    // SAFETY: the caller vouches for the memory; `count` is within `iov`.
    retry(|| check(unsafe { libc::preadv2(fd, iov.as_ptr(), count, off, flags.0) }))
}

/// One `pwritev2` of `iov` at `offset`; returns the bytes written.
///
/// # Safety
///
/// Every `iovec` must describe memory valid for reads for the call.
unsafe fn pwritev(
    fd: RawFd,
    iov: &[libc::iovec],
    offset: u64,
    flags: RwFlags,
) -> io::Result<usize> {
    let off = to_off(offset)?;
    let count = iov.len().min(MAX_IOVECS) as libc::c_int;
    // SAFETY: the caller vouches for the memory; `count` is within `iov`.
    retry(|| check(unsafe { libc::pwritev2(fd, iov.as_ptr(), count, off, flags.0) }))
}

/// Drops the first `n` bytes from `iov`.
fn advance(iov: &mut SmallVec<[libc::iovec; 4]>, mut n: usize) {
    let mut whole = 0;
    while whole < iov.len() && n >= iov[whole].iov_len {
        n -= iov[whole].iov_len;
        whole += 1;
    }
    iov.drain(..whole);
    if let Some(first) = iov.first_mut() {
        // SAFETY: `n` is less than this iovec's length.
        first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n) }.cast();
        first.iov_len -= n;
    }
}

/// Reads into `buf` from `offset` until it is full, the end of the file,
/// or (with `flags` `NOWAIT`) the first call that would wait; returns the
/// bytes read. With `direct`, `EINVAL` after some progress is the
/// unaligned tail of the file, i.e. its end (as QEMU assumes).
pub(crate) fn read_into(
    fd: RawFd,
    buf: &IoBuf,
    offset: u64,
    flags: RwFlags,
    direct: bool,
) -> io::Result<usize> {
    let mut iov = buf.iovecs();
    let mut done = 0;
    while !iov.is_empty() {
        // SAFETY: the iovecs describe `buf`'s memory, which `buf` keeps
        // alive and writable for the call.
        match unsafe { preadv(fd, &iov, offset + done as u64, flags) } {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                advance(&mut iov, n);
            }
            Err(e) if flags == RwFlags::NOWAIT && e.raw_os_error() == Some(libc::EAGAIN) => break,
            Err(e) if direct && done > 0 && e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes `buf` at `offset`: all of it, or with `NOWAIT` in `flags` until
/// the first call that would wait; returns the bytes written.
pub(crate) fn write_from(fd: RawFd, buf: &IoBuf, offset: u64, flags: RwFlags) -> io::Result<usize> {
    let mut iov = buf.iovecs();
    let mut done = 0;
    let nowait = flags == RwFlags::NOWAIT;
    while !iov.is_empty() {
        // SAFETY: the iovecs describe `buf`'s memory, which `buf` keeps
        // alive for the call; the kernel only reads it.
        match unsafe { pwritev(fd, &iov, offset + done as u64, flags) } {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Ok(n) => {
                done += n;
                advance(&mut iov, n);
            }
            Err(e) if nowait && e.raw_os_error() == Some(libc::EAGAIN) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

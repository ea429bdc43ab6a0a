//! The kernel's NBD client (qemu-nbd's `--connect` and `--disconnect`):
//! an export of this daemon becomes the block device `/dev/nbdX`.
//!
//! Attaching does what qemu-nbd's client thread does: connect to the
//! daemon's own NBD socket, negotiate as the kernel needs it (no
//! structured replies: the kernel reads simple replies only), then give
//! the connected socket to the kernel with the classic ioctls (`linux/nbd.h`)
//! and let a thread sit in `NBD_DO_IT` for as long as the device is
//! attached. When the device is disconnected (`--disconnect`, or the
//! kernel gives up), the daemon stops, as qemu-nbd does.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::ExitCode;
use std::sync::Arc;

use nbdwire::client::{ExportInfo, Handshake};
use nbdwire::proto::FLAG_READ_ONLY;

use block::error::os_error_text;

use crate::state::Daemon;

/// `linux/nbd.h`'s ioctls: `_IO(0xab, n)`.
mod ioctl {
    const fn nbd(number: libc::c_ulong) -> libc::c_ulong {
        (0xab << 8) | number
    }
    pub const SET_SOCK: libc::c_ulong = nbd(0);
    pub const SET_BLKSIZE: libc::c_ulong = nbd(1);
    pub const DO_IT: libc::c_ulong = nbd(3);
    pub const CLEAR_SOCK: libc::c_ulong = nbd(4);
    pub const CLEAR_QUE: libc::c_ulong = nbd(5);
    pub const SET_SIZE_BLOCKS: libc::c_ulong = nbd(7);
    pub const DISCONNECT: libc::c_ulong = nbd(8);
    pub const SET_FLAGS: libc::c_ulong = nbd(10);
    /// `linux/fs.h`'s `BLKROSET` (`_IO(0x12, 93)`) and `BLKFLSBUF`
    /// (`_IO(0x12, 97)`).
    pub const BLKROSET: libc::c_ulong = (0x12 << 8) | 93;
    pub const BLKFLSBUF: libc::c_ulong = (0x12 << 8) | 97;
}

/// The smallest block size the kernel is told.
const SECTOR_SIZE: u64 = 512;

/// What `--connect` asks for: `device` attached to export `export` of the
/// server listening on `socket`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Attach {
    pub device: String,
    pub socket: String,
    pub export: String,
    /// `--verbose`: say so once the device is attached.
    pub verbose: bool,
}

/// Runs one `ioctl` with an integer argument on `fd`.
fn control(fd: RawFd, request: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: these requests take an integer argument, not a pointer (or,
    // for BLKROSET, the address of an int the caller keeps alive for the
    // call); `fd` is open for as long as the call.
    let result = unsafe { libc::ioctl(fd, request, arg) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// QEMU's `nbd_init`: tells the kernel the socket, sizes and flags.
fn give_to_kernel(device: &File, socket: RawFd, info: &ExportInfo) -> Result<(), String> {
    let fd = device.as_raw_fd();
    let block = info
        .block_sizes
        .map_or(SECTOR_SIZE, |(min, _, _)| u64::from(min).max(SECTOR_SIZE));
    let step = |request, arg, what: &str| {
        control(fd, request, arg).map_err(|e| format!("{what}: {}", os_error_text(&e)))
    };
    step(
        ioctl::SET_SOCK,
        socket as libc::c_ulong,
        "Failed to set NBD socket",
    )?;
    step(
        ioctl::SET_BLKSIZE,
        block as libc::c_ulong,
        "Failed setting NBD block size",
    )?;
    step(
        ioctl::SET_SIZE_BLOCKS,
        (info.size / block) as libc::c_ulong,
        "Failed setting size (in blocks)",
    )?;
    match control(fd, ioctl::SET_FLAGS, libc::c_ulong::from(info.flags)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => {
            // Old kernels: only read-only-ness, through the block layer.
            let read_only: libc::c_int = i32::from(info.flags & FLAG_READ_ONLY != 0);
            let address = std::ptr::addr_of!(read_only) as libc::c_ulong;
            step(
                ioctl::BLKROSET,
                address,
                "Failed setting read-only attribute",
            )
        }
        Err(e) => Err(format!("Failed setting flags: {}", os_error_text(&e))),
    }
}

/// Attaches `attach.device` to the export; returns once the kernel has
/// the connection. A thread then serves as the kernel's until the device
/// is disconnected, and stops the daemon.
pub async fn attach(daemon: &Arc<Daemon>, attach: &Attach) -> Result<(), String> {
    let stream = tokio::net::UnixStream::connect(&attach.socket)
        .await
        .map_err(|e| {
            format!(
                "Failed to connect to {}: {}",
                attach.socket,
                os_error_text(&e)
            )
        })?;
    let failed = |e: std::io::Error| {
        format!(
            "Failed to negotiate with the NBD server: {}",
            os_error_text(&e)
        )
    };
    let handshake = Handshake::start(stream).await.map_err(failed)?;
    let (stream, info) = handshake.go(&attach.export).await.map_err(failed)?;
    let stream: StdUnixStream = stream.into_std().map_err(failed)?;
    stream.set_nonblocking(false).map_err(failed)?;
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&attach.device)
        .map_err(|e| format!("Failed to open {}: {}", attach.device, os_error_text(&e)))?;
    give_to_kernel(&device, stream.as_raw_fd(), &info)?;
    if attach.verbose {
        eprintln!(
            "NBD device {} is now connected to {}",
            attach.device, attach.socket
        );
    }
    let daemon = daemon.clone();
    let name = attach.device.clone();
    std::thread::Builder::new()
        .name("nbd-device".into())
        .spawn(move || {
            let fd = device.as_raw_fd();
            // Returns when the device is disconnected.
            if let Err(error) = control(fd, ioctl::DO_IT, 0) {
                tracing::info!("{name}: NBD_DO_IT: {error}");
            }
            let _ = control(fd, ioctl::CLEAR_QUE, 0);
            let _ = control(fd, ioctl::CLEAR_SOCK, 0);
            drop(stream);
            tracing::info!("{name} disconnected; stopping");
            daemon.request_quit();
        })
        .map_err(|e| format!("Failed to start the device thread: {e}"))?;
    Ok(())
}

/// `--disconnect DEVICE`: detaches the device (its server then stops).
pub fn disconnect(device: &str, program: &str) -> ExitCode {
    let file = match OpenOptions::new().read(true).write(true).open(device) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("{program}: Cannot open {device}: {}", os_error_text(&error));
            return ExitCode::FAILURE;
        }
    };
    let fd = file.as_raw_fd();
    // As qemu-nbd: failures here are not reported.
    let _ = control(fd, ioctl::BLKFLSBUF, 0);
    let _ = control(fd, ioctl::DISCONNECT, 0);
    let _ = control(fd, ioctl::CLEAR_SOCK, 0);
    println!("{device} disconnected");
    ExitCode::SUCCESS
}

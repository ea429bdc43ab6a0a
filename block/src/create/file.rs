//! `blockdev-create` with `driver=file`, as QEMU's `raw_co_create`: create
//! the file (mode 0644), take the image locks a writer that resizes takes
//! (failing if another user holds conflicting ones), empty it, set the
//! `nocow` flag and the extent size hint where the file system has them,
//! then grow it to its size with the preallocation asked. The locks go
//! with the descriptor when it closes.
//!
//! Everything here blocks (full preallocation writes the whole file), so
//! it runs on a blocking thread, never on the runtime's workers.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use schema::create::{BlockdevCreateOptionsFile, PreallocMode};

use crate::error::{os_error_text, BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::locking::ImageLocks;
use crate::permissions::Perm;
use crate::posix_io::{self, RwFlags};

/// The mode of a new file (before the umask), as QEMU's.
const NEW_FILE_MODE: u32 = 0o644;

/// The extent size hint when none is given (QEMU's 1 MiB).
const DEFAULT_EXTENT_SIZE_HINT: u64 = 1 << 20;

/// Zeroes written at a time by full preallocation (QEMU's 64 KiB).
const ZERO_CHUNK: usize = 65536;

/// The first block QEMU writes into a new file so that later alignment
/// probes find allocated data (`allocate_first_block`): 4 KiB, or one
/// sector for files smaller than that.
const FIRST_BLOCK_MAX: u64 = 4096;
const SECTOR_SIZE: u64 = 512;

/// `FS_NOCOW_FL` of `linux/fs.h`.
const FS_NOCOW_FL: libc::c_int = 0x0080_0000;

/// `struct fsxattr` of `linux/fs.h`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `FS_IOC_FSGETXATTR`: `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::Ioctl = 0x801c_581f;
/// `FS_IOC_FSSETXATTR`: `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: libc::Ioctl = 0x401c_5820;
/// `FS_XFLAG_EXTSIZE`: the extent size hint is set.
const FS_XFLAG_EXTSIZE: u32 = 0x800;

/// Creates the file `options` describe, replacing what it held.
pub(crate) async fn create(options: BlockdevCreateOptionsFile) -> BlockResult<()> {
    tokio::task::spawn_blocking(move || create_blocking(&options))
        .await
        .map_err(|error| BlockError::new(ErrorKind::Io, format!("File creation failed: {error}")))?
}

fn create_blocking(options: &BlockdevCreateOptionsFile) -> BlockResult<()> {
    let preallocation = options.preallocation.unwrap_or_default();
    let extent_size_hint = options
        .extent_size_hint
        .map_or(DEFAULT_EXTENT_SIZE_HINT, |hint| hint.bytes());
    let extent_size_hint = u32::try_from(extent_size_hint).map_err(|_| {
        BlockError::new(ErrorKind::InvalidArgument, "Extent size hint is too large")
    })?;
    let filename = &options.filename;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(NEW_FILE_MODE)
        .open(filename)
        .map_err(|e| BlockError::from_io(format!("Could not create '{filename}'"), e))?;
    let fd = file.as_raw_fd();
    let locks = ImageLocks::new(fd)?;
    // The file is written and resized; nobody else may resize it meanwhile.
    locks.prepare(Perm::WRITE | Perm::RESIZE, !Perm::RESIZE)?;
    posix_io::ftruncate(fd, 0).map_err(|e| BlockError::from_io("Could not resize file", e))?;
    if options.nocow == Some(true) {
        set_nocow(fd);
    }
    set_extent_size_hint(fd, extent_size_hint, options.extent_size_hint.is_some());
    grow(&file, options.size.bytes(), preallocation)
}

/// Grows the empty file to `size` (QEMU's `handle_aio_truncate` from an
/// empty file); a failed preallocation leaves it empty again.
fn grow(file: &File, size: u64, preallocation: PreallocMode) -> BlockResult<()> {
    let fd = file.as_raw_fd();
    let result = match preallocation {
        PreallocMode::Off => {
            posix_io::ftruncate(fd, size)
                .map_err(|e| BlockError::from_io("Could not resize file", e))?;
            if size > 0 {
                allocate_first_block(fd, size);
            }
            return Ok(());
        }
        PreallocMode::Falloc => preallocate_falloc(fd, size),
        PreallocMode::Full => preallocate_full(fd, size),
        PreallocMode::Metadata => {
            return Err(BlockError::new(
                ErrorKind::NotSupported,
                "Unsupported preallocation mode: metadata",
            ))
        }
    };
    if result.is_err() {
        if let Err(e) = posix_io::ftruncate(fd, 0) {
            tracing::error!("Failed to restore old file length: {}", os_error_text(&e));
        }
    }
    result
}

fn preallocate_falloc(fd: RawFd, size: u64) -> BlockResult<()> {
    if size == 0 {
        return Ok(());
    }
    let len = libc::off_t::try_from(size).map_err(|_| {
        BlockError::from_io(
            "Could not preallocate new data",
            std::io::Error::from_raw_os_error(libc::EFBIG),
        )
    })?;
    // SAFETY: plain system call on a descriptor we own.
    let errno = unsafe { libc::posix_fallocate(fd, 0, len) };
    if errno != 0 {
        return Err(BlockError::from_io(
            "Could not preallocate new data",
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    allocate_first_block(fd, size);
    Ok(())
}

fn preallocate_full(fd: RawFd, size: u64) -> BlockResult<()> {
    posix_io::ftruncate(fd, size).map_err(|e| BlockError::from_io("Could not resize file", e))?;
    let zeroes = IoBuf::zeroed(ZERO_CHUNK);
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(ZERO_CHUNK as u64) as usize;
        posix_io::write_from(fd, &zeroes.slice(0..len), offset, RwFlags::NONE)
            .map_err(|e| BlockError::from_io("Could not write zeros for preallocation", e))?;
        offset += len as u64;
    }
    posix_io::fdatasync(fd).map_err(|e| BlockError::from_io("Could not flush file to disk", e))
}

/// Writes zeroes over the first block so that the file system allocates
/// it (QEMU does this for later alignment probes, and so does its result:
/// a file asked smaller than one sector ends up one sector long). Failure
/// is harmless and ignored, as in QEMU.
fn allocate_first_block(fd: RawFd, size: u64) {
    let len = if size < FIRST_BLOCK_MAX {
        SECTOR_SIZE
    } else {
        FIRST_BLOCK_MAX
    };
    let _ = posix_io::write_from(fd, &IoBuf::zeroed(len as usize), 0, RwFlags::NONE);
}

/// Sets `FS_NOCOW_FL` (btrfs); file systems without it ignore the request,
/// as QEMU lets them.
fn set_nocow(fd: RawFd) {
    let mut flags: libc::c_int = 0;
    // SAFETY: `flags` is a valid out-pointer of the size the kernel writes.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) } == 0 {
        flags |= FS_NOCOW_FL;
        // SAFETY: `flags` is a valid in-pointer of the size the kernel reads.
        let _ = unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags) };
    }
}

/// Sets the extent size hint (XFS). Failure is no error; as QEMU, it is
/// only reported when the hint was asked for explicitly and is not zero.
fn set_extent_size_hint(fd: RawFd, hint: u32, explicit: bool) {
    let mut attr = FsXattr::default();
    // SAFETY: `attr` has the layout of `struct fsxattr`, which the kernel
    // fills in.
    let mut result = unsafe { libc::ioctl(fd, FS_IOC_FSGETXATTR, &mut attr) };
    if result == 0 {
        attr.xflags |= FS_XFLAG_EXTSIZE;
        attr.extsize = hint;
        // SAFETY: as above; the kernel only reads `attr`.
        result = unsafe { libc::ioctl(fd, FS_IOC_FSSETXATTR, &attr) };
    }
    if result != 0 && explicit && hint != 0 {
        tracing::warn!(
            "Failed to set extent size hint: {}",
            os_error_text(&std::io::Error::last_os_error())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::size::Size;

    fn options(path: &std::path::Path, size: u64) -> BlockdevCreateOptionsFile {
        BlockdevCreateOptionsFile {
            filename: path.display().to_string(),
            size: Size(size),
            preallocation: None,
            nocow: None,
            extent_size_hint: None,
        }
    }

    fn allocated(path: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[tokio::test]
    async fn creates_and_replaces_files_of_the_size_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.raw");
        std::fs::write(&path, vec![0xaa; 8192]).unwrap();
        create(options(&path, 1 << 20)).await.unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert!(data.iter().all(|&b| b == 0));
        // As QEMU: a size below one sector still gets a whole sector.
        create(options(&path, 100)).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 512);
        create(options(&path, 0)).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn preallocation_modes() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        for (mode, expect_allocated) in [
            (PreallocMode::Off, false),
            (PreallocMode::Falloc, true),
            (PreallocMode::Full, true),
        ] {
            let path = dir.path().join(format!("{mode:?}.raw"));
            let mut o = options(&path, size);
            o.preallocation = Some(mode);
            create(o).await.unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
            assert_eq!(allocated(&path) >= size, expect_allocated, "{mode:?}");
        }
        let path = dir.path().join("m.raw");
        let mut o = options(&path, size);
        o.preallocation = Some(PreallocMode::Metadata);
        let error = create(o).await.unwrap_err();
        assert_eq!(error.message, "Unsupported preallocation mode: metadata");
    }

    #[tokio::test]
    async fn errors_are_qemus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none/a.raw");
        let error = create(options(&path, 512)).await.unwrap_err();
        assert_eq!(
            error.message,
            format!(
                "Could not create '{}': No such file or directory",
                path.display()
            )
        );
        let path = dir.path().join("hint.raw");
        let mut o = options(&path, 512);
        o.extent_size_hint = Some(Size(1 << 33));
        let error = create(o).await.unwrap_err();
        assert_eq!(error.message, "Extent size hint is too large");
        assert!(!path.exists(), "checked before the file is created");
    }

    #[tokio::test]
    async fn a_file_locked_by_a_writer_that_forbids_resizing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.raw");
        std::fs::write(&path, vec![0x55; 4096]).unwrap();
        let holder = File::options().read(true).write(true).open(&path).unwrap();
        let locks = ImageLocks::new(holder.as_raw_fd()).unwrap();
        locks.prepare(Perm::WRITE, !Perm::RESIZE).unwrap();
        let error = create(options(&path, 8192)).await.unwrap_err();
        assert_eq!(error.message, "Failed to get \"resize\" lock");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x55; 4096]);
        // Closing the descriptor releases its locks.
        drop(holder);
        create(options(&path, 8192)).await.unwrap();
    }
}

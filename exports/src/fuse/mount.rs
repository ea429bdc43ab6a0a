//! Mounting a FUSE connection over a regular file, and taking it away.
//!
//! The daemon mounts with `mount(2)` itself (as root, or with
//! `CAP_SYS_ADMIN`), which lets it own the `/dev/fuse` descriptor and
//! unmount exactly when the export goes: lazily (`MNT_DETACH`, as libfuse
//! does), so a process that still has the file open cannot keep the
//! export alive; the connection is then aborted through the fuse control
//! filesystem when it is mounted, so such a process sees errors at once
//! instead of talking to a deleted export. Mountpoints in use are
//! remembered by the path string given, as QEMU does, so that the same
//! path cannot be exported twice.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use schema::QmpError;

/// Mount options beyond the connection's own: the largest read the
/// kernel may send (it caps this at its page limit) and permission checks
/// by the kernel on the mode the export reports, as QEMU's exports.
const MAX_READ: usize = 64 << 20;

/// The mountpoints of live exports, as given.
static MOUNTPOINTS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn mountpoints() -> MutexGuard<'static, Option<HashSet<String>>> {
    // A set of strings stays consistent whatever a holder did.
    MOUNTPOINTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A mountpoint taken for one export; released when dropped.
pub struct MountpointClaim(String);

impl MountpointClaim {
    /// Claims `path`, which must be a regular file no other export of
    /// this process uses (QEMU's checks and messages, in its order).
    pub fn take(path: &str) -> Result<MountpointClaim, QmpError> {
        let mut claimed = mountpoints();
        let set = claimed.get_or_insert_with(HashSet::new);
        if set.contains(path) {
            return Err(QmpError::generic(format!(
                "There already is a FUSE export on '{path}'"
            )));
        }
        let metadata = std::fs::metadata(path).map_err(|e| {
            QmpError::generic(format!(
                "Failed to stat '{path}': {}",
                block::error::os_error_text(&e)
            ))
        })?;
        if !metadata.is_file() {
            return Err(QmpError::generic(format!("'{path}' is not a regular file")));
        }
        set.insert(path.to_string());
        Ok(MountpointClaim(path.to_string()))
    }

    pub fn path(&self) -> &str {
        &self.0
    }
}

impl Drop for MountpointClaim {
    fn drop(&mut self) {
        if let Some(set) = mountpoints().as_mut() {
            set.remove(&self.0);
        }
    }
}

/// A FUSE connection mounted over a file.
pub struct Mounted {
    path: PathBuf,
    /// The connection's device number, once known (for aborting it).
    device: Mutex<Option<u64>>,
}

/// Opens `/dev/fuse` and mounts the connection over `path` (a regular
/// file), reporting uid and gid as the mounting user's.
pub fn mount(path: &Path, allow_other: bool) -> std::io::Result<(OwnedFd, Mounted)> {
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let device = OwnedFd::from(device);
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},max_read={MAX_READ},default_permissions",
        device.as_raw_fd(),
        libc::S_IFREG,
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let data = CString::new(data).expect("no NUL in the options");
    // SAFETY: every pointer is to a NUL-terminated string that outlives
    // the call; the kernel copies what it needs.
    let rc = unsafe {
        libc::mount(
            c"/dev/fuse".as_ptr(),
            target.as_ptr(),
            c"fuse".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((
        device,
        Mounted {
            path: path.to_path_buf(),
            device: Mutex::new(None),
        },
    ))
}

impl Mounted {
    /// Notes the connection's device number; the session must be serving
    /// (this stats the mount, which the connection answers).
    pub fn learn_device(&self) {
        if let Ok(metadata) = std::fs::metadata(&self.path) {
            *self.device() = Some(metadata.dev());
        }
    }

    /// Detaches the mount, then aborts the connection if the fuse control
    /// filesystem can: a process with the file still open then gets
    /// errors rather than the export.
    pub fn unmount(&self) {
        if let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: `target` is a NUL-terminated path alive for the call.
            let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                tracing::warn!("cannot unmount FUSE export {}: {e}", self.path.display());
            }
        }
        if let Some(device) = *self.device() {
            let minor = libc::minor(device);
            let abort = format!("/sys/fs/fuse/connections/{minor}/abort");
            // Absent without the control filesystem: the connection then
            // ends when the last process closes the file.
            let _ = std::fs::write(abort, "1");
        }
    }

    fn device(&self) -> MutexGuard<'_, Option<u64>> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }
}

//! `--pidfile`: the daemon's process id in a file, written once the daemon
//! is ready and removed when it exits, as QSD does.
//!
//! Like QEMU's `qemu_write_pidfile`, the file is created with mode 0600 and
//! stays write-locked (a POSIX record lock) for the daemon's lifetime, so a
//! second daemon given the same file fails instead of overwriting it. The
//! lock is taken before the file is truncated, and the locked file is
//! checked to still be the one at the path, so two daemons racing for it
//! cannot both win.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use block::error::os_error_text;

/// How often creation is retried when another process replaces the file
/// between our open and our lock.
const MAX_CREATE_ATTEMPTS: usize = 16;

/// A written, locked pid file; dropping it removes the file.
#[derive(Debug)]
pub struct PidFile {
    /// The absolute path, so a later `chdir` does not matter.
    path: PathBuf,
    /// Holds the lock.
    _file: File,
}

impl PidFile {
    /// Writes this process's id to `path`. The error reads as QSD's
    /// (`cannot create PID file: Could not create '...': ...`).
    pub fn create(path: &Path) -> Result<PidFile, String> {
        let file =
            lock_fresh_file(path).map_err(|error| format!("cannot create PID file: {error}"))?;
        let written = file
            .set_len(0)
            .map_err(|error| format!("Failed to truncate pid file: {}", os_error_text(&error)))
            .and_then(|()| {
                writeln!(&file, "{}", std::process::id())
                    .map_err(|_| "Failed to write pid file".to_owned())
            });
        if let Err(error) = written {
            let _ = std::fs::remove_file(path);
            return Err(format!("cannot create PID file: {error}"));
        }
        let absolute = std::fs::canonicalize(path).map_err(|error| {
            let _ = std::fs::remove_file(path);
            format!(
                "cannot resolve PID file path: {}: {}",
                path.display(),
                os_error_text(&error)
            )
        })?;
        Ok(PidFile {
            path: absolute,
            _file: file,
        })
    }
}

/// Opens (creating) `path` and locks it, retrying if the file at `path`
/// is no longer the one locked.
fn lock_fresh_file(path: &Path) -> Result<File, String> {
    for _ in 0..MAX_CREATE_ATTEMPTS {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|error| {
                format!(
                    "Could not create '{}': {}",
                    path.display(),
                    os_error_text(&error)
                )
            })?;
        let opened = file
            .metadata()
            .map_err(|error| format!("Cannot stat file: {}", os_error_text(&error)))?;
        lock_whole_file(&file)
            .map_err(|error| format!("Cannot lock pid file: {}", os_error_text(&error)))?;
        match std::fs::metadata(path) {
            Ok(current) if current.ino() == opened.ino() && current.dev() == opened.dev() => {
                return Ok(file)
            }
            // Removed or replaced by a racing process: try again.
            _ => continue,
        }
    }
    Err(format!(
        "Could not create '{}': the file keeps being replaced",
        path.display()
    ))
}

/// A write lock on the whole file, failing at once if someone holds one.
fn lock_whole_file(file: &File) -> std::io::Result<()> {
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the fd is open for the duration of the call and `lock` is a
    // valid `flock` that fcntl only reads.
    let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(
                "cannot remove {}: {}",
                self.path.display(),
                os_error_text(&error)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pid_and_removes_on_drop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("d.pid");
        let pidfile = PidFile::create(&path).expect("pid file");
        let text = std::fs::read_to_string(&path).expect("readable");
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(pidfile);
        assert!(!path.exists());
    }

    #[test]
    fn missing_directory_is_reported_like_qemu() {
        let error = PidFile::create(Path::new("/nonexistent/x.pid")).expect_err("no dir");
        assert_eq!(
            error,
            "cannot create PID file: Could not create '/nonexistent/x.pid': No such file or directory"
        );
    }
}

//! Image locking compatible with QEMU's `file-posix` driver, so that
//! storaged, qemu-storage-daemon, qemu-img and qemu-io see each other's
//! use of an image exactly as two QEMU processes do.
//!
//! The scheme (QEMU `raw_apply_lock_bytes` / `raw_check_lock_bytes`): open
//! file description (OFD) read locks on single bytes. Byte `100 + bit`
//! says "I hold permission `bit`", byte `200 + bit` says "I do not share
//! permission `bit`", bits in `BLK_PERM_*` order. To take permissions, a
//! user first locks its own bytes, then tests (with a write-lock probe,
//! which read locks of other descriptions block) that nobody else holds an
//! "unshare" byte of a permission it takes, nor a "hold" byte of one it
//! does not share. Changes go through prepare/commit/abort like QEMU's
//! `raw_handle_perm_lock`.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

use crate::error::{os_error_text, BlockError, BlockResult, ErrorKind};
use crate::permissions::Perm;

/// First byte of the "holds permission" range (libvirt uses byte 0).
const LOCK_PERM_BASE: i64 = 100;
/// First byte of the "does not share permission" range.
const LOCK_SHARED_BASE: i64 = 200;

/// The lock state of one image file descriptor.
pub(crate) struct ImageLocks {
    fd: RawFd,
    state: Mutex<LockState>,
}

#[derive(Debug, Clone, Copy)]
struct LockState {
    /// The permissions in force (committed).
    perm: Perm,
    shared: Perm,
    /// Which "holds" bytes are locked.
    locked_perm: Perm,
    /// Which "does not share" bytes are locked (bit set = not shared).
    locked_unshared: Perm,
}

impl ImageLocks {
    /// Locks for `fd`, holding nothing; fails if the kernel lacks OFD locks.
    pub(crate) fn new(fd: RawFd) -> BlockResult<Self> {
        // Any answer but an error means the kernel knows OFD locks; a lock
        // held by someone else is no reason to go without.
        query_lock(fd, LOCK_PERM_BASE).map_err(|e| {
            BlockError::new(
                ErrorKind::NotSupported,
                format!(
                    "File lock requested but OFD locking syscall is unavailable: {}",
                    os_error_text(&e)
                ),
            )
        })?;
        Ok(ImageLocks {
            fd,
            state: Mutex::new(LockState {
                perm: Perm::NONE,
                shared: Perm::ALL,
                locked_perm: Perm::NONE,
                locked_unshared: Perm::NONE,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, LockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the bytes `perm`/`shared` need on top of the current ones and
    /// checks other users' bytes; on failure, back to the current state.
    pub(crate) fn prepare(&self, perm: Perm, shared: Perm) -> BlockResult<()> {
        let mut state = self.state();
        if (state.perm | perm) == state.perm && (state.shared & shared) == state.shared {
            // Only loosening: the commit unlocks, nothing can conflict.
            return Ok(());
        }
        let (held, unshared) = (state.perm | perm, !state.shared | !shared);
        let result = self
            .apply(&mut state, held, unshared, false)
            .and_then(|()| self.check(perm, shared));
        if result.is_err() {
            let (held, unshared) = (state.perm, !state.shared);
            // Only unlocks; an error here would leave extra locks, which
            // is safe.
            let _ = self.apply(&mut state, held, unshared, true);
        }
        result
    }

    /// Makes `perm`/`shared` the state in force, releasing other bytes.
    pub(crate) fn commit(&self, perm: Perm, shared: Perm) {
        let mut state = self.state();
        // Only unlocks (prepare took every byte needed).
        let _ = self.apply(&mut state, perm, !shared, true);
        state.perm = perm;
        state.shared = shared;
    }

    /// Drops the bytes a failed change took.
    pub(crate) fn abort(&self) {
        let mut state = self.state();
        let (held, unshared) = (state.perm, !state.shared);
        let _ = self.apply(&mut state, held, unshared, true);
    }

    /// Locks the bytes of `held` and `unshared`; with `unlock`, also
    /// releases the bytes of other bits.
    fn apply(
        &self,
        state: &mut LockState,
        held: Perm,
        unshared: Perm,
        unlock: bool,
    ) -> BlockResult<()> {
        for (base, wanted, locked) in [
            (LOCK_PERM_BASE, held, &mut state.locked_perm),
            (LOCK_SHARED_BASE, unshared, &mut state.locked_unshared),
        ] {
            for bit in Perm::ALL.bit_indices() {
                let byte = base + i64::from(bit);
                let p = Perm::from_bits(1 << bit);
                if wanted.contains(p) && !locked.contains(p) {
                    set_lock(self.fd, byte, libc::F_RDLCK)
                        .map_err(|e| lock_error(&e, format!("Failed to lock byte {byte}")))?;
                    *locked = *locked | p;
                } else if unlock && locked.contains(p) && !wanted.contains(p) {
                    set_lock(self.fd, byte, libc::F_UNLCK)
                        .map_err(|e| lock_error(&e, format!("Failed to unlock byte {byte}")))?;
                    *locked = *locked & !p;
                }
            }
        }
        Ok(())
    }

    /// Checks that no other user unshares what `perm` takes, nor holds
    /// what `shared` does not share.
    fn check(&self, perm: Perm, shared: Perm) -> BlockResult<()> {
        for bit in perm.bit_indices() {
            let p = Perm::from_bits(1 << bit);
            if let Err(e) = test_lock(self.fd, LOCK_SHARED_BASE + i64::from(bit)) {
                return Err(lock_error(
                    &e,
                    format!("Failed to get \"{}\" lock", p.human_names()),
                ));
            }
        }
        for bit in (!shared).bit_indices() {
            let p = Perm::from_bits(1 << bit);
            if let Err(e) = test_lock(self.fd, LOCK_PERM_BASE + i64::from(bit)) {
                return Err(lock_error(
                    &e,
                    format!("Failed to get shared \"{}\" lock", p.human_names()),
                ));
            }
        }
        Ok(())
    }
}

/// QEMU leaves out the errno text when the byte is simply locked by
/// someone else (`EAGAIN`/`EACCES`).
fn lock_error(err: &io::Error, message: String) -> BlockError {
    let message = match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => message,
        _ => format!("{message}: {}", os_error_text(err)),
    };
    BlockError::new(ErrorKind::PermissionDenied, message)
}

fn flock_for(byte: i64, lock_type: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    // The lock type constants are tiny and fit the `c_short` field.
    fl.l_type = lock_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

/// Sets (`F_RDLCK`) or clears (`F_UNLCK`) an OFD lock on one byte.
fn set_lock(fd: RawFd, byte: i64, lock_type: libc::c_int) -> io::Result<()> {
    let fl = flock_for(byte, lock_type);
    // SAFETY: `fl` is a valid flock for the call.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description holds a lock on the byte
/// (probed with a write lock, which any read lock blocks).
fn query_lock(fd: RawFd, byte: i64) -> io::Result<bool> {
    let mut fl = flock_for(byte, libc::F_WRLCK);
    // SAFETY: `fl` is a valid in/out flock for the call.
    if unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Fails with `EAGAIN` if another open file description holds a lock on
/// the byte.
fn test_lock(fd: RawFd, byte: i64) -> io::Result<()> {
    if query_lock(fd, byte)? {
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    } else {
        Ok(())
    }
}

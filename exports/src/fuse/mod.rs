//! The FUSE export: a node mounted over a regular file, whose contents
//! any tool then reads and writes as a raw image (QSD's `--export
//! type=fuse`).
//!
//! `mount` claims the mountpoint and mounts the connection; `session`
//! reads the kernel's requests from `/dev/fuse` on a few threads, each
//! with its own cloned descriptor, in the protocol `abi` decodes;
//! `image_file` answers them, its block I/O on the export's event loop.
//!
//! The file uses the page cache as QSD's export does (no `direct_io` on
//! open, cached pages dropped on each open): buffered readers get the
//! kernel's read-ahead, and `O_DIRECT` users reach the node directly,
//! with asynchronous direct I/O so their queue depth reaches the node.

mod abi;
mod image_file;
mod mount;
mod session;

use std::sync::{Arc, Mutex};

use block::{BackendPerms, Perm};
use schema::export::{BlockExportKind, FuseExportAllowOther};
use schema::QmpError;

use crate::export::{BlockExport, ExportContext};
use crate::life::{ExportLife, LifeGuard};
use image_file::{lock, ImageFile, ImageShared};
use mount::{Mounted, MountpointClaim};

/// A mounted FUSE export.
pub struct FuseExport {
    shared: Arc<ImageShared>,
    mounted: Mounted,
    /// Until shutdown: the mountpoint's claim and the hold that keeps the
    /// export from being gone while it is mounted.
    claim: Mutex<Option<(MountpointClaim, LifeGuard)>>,
}

impl BlockExport for FuseExport {
    fn life(&self) -> &ExportLife {
        &self.shared.life
    }

    fn shutdown(&self) {
        self.mounted.unmount();
        self.shared.release_backend();
        lock(&self.claim).take();
    }
}

/// Threads reading `/dev/fuse`: they only read and dispatch, so a few
/// are enough.
fn session_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.clamp(2, 4)
}

/// `block-export-add type=fuse` (QEMU's order of checks and messages:
/// the node and its permissions, the mountpoint, then the mount).
pub fn create_export(cx: &ExportContext<'_>) -> Result<Arc<dyn BlockExport>, QmpError> {
    let BlockExportKind::Fuse(fuse) = &cx.options.kind else {
        unreachable!("the registry calls each type's create with its own options")
    };
    let writable = cx.writable();
    let growable = fuse.growable.unwrap_or(false);
    let mut perm = Perm::CONSISTENT_READ;
    if writable {
        perm = perm | Perm::WRITE;
    }
    if writable || growable {
        perm = perm | Perm::RESIZE;
    }
    let backend = cx.attach(
        BackendPerms {
            perm,
            shared: Perm::ALL,
        },
        growable,
    )?;
    let claim = MountpointClaim::take(&fuse.mountpoint)?;
    // With an iothread every request runs there; without, a lone request
    // runs on the session thread that read it (see `ImageFile::spawn`).
    let threads = session_threads();
    let (runtime, inline_limit) = match &cx.iothread {
        Some(iothread) => (iothread.event_loop().handle().clone(), 0),
        None => (
            tokio::runtime::Handle::try_current()
                .map_err(|_| QmpError::generic("FUSE exports need the daemon's event loop"))?,
            threads - 1,
        ),
    };
    let path = std::path::Path::new(claim.path());
    let mount_failed = |e: std::io::Error| {
        QmpError::generic(format!(
            "Failed to mount FUSE session to export: {}",
            block::error::os_error_text(&e)
        ))
    };
    let (device, mounted, allow_other) = match fuse.allow_other.unwrap_or_default() {
        FuseExportAllowOther::On => mount::mount(path, true).map(|(d, m)| (d, m, true)),
        FuseExportAllowOther::Off => mount::mount(path, false).map(|(d, m)| (d, m, false)),
        FuseExportAllowOther::Auto => mount::mount(path, true)
            .map(|(d, m)| (d, m, true))
            .or_else(|_| mount::mount(path, false).map(|(d, m)| (d, m, false))),
    }
    .map_err(mount_failed)?;
    let shared = Arc::new(ImageShared::new(
        backend,
        writable,
        growable,
        allow_other,
        runtime,
        inline_limit,
    ));
    // Without allow_other the kernel lets only the daemon's user reach the
    // file; with it, the mode decides (default_permissions).
    let image = ImageFile(Arc::clone(&shared));
    session::start(device, image, threads).map_err(|e| {
        mounted.unmount();
        mount_failed(e)
    })?;
    mounted.learn_device();
    let hold = shared.life.hold();
    Ok(Arc::new(FuseExport {
        shared,
        mounted,
        claim: Mutex::new(Some((claim, hold))),
    }))
}

//! The vhost-user-blk export: a node served as a virtio-blk device to a
//! virtual machine's frontend (QEMU's `vhost-user-blk-pci`,
//! cloud-hypervisor's `vhost_user=true` disks) over a Unix socket, QSD's
//! `--export type=vhost-user-blk`.
//!
//! The vhost-user protocol comes from the rust-vmm crates
//! (`vhost-user-backend`, `vhost`, `virtio-queue`, `vm-memory`); `device`
//! is the virtio-blk device, `request` one request, `guest_memory` the
//! mapping of a descriptor chain into guest memory, `config` the
//! features and configuration space, `config_change` the notice of a
//! resize. This module owns the socket: one frontend at a time is
//! served, each with a fresh device, and the next one may connect when
//! it leaves (a VM restarts).

mod config;
mod config_change;
mod device;
mod guest_memory;
mod request;

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use block::{BackendPerms, Perm};
use schema::export::{BlockExportKind, BlockExportOptionsVhostUserBlk};
use schema::sockets::SocketAddressKind;
use schema::QmpError;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::export::{BlockExport, ExportContext};
use crate::life::{ExportLife, LifeGuard};
use crate::nbd::server::remove_stale_socket;
use config_change::ConfigChangeNotifier;
use device::{BlkDevice, DiskSettings};

/// The most queues one device may have: the `vhost-user-backend` crate
/// deals queues to its threads with a 64-bit mask.
const MAX_QUEUES: u16 = 64;

/// Logical block sizes QEMU accepts: powers of two in this range.
const BLOCK_SIZE_RANGE: std::ops::RangeInclusive<u64> = 512..=2 * 1024 * 1024;

/// What `GET_ID` answers (QSD's serial for every vhost-user-blk export).
const SERIAL: &str = "vhost_user_blk";

/// A vhost-user-blk export.
pub struct VhostUserBlkExport {
    shared: Arc<Shared>,
}

/// What the export and its socket thread share.
struct Shared {
    life: ExportLife,
    listener: UnixListener,
    /// The socket file to remove at shutdown (not for a passed descriptor).
    socket_path: Option<PathBuf>,
    closing: AtomicBool,
    /// The connected frontend's connection, to cut at shutdown.
    session: Mutex<Option<ShutdownHandle>>,
    /// Tells the connected frontend that the capacity changed.
    config_change: Arc<ConfigChangeNotifier>,
}

impl BlockExport for VhostUserBlkExport {
    fn life(&self) -> &ExportLife {
        &self.shared.life
    }

    fn shutdown(&self) {
        let shared = &self.shared;
        let session = {
            let mut session = lock(&shared.session);
            shared.closing.store(true, Ordering::SeqCst);
            session.take()
        };
        // Wakes the socket thread if it waits for a frontend.
        // SAFETY: shutdown(2) on a socket the export owns; no memory.
        unsafe { libc::shutdown(shared.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(session) = session {
            session.shutdown();
        }
        shared.config_change.unwatch();
        if let Some(path) = &shared.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `block-export-add type=vhost-user-blk` (QEMU's order of checks: the
/// node, the block size, the queue count, then the socket).
pub fn create_export(cx: &ExportContext<'_>) -> Result<Arc<dyn BlockExport>, QmpError> {
    let BlockExportKind::VhostUserBlk(options) = &cx.options.kind else {
        unreachable!("the registry calls each type's create with its own options")
    };
    let mut perm = Perm::CONSISTENT_READ;
    if cx.writable() {
        perm = perm | Perm::WRITE;
    }
    let backend = cx.attach(
        BackendPerms {
            perm,
            shared: Perm::ALL,
        },
        false,
    )?;
    let logical_block_size = logical_block_size(options)?;
    let num_queues = options.num_queues.unwrap_or(1);
    if num_queues == 0 {
        return Err(QmpError::generic("num-queues must be greater than 0"));
    }
    if num_queues > MAX_QUEUES {
        return Err(QmpError::generic(format!(
            "num-queues must be at most {MAX_QUEUES}"
        )));
    }
    let (listener, socket_path) = listen(options)?;
    let poll = cx
        .iothread
        .as_ref()
        .map_or(Duration::ZERO, |iothread| iothread.poll_limit());
    let runtime = match &cx.iothread {
        Some(iothread) => iothread.event_loop().handle().clone(),
        None => tokio::runtime::Handle::try_current().map_err(|_| {
            QmpError::generic("vhost-user-blk exports need the daemon's event loop")
        })?,
    };
    let disk = Arc::new(DiskSettings {
        backend,
        logical_block_size,
        num_queues,
        runtime,
        serial: SERIAL.to_string(),
        poll,
    });
    let shared = Arc::new(Shared {
        life: ExportLife::new(None),
        listener,
        socket_path,
        closing: AtomicBool::new(false),
        session: Mutex::new(None),
        config_change: Arc::default(),
    });
    shared.config_change.watch(&disk.backend);
    let hold = shared.life.hold();
    let thread_shared = Arc::clone(&shared);
    std::thread::Builder::new()
        .name(
            format!("vhost-user {}", cx.options.id)
                .chars()
                .take(15)
                .collect(),
        )
        .spawn(move || serve_frontends(&thread_shared, &disk, hold))
        .map_err(|e| QmpError::generic(format!("Failed to start the export: {e}")))?;
    Ok(Arc::new(VhostUserBlkExport { shared }))
}

/// The logical block size from the options (QEMU's default 512).
fn logical_block_size(options: &BlockExportOptionsVhostUserBlk) -> Result<u32, QmpError> {
    let size = options.logical_block_size.map_or(512, |s| s.0);
    if !size.is_power_of_two() || !BLOCK_SIZE_RANGE.contains(&size) {
        return Err(QmpError::generic(format!(
            "parameter logical-block-size must be a power of 2 between {} and {}",
            BLOCK_SIZE_RANGE.start(),
            BLOCK_SIZE_RANGE.end()
        )));
    }
    Ok(size as u32)
}

/// The listening socket: a path (replacing a stale socket there) or a
/// descriptor the daemon inherited.
fn listen(
    options: &BlockExportOptionsVhostUserBlk,
) -> Result<(UnixListener, Option<PathBuf>), QmpError> {
    match &options.addr.addr {
        SocketAddressKind::Unix(unix) => {
            let path = PathBuf::from(&unix.path);
            remove_stale_socket(&path);
            let listener = UnixListener::bind(&path).map_err(|e| {
                QmpError::generic(format!(
                    "Failed to bind socket to {}: {}",
                    path.display(),
                    block::error::os_error_text(&e)
                ))
            })?;
            Ok((listener, Some(path)))
        }
        SocketAddressKind::Fd(fd) => Ok((adopt_listener(&fd.str)?, None)),
        _ => Err(QmpError::generic(
            "Only socket address types 'unix' and 'fd' are supported",
        )),
    }
}

/// A listening Unix socket passed by descriptor number.
fn adopt_listener(name: &str) -> Result<UnixListener, QmpError> {
    let not_socket = || QmpError::generic(format!("File descriptor '{name}' is not a socket"));
    let fd: RawFd = name.parse().map_err(|_| {
        QmpError::generic(format!("File descriptor named '{name}' has not been found"))
    })?;
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `address`.
    let rc = unsafe { libc::getsockname(fd, (&raw mut address).cast(), &mut len) };
    if rc != 0 {
        return Err(not_socket());
    }
    if address.ss_family != libc::AF_UNIX as libc::sa_family_t {
        return Err(QmpError::generic(
            "Only socket address types 'unix' and 'fd' are supported",
        ));
    }
    // SAFETY: the descriptor is a socket the daemon inherited for this
    // export; the export takes it over.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

/// The socket thread: serves one frontend after the other until the
/// export shuts down, then lets go of `hold`.
fn serve_frontends(shared: &Shared, disk: &Arc<DiskSettings>, hold: LifeGuard) {
    let mut listener = match shared.listener.try_clone() {
        Ok(listener) => Listener::from(listener),
        Err(e) => {
            tracing::error!("vhost-user-blk: cannot use the socket: {e}");
            return;
        }
    };
    while !shared.closing.load(Ordering::SeqCst) {
        if let Err(e) = serve_one(shared, disk, &mut listener) {
            if !shared.closing.load(Ordering::SeqCst) {
                tracing::warn!("vhost-user-blk: {e}");
                // A broken listener would spin: give up on it.
                if matches!(e, ServeError::Accept(_)) {
                    break;
                }
            }
        }
    }
    drop(hold);
}

enum ServeError {
    Accept(String),
    Session(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Accept(e) => write!(f, "cannot accept a frontend: {e}"),
            ServeError::Session(e) => write!(f, "frontend connection ended: {e}"),
        }
    }
}

/// Waits for a frontend and serves it until it disconnects; every
/// request it started is finished or cancelled on return.
fn serve_one(
    shared: &Shared,
    disk: &Arc<DiskSettings>,
    listener: &mut Listener,
) -> Result<(), ServeError> {
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let device = Arc::new(BlkDevice::new(
        Arc::clone(disk),
        memory.clone(),
        Arc::clone(&shared.config_change),
        shared.life.disconnect_token(),
    ));
    let mut daemon = VhostUserDaemon::new("vhost-user-blk".into(), Arc::clone(&device), memory)
        .map_err(|e| ServeError::Accept(e.to_string()))?;
    let started = daemon.start(listener);
    if let Err(e) = started {
        device.close();
        return Err(ServeError::Accept(e.to_string()));
    }
    let client = shared.life.attach_client();
    {
        let mut session = lock(&shared.session);
        if shared.closing.load(Ordering::SeqCst) || client.is_none() {
            daemon.request_shutdown();
        } else {
            *session = daemon.shutdown_handle();
        }
    }
    let ended = daemon
        .wait()
        .map_err(|e| ServeError::Session(e.to_string()));
    lock(&shared.session).take();
    device.close();
    drop(client);
    ended
}

/// Locks `mutex`; a panic while holding these locks leaves their data valid.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Telling the frontend that the disk was resized, so that the guest sees
//! the new capacity at once (`VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` on the
//! backend request channel; the frontend then reads the configuration
//! again and interrupts the guest).
//!
//! The export watches its node's resizes through the write chokepoint.
//! The channel is a socket the frontend hands over with
//! `VHOST_USER_SET_BACKEND_REQ_FD`. The `vhost` crate (0.18) wraps it in a
//! `Backend` that can send shared-object and shared-memory requests but
//! not this one, and does not give out its descriptor, so the device
//! finds it among the process's descriptors right after it arrived (see
//! [`BackendChannel::find`]): the one unnamed Unix stream socket whose
//! peer is another process and that no other connection claimed. If that
//! is ambiguous (two frontends handing over channels at the same
//! instant), the connection goes without resize notices and says so.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use block::{BlockBackend, BlockResult, Node, WriteKind, WriteObserver, WriteRequest};

use super::lock;

/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`.
const CONFIG_CHANGE_MSG: u32 = 2;

/// Version 1 of the message format, no reply wanted.
const VERSION_FLAGS: u32 = 0x1;

/// Socket inodes that connections have claimed as their channel.
static CLAIMED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

/// A frontend's backend request channel.
pub struct BackendChannel {
    socket: OwnedFd,
    inode: u64,
}

impl BackendChannel {
    /// The channel the frontend has just handed over, if it can be told
    /// apart (see the module comment).
    pub fn find() -> Option<BackendChannel> {
        let own_pid = std::process::id();
        let mut claimed = lock(&CLAIMED);
        let claimed = claimed.get_or_insert_with(HashSet::new);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<RawFd>().ok())
            else {
                continue;
            };
            let Some(inode) = socket_inode(&entry.path()) else {
                continue;
            };
            if !claimed.contains(&inode) && is_peer_channel(fd, own_pid) {
                found.push((fd, inode));
            }
        }
        let [(fd, inode)] = found[..] else {
            tracing::warn!(
                "vhost-user-blk: cannot tell the frontend's backend channel apart \
                 ({} candidates): resizes will not be announced to this guest",
                found.len()
            );
            return None;
        };
        // SAFETY: `fd` was open a moment ago and the `Backend` that owns it
        // is alive (the device keeps it); the duplicate is owned here.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .ok()?;
        claimed.insert(inode);
        Some(BackendChannel { socket, inode })
    }

    /// Sends the notice; the frontend is not asked to reply.
    fn send_config_change(&self) {
        let mut message = [0u8; 12];
        message[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        message[4..8].copy_from_slice(&VERSION_FLAGS.to_le_bytes());
        // SAFETY: sends 12 bytes from a live buffer on an owned socket.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if sent != message.len() as isize {
            tracing::warn!(
                "vhost-user-blk: cannot announce a resize: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Drop for BackendChannel {
    fn drop(&mut self) {
        if let Some(claimed) = lock(&CLAIMED).as_mut() {
            claimed.remove(&self.inode);
        }
    }
}

/// The inode of the socket a `/proc/self/fd` entry links to.
fn socket_inode(link: &std::path::Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    let target = target.to_str()?;
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether `fd` is a connected, unnamed Unix stream socket whose peer is
/// unnamed too (one end of a socket pair) and another process.
fn is_peer_channel(fd: RawFd, own_pid: u32) -> bool {
    let int_option = |option| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    if int_option(libc::SO_DOMAIN) != Some(libc::AF_UNIX)
        || int_option(libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        || int_option(libc::SO_ACCEPTCONN) != Some(0)
    {
        return false;
    }
    let unnamed = |get: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int| {
        // SAFETY: an all-zero sockaddr_un is a valid value.
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: the call writes at most `len` bytes into `address`.
        let rc = unsafe { get(fd, (&raw mut address).cast(), &mut len) };
        rc == 0 && len as usize <= std::mem::size_of::<libc::sa_family_t>()
    };
    if !unnamed(libc::getsockname) || !unnamed(libc::getpeername) {
        return false;
    }
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `credentials`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &mut len,
        )
    };
    rc == 0 && credentials.pid > 0 && credentials.pid as u32 != own_pid
}

/// The node watched and the observer attached to it.
type Watch = (Arc<Node>, Arc<dyn WriteObserver>);

/// The export's side: watches the node for resizes and announces them
/// to the frontend connected at the time.
#[derive(Default)]
pub struct ConfigChangeNotifier {
    channel: Arc<Mutex<Option<Arc<BackendChannel>>>>,
    watch: Mutex<Option<Watch>>,
}

impl ConfigChangeNotifier {
    /// Starts watching the backend's node.
    pub fn watch(&self, backend: &BlockBackend) {
        let node = backend.node();
        let observer: Arc<dyn WriteObserver> = Arc::new(ResizeObserver {
            channel: Arc::clone(&self.channel),
        });
        node.attach_write_observer(Arc::clone(&observer));
        *lock(&self.watch) = Some((node, observer));
    }

    /// Stops watching (at shutdown).
    pub fn unwatch(&self) {
        if let Some((node, observer)) = lock(&self.watch).take() {
            node.detach_write_observer(&observer);
        }
    }

    /// Announces resizes on `channel` from now on (`None`: to nobody).
    pub fn set_channel(&self, channel: Option<Arc<BackendChannel>>) {
        *lock(&self.channel) = channel;
    }
}

struct ResizeObserver {
    channel: Arc<Mutex<Option<Arc<BackendChannel>>>>,
}

#[async_trait]
impl WriteObserver for ResizeObserver {
    async fn before_write(&self, _node: &Node, _request: &WriteRequest) -> BlockResult<()> {
        Ok(())
    }

    fn after_write(&self, _node: &Node, request: &WriteRequest, result: &BlockResult<()>) {
        if request.kind == WriteKind::Resize && result.is_ok() {
            if let Some(channel) = lock(&self.channel).as_ref() {
                channel.send_config_change();
            }
        }
    }
}

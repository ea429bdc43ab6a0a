//! A vhost-user frontend for tests: what a VMM does for a virtio-blk
//! device, with the `vhost` crate's frontend side, guest memory in a
//! memfd shared with the daemon, and split virtqueues laid out by hand in
//! that memory (so that tests can also build chains no driver would).

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory size.
const MEMORY_SIZE: usize = 64 << 20;
/// Where queue `q`'s rings start: `q` MiB.
const QUEUE_AREA: u64 = 1 << 20;
/// Where data buffers are allocated from.
const DATA_START: u64 = 16 << 20;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const F_VERSION_1: u64 = 1 << 32;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// One descriptor as a test writes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    /// A device-readable buffer.
    pub fn readable(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    /// A device-writable buffer.
    pub fn writable(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            flags: DESC_F_WRITE,
            next: 0,
        }
    }
}

/// A split virtqueue in guest memory.
struct SplitQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_idx: u16,
    kick: EventFd,
    call: EventFd,
}

/// A connected frontend with its memory and queues.
pub struct TestFrontend {
    frontend: Frontend,
    pub memory: GuestMemoryMmap,
    queues: Vec<SplitQueue>,
    next_data: u64,
    /// The daemon's end of the backend request channel is its peer.
    pub backend_channel: Option<UnixStream>,
}

/// What to negotiate.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub queues: usize,
    pub queue_size: u16,
    /// Virtio features to accept, if offered.
    pub want: u64,
    pub backend_channel: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            queues: 1,
            queue_size: 128,
            want: F_VERSION_1 | F_FLUSH | F_DISCARD | F_WRITE_ZEROES | F_MQ | F_RO,
            backend_channel: false,
        }
    }
}

impl TestFrontend {
    /// Connects to `socket` and brings the device up as QEMU does.
    pub fn connect(socket: &Path, setup: Setup) -> TestFrontend {
        let mut frontend = connect_with_retry(socket, setup.queues as u64);
        frontend.set_owner().expect("SET_OWNER");
        let offered = frontend.get_features().expect("GET_FEATURES");
        assert_ne!(
            offered & F_PROTOCOL_FEATURES,
            0,
            "protocol features offered"
        );
        let protocol = frontend
            .get_protocol_features()
            .expect("GET_PROTOCOL_FEATURES");
        let mut want = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        if setup.backend_channel {
            want |= VhostUserProtocolFeatures::BACKEND_REQ;
        }
        frontend
            .set_protocol_features(protocol & want)
            .expect("SET_PROTOCOL_FEATURES");
        let backend_channel = setup.backend_channel.then(|| {
            let (ours, theirs) = UnixStream::pair().expect("socket pair");
            frontend
                .set_backend_request_fd(&theirs)
                .expect("SET_BACKEND_REQ_FD");
            ours
        });
        frontend
            .set_features(offered & (setup.want | F_PROTOCOL_FEATURES))
            .expect("SET_FEATURES");

        let memory = shared_memory();
        let host_base = memory
            .get_host_address(GuestAddress(0))
            .expect("host address") as u64;
        let memfd = memory
            .find_region(GuestAddress(0))
            .and_then(|r| r.file_offset())
            .expect("memfd")
            .file()
            .try_clone()
            .expect("dup memfd");
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: MEMORY_SIZE as u64,
                userspace_addr: host_base,
                mmap_offset: 0,
                mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&memfd),
            }])
            .expect("SET_MEM_TABLE");

        let mut queues = Vec::new();
        for index in 0..setup.queues {
            let queue = SplitQueue::new(&memory, index, setup.queue_size);
            frontend
                .set_vring_num(index, setup.queue_size)
                .expect("SET_VRING_NUM");
            frontend.set_vring_base(index, 0).expect("SET_VRING_BASE");
            frontend
                .set_vring_addr(
                    index,
                    &VringConfigData {
                        queue_max_size: setup.queue_size,
                        queue_size: setup.queue_size,
                        flags: 0,
                        desc_table_addr: host_base + queue.desc,
                        used_ring_addr: host_base + queue.used,
                        avail_ring_addr: host_base + queue.avail,
                        log_addr: None,
                    },
                )
                .expect("SET_VRING_ADDR");
            frontend
                .set_vring_kick(index, &queue.kick)
                .expect("SET_VRING_KICK");
            frontend
                .set_vring_call(index, &queue.call)
                .expect("SET_VRING_CALL");
            frontend
                .set_vring_enable(index, true)
                .expect("SET_VRING_ENABLE");
            queues.push(queue);
        }
        TestFrontend {
            frontend,
            memory,
            queues,
            next_data: DATA_START,
            backend_channel,
        }
    }

    /// The features the device offers.
    pub fn offered_features(&self) -> u64 {
        self.frontend.get_features().expect("GET_FEATURES")
    }

    /// How many queues the device has.
    pub fn queue_num(&mut self) -> u64 {
        self.frontend.get_queue_num().expect("GET_QUEUE_NUM")
    }

    /// `len` bytes of the configuration space from `offset`.
    pub fn config(&mut self, offset: u32, len: u32) -> Vec<u8> {
        let (_, bytes) = self
            .frontend
            .get_config(
                offset,
                len,
                VhostUserConfigFlags::WRITABLE,
                &vec![0; len as usize],
            )
            .expect("GET_CONFIG");
        bytes
    }

    /// The capacity in sectors, from the configuration space.
    pub fn capacity(&mut self) -> u64 {
        u64::from_le_bytes(self.config(0, 8).try_into().expect("8 bytes"))
    }

    /// A fresh buffer of `len` bytes in guest memory, filled with `fill`.
    pub fn alloc(&mut self, len: usize, fill: u8) -> u64 {
        let addr = self.next_data;
        self.next_data = (addr + len as u64 + 15) & !15;
        assert!(
            self.next_data <= MEMORY_SIZE as u64,
            "test guest memory full"
        );
        self.write(addr, &vec![fill; len]);
        addr
    }

    /// Writes guest memory.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.memory
            .write_slice(bytes, GuestAddress(addr))
            .expect("guest write");
    }

    /// Reads guest memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.memory
            .read_slice(&mut bytes, GuestAddress(addr))
            .expect("guest read");
        bytes
    }

    /// A request header in guest memory.
    pub fn header(&mut self, kind: u32, sector: u64) -> u64 {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        let addr = self.alloc(16, 0);
        self.write(addr, &header);
        addr
    }

    /// Puts a chain of `descs` (linked in order) on `queue` and kicks.
    pub fn submit(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        let mut linked = descs.to_vec();
        let base = self.queues[queue].next_desc;
        let size = self.queues[queue].size;
        for (i, desc) in linked.iter_mut().enumerate() {
            if i + 1 < descs.len() {
                desc.flags |= DESC_F_NEXT;
                desc.next = (base + i as u16 + 1) % size;
            }
        }
        self.submit_raw(queue, &linked)
    }

    /// Puts `descs` in the table as they are (their flags and `next`
    /// unchanged) from the queue's next free slot; the first is the
    /// head. Kicks.
    pub fn submit_raw(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        let q = &mut self.queues[queue];
        let head = q.next_desc;
        for (i, desc) in descs.iter().enumerate() {
            let slot = (head + i as u16) % q.size;
            let at = q.desc + 16 * u64::from(slot);
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&desc.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&desc.len.to_le_bytes());
            raw[12..14].copy_from_slice(&desc.flags.to_le_bytes());
            raw[14..16].copy_from_slice(&desc.next.to_le_bytes());
            self.memory
                .write_slice(&raw, GuestAddress(at))
                .expect("descriptor");
        }
        q.next_desc = (head + descs.len() as u16) % q.size;
        let ring_slot = q.avail + 4 + 2 * u64::from(q.avail_idx % q.size);
        self.memory
            .write_obj(head.to_le(), GuestAddress(ring_slot))
            .expect("avail ring");
        fence(Ordering::SeqCst);
        q.avail_idx = q.avail_idx.wrapping_add(1);
        self.memory
            .write_obj(q.avail_idx.to_le(), GuestAddress(q.avail + 2))
            .expect("avail idx");
        fence(Ordering::SeqCst);
        q.kick.write(1).expect("kick");
        head
    }

    /// The descriptor slot the next chain of `queue` starts at.
    pub fn next_slot(&self, queue: usize) -> u16 {
        self.queues[queue].next_desc
    }

    /// Puts one descriptor pointing at an indirect table of `descs`.
    pub fn submit_indirect(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        let table = self.alloc(16 * descs.len(), 0);
        for (i, desc) in descs.iter().enumerate() {
            let mut raw = [0u8; 16];
            let mut flags = desc.flags;
            if i + 1 < descs.len() {
                flags |= DESC_F_NEXT;
            }
            raw[0..8].copy_from_slice(&desc.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&desc.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            self.write(table + 16 * i as u64, &raw);
        }
        let head = Desc {
            addr: table,
            len: 16 * descs.len() as u32,
            flags: DESC_F_INDIRECT,
            next: 0,
        };
        self.submit_raw(queue, &[head])
    }

    /// Waits for the next used element of `queue`: (head, length).
    pub fn wait_used(&mut self, queue: usize) -> (u16, u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let q = &mut self.queues[queue];
        loop {
            let used_idx: u16 = self
                .memory
                .read_obj(GuestAddress(q.used + 2))
                .expect("used idx");
            if used_idx != q.used_idx {
                fence(Ordering::SeqCst);
                let at = q.used + 4 + 8 * u64::from(q.used_idx % q.size);
                let id: u32 = self.memory.read_obj(GuestAddress(at)).expect("used id");
                let len: u32 = self
                    .memory
                    .read_obj(GuestAddress(at + 4))
                    .expect("used len");
                q.used_idx = q.used_idx.wrapping_add(1);
                return (id as u16, len);
            }
            assert!(
                Instant::now() < deadline,
                "no completion on queue {queue} within 20 s"
            );
            let mut poll = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&q.call),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one valid descriptor for at most 50 ms.
            unsafe { libc::poll(&mut poll, 1, 50) };
            let _ = q.call.read();
        }
    }

    /// Runs a request `kind` at `sector` with `data` (device-readable
    /// segments for writes) or `read_len` bytes to fill, and returns the
    /// status, the used length and what the device wrote.
    pub fn request(
        &mut self,
        queue: usize,
        kind: u32,
        sector: u64,
        data: &[&[u8]],
        read_len: usize,
    ) -> (u8, u32, Vec<u8>) {
        let header = self.header(kind, sector);
        let mut descs = vec![Desc::readable(header, 16)];
        for segment in data {
            let addr = self.alloc(segment.len(), 0);
            self.write(addr, segment);
            descs.push(Desc::readable(addr, segment.len() as u32));
        }
        let read_at = self.alloc(read_len, 0xee);
        if read_len > 0 {
            descs.push(Desc::writable(read_at, read_len as u32));
        }
        let status = self.alloc(1, 0xff);
        descs.push(Desc::writable(status, 1));
        let head = self.submit(queue, &descs);
        let (used_head, used_len) = self.wait_used(queue);
        assert_eq!(used_head, head, "completions come back by head");
        (
            self.read(status, 1)[0],
            used_len,
            self.read(read_at, read_len),
        )
    }

    /// Takes queue `queue` back (`GET_VRING_BASE`, which waits for its
    /// requests in flight); the result is the next available index.
    pub fn stop_queue(&self, queue: usize) -> std::io::Result<u32> {
        self.frontend
            .get_vring_base(queue)
            .map_err(std::io::Error::other)
    }

    /// Disconnects (the VM goes away).
    pub fn disconnect(self) {
        drop(self.frontend);
    }
}

impl SplitQueue {
    fn new(memory: &GuestMemoryMmap, index: usize, size: u16) -> SplitQueue {
        let desc = QUEUE_AREA * (index as u64 + 1);
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let zeroes = vec![0u8; (used + 6 + 8 * u64::from(size) - desc) as usize];
        memory
            .write_slice(&zeroes, GuestAddress(desc))
            .expect("clear rings");
        SplitQueue {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_idx: 0,
            kick: EventFd::new(0).expect("kick eventfd"),
            call: EventFd::new(libc::EFD_NONBLOCK).expect("call eventfd"),
        }
    }
}

/// Guest memory in a memfd, mapped shared.
fn shared_memory() -> GuestMemoryMmap {
    // SAFETY: memfd_create with a NUL-terminated name; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(c"storaged-test-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor this function owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEMORY_SIZE as u64).expect("size the memfd");
    let region = MmapRegion::from_file(FileOffset::new(file, 0), MEMORY_SIZE).expect("mmap");
    let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("region");
    GuestMemoryMmap::from_regions(vec![region]).expect("guest memory")
}

/// The export's socket appears shortly after the daemon is ready.
fn connect_with_retry(socket: &Path, queues: u64) -> Frontend {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Frontend::connect(socket, queues) {
            Ok(frontend) => return frontend,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

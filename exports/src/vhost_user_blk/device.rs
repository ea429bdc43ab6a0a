//! The virtio-blk device one frontend talks to: what the
//! `vhost-user-backend` crate asks of a device (features, configuration,
//! queue events), and the path of a request from its virtqueue to the
//! node and back.
//!
//! The crate runs one thread per group of queues; on a kick that thread
//! takes every available chain off its queue, maps it into guest memory
//! and starts it: right there until it would wait (a page-cache hit
//! completes with no thread hand-over), then on the export's event loop
//! (its iothread, or the daemon's loops), so many requests of many
//! queues run at once. A finished request goes into the used ring, and
//! the guest is interrupted once per batch, and only when the event
//! index asks for it. Each queue counts its requests
//! in flight: stopping a queue (`GET_VRING_BASE`) waits until they are
//! done, so the frontend never sees a completion after it took the ring
//! back. A new device is made for each frontend connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use block::BlockBackend;
use tokio_util::sync::CancellationToken;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::config::{self, BlkConfig, SECTOR_SIZE, WRITEBACK_OFFSET};
use super::config_change::{BackendChannel, ConfigChangeNotifier};
use super::guest_memory::{map_chain, GuestMemory, MappedChain};
use super::lock;
use super::request::{self, Completion, Disk};

/// The guest memory as the crate shares it with the device.
pub type AtomicGuestMemory = GuestMemoryAtomic<GuestMemory>;

/// A virtqueue as the crate shares it.
type Vring = VringRwLock<AtomicGuestMemory>;

/// The longest virtqueue a frontend may set up (QEMU's
/// `VIRTQUEUE_MAX_SIZE`).
const MAX_QUEUE_SIZE: usize = 1024;

/// What does not change while the export lives.
pub struct DiskSettings {
    pub backend: BlockBackend,
    pub logical_block_size: u32,
    pub num_queues: u16,
    /// Where requests run.
    pub runtime: tokio::runtime::Handle,
    /// What `GET_ID` answers.
    pub serial: String,
    /// How long a queue's thread watches the ring for more requests after
    /// a batch: the iothread's `poll-max-ns`; nothing without an iothread
    /// (as QSD's main loop, which does not poll).
    pub poll: Duration,
}

/// The device of one frontend connection.
pub struct BlkDevice {
    disk: Arc<DiskSettings>,
    memory: AtomicGuestMemory,
    /// Whether the guest's writes may be cached (it then sends flushes).
    writeback: AtomicBool,
    /// Threads the crate runs the queues on.
    threads: usize,
    /// Requests in flight, per queue.
    in_flight: Vec<Arc<InFlight>>,
    /// How the crate's queue threads are told to end.
    exit_notifiers: Mutex<Vec<EventNotifier>>,
    /// Cancelled when the frontend is gone or the export is closed hard:
    /// its requests stop (also one that the node would never finish).
    gone: CancellationToken,
    /// Where resizes are announced, and the frontend's request channel
    /// (kept open while the frontend is connected).
    config_change: Arc<ConfigChangeNotifier>,
    backend_channel: Mutex<Option<Backend>>,
}

impl BlkDevice {
    /// A device for a new frontend, sharing `memory` with the crate.
    pub fn new(
        disk: Arc<DiskSettings>,
        memory: AtomicGuestMemory,
        config_change: Arc<ConfigChangeNotifier>,
        export_closed: &CancellationToken,
    ) -> BlkDevice {
        let queues = usize::from(disk.num_queues);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        BlkDevice {
            writeback: AtomicBool::new(!disk.backend.mode().writethrough),
            threads: queues.min(cpus).max(1),
            in_flight: (0..queues).map(|_| Arc::default()).collect(),
            exit_notifiers: Mutex::new(Vec::new()),
            gone: export_closed.child_token(),
            config_change,
            backend_channel: Mutex::new(None),
            disk,
            memory,
        }
    }

    /// The configuration space as it is now (capacity follows the node).
    pub fn config(&self) -> BlkConfig {
        BlkConfig {
            capacity: self.disk.backend.size() / SECTOR_SIZE,
            blk_size: self.disk.logical_block_size,
            writeback: self.writeback.load(Ordering::Relaxed),
            num_queues: self.disk.num_queues,
        }
    }

    /// Ends the crate's queue threads and the frontend's requests, and
    /// waits until no request is in flight.
    pub fn close(&self) {
        self.config_change.set_channel(None);
        lock(&self.backend_channel).take();
        for notifier in lock(&self.exit_notifiers).iter() {
            let _ = notifier.notify();
        }
        self.gone.cancel();
        for queue in &self.in_flight {
            queue.wait_idle();
        }
    }

    /// The queue that is local queue `local` of thread `thread` (queues
    /// are dealt to threads in turn).
    fn queue_index(&self, thread: usize, local: usize) -> usize {
        thread + local * self.threads
    }

    /// Takes every available chain off `vring` and starts it; the guest
    /// is interrupted once for the requests that finished meanwhile.
    fn drain_queue(&self, vring: &Vring, queue: usize) -> std::io::Result<()> {
        let memory = self.memory.memory().into_inner();
        let mut finished = false;
        let drained = loop {
            vring
                .disable_notification()
                .map_err(std::io::Error::other)?;
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(Arc::clone(&memory));
                let Some(chain) = chain else { break };
                finished |= self.start(vring, queue, map_chain(chain, &memory));
            }
            if self.poll_avail(vring, &memory) {
                continue;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break Ok(()),
                Err(e) => break Err(std::io::Error::other(e)),
            }
        };
        if finished {
            interrupt(vring);
        }
        drained
    }

    /// Watches the available ring for a moment ([`DiskSettings::poll`])
    /// before asking the guest to kick again: a request that comes
    /// meanwhile saves the guest a kick, which costs it a trap to its VMM
    /// and this thread a wake-up.
    fn poll_avail(&self, vring: &Vring, memory: &GuestMemory) -> bool {
        if self.disk.poll.is_zero() {
            return false;
        }
        let deadline = Instant::now() + self.disk.poll;
        loop {
            {
                let state = vring.get_ref();
                let queue = state.get_queue();
                if queue
                    .avail_idx(memory, Ordering::Acquire)
                    .is_ok_and(|idx| idx.0 != queue.next_avail())
                {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Starts one mapped chain. It runs right here until it would wait
    /// (a page-cache hit finishes without a thread hand-over; nothing
    /// blocks this thread), then on the export's event loop. Says whether
    /// it already finished (its interrupt is the caller's to send).
    fn start(&self, vring: &Vring, queue: usize, chain: MappedChain) -> bool {
        if let Some(fault) = chain.fault {
            tracing::warn!("vhost-user-blk: refusing a request: {fault}");
            put_used(vring, chain.head, request::fail(&chain.writable));
            return true;
        }
        let in_flight = InFlight::enter(&self.in_flight[queue]);
        let disk = Arc::clone(&self.disk);
        let writeback = self.writeback.load(Ordering::Relaxed);
        let gone = self.gone.clone();
        let MappedChain {
            head,
            readable,
            writable,
            ..
        } = chain;
        let served = async move {
            let disk = Disk {
                backend: &disk.backend,
                logical_block_size: disk.logical_block_size,
                writeback,
                serial: &disk.serial,
            };
            let served = tokio::select! {
                completion = request::serve(&disk, readable, writable) => Some(completion),
                () = gone.cancelled() => None,
            };
            drop(in_flight);
            served
        };
        let mut served = Box::pin(served);
        match block::blocking::poll_here(&self.disk.runtime, served.as_mut()) {
            Poll::Ready(Some(completion)) => {
                put_used(vring, head, completion);
                true
            }
            Poll::Ready(None) => false,
            Poll::Pending => {
                let vring = vring.clone();
                self.disk.runtime.spawn(async move {
                    if let Some(completion) = served.await {
                        put_used(&vring, head, completion);
                        interrupt(&vring);
                    }
                });
                false
            }
        }
    }
}

/// Puts a finished chain into the used ring.
fn put_used(vring: &Vring, head: u16, completion: Option<Completion>) {
    let used_len = completion.map_or(0, |c| c.used_len);
    if let Err(e) = vring.add_used(head, used_len) {
        tracing::warn!("vhost-user-blk: cannot complete a request: {e}");
    }
}

/// Interrupts the guest if it asked to be (the event index says whether
/// it waits for the completions put so far).
fn interrupt(vring: &Vring) {
    if vring.needs_notification().unwrap_or(true) {
        if let Err(e) = vring.signal_used_queue() {
            tracing::debug!("vhost-user-blk: cannot interrupt the guest: {e}");
        }
    }
}

impl VhostUserBackend for BlkDevice {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.disk.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        config::features(!self.disk.backend.is_read_only())
    }

    fn acked_features(&self, features: u64) {
        // Without a flush command the guest cannot make cached writes
        // durable: every write is then written through.
        if features & (1 << VIRTIO_BLK_F_FLUSH) == 0 {
            self.writeback.store(false, Ordering::Relaxed);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        *lock(&self.backend_channel) = Some(backend);
        self.config_change
            .set_channel(BackendChannel::find().map(Arc::new));
    }

    fn reset_device(&self) {
        self.writeback
            .store(!self.disk.backend.mode().writethrough, Ordering::Relaxed);
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The queues know it themselves; completions ask them.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config().read(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> std::io::Result<()> {
        // Only the cache mode is writable (CONFIG_WCE), and a writethrough
        // export stays writethrough.
        match (offset, buf) {
            (WRITEBACK_OFFSET, [mode]) => {
                let writeback = *mode != 0 && !self.disk.backend.mode().writethrough;
                self.writeback.store(writeback, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn update_memory(&self, _memory: AtomicGuestMemory) -> std::io::Result<()> {
        // `memory` is the map this device already shares with the crate.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.threads)
            .map(|thread| {
                (thread..self.num_queues())
                    .step_by(self.threads)
                    .fold(0u64, |mask, queue| mask | (1 << queue))
            })
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        lock(&self.exit_notifiers).push(notifier.try_clone().ok()?);
        Some((consumer, notifier))
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        if let Some(queue) = self.in_flight.get(queue_index as usize) {
            queue.wait_idle();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> std::io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let local = usize::from(device_event);
        let Some(vring) = vrings.get(local) else {
            return Ok(());
        };
        let queue = self.queue_index(thread_id, local);
        if queue >= self.in_flight.len() {
            return Ok(());
        }
        if let Err(e) = self.drain_queue(vring, queue) {
            // A ring the guest broke is not served any more; the other
            // queues go on.
            tracing::warn!("vhost-user-blk: queue {queue} stopped: {e}");
        }
        Ok(())
    }
}

/// Requests in flight on one queue.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

/// One request counted in flight until dropped (also when its task is
/// dropped unfinished).
struct InFlightTicket(Arc<InFlight>);

impl Drop for InFlightTicket {
    fn drop(&mut self) {
        let mut count = lock(&self.0.count);
        *count -= 1;
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl InFlight {
    fn enter(queue: &Arc<InFlight>) -> InFlightTicket {
        *lock(&queue.count) += 1;
        InFlightTicket(Arc::clone(queue))
    }

    fn wait_idle(&self) {
        let count = lock(&self.count);
        let _idle = self
            .idle
            .wait_while(count, |count| *count > 0)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

//! The FUSE session: the threads that read the kernel's requests from
//! `/dev/fuse` and the replies written back.
//!
//! storaged speaks the protocol itself (`abi`) rather than through the
//! `fuser` crate, whose session loop reads every request into a buffer of
//! its own and lends a write's payload as a slice of it: the block layer's
//! requests own their memory, so each write was copied once more (12% of
//! the daemon's cycles at depth 32 with 1 MiB writes). Here each request
//! is read with `readv` into the header's own bytes and a page-aligned
//! pooled buffer that the header of a write fills exactly: the payload of
//! a large write starts on a page of a buffer that the write then owns,
//! and goes to the node without a copy.
//!
//! One thread per descriptor (the mount's, and clones of it by
//! `FUSE_DEV_IOC_CLONE`, each with its own queue of requests being
//! processed): a reply goes to the descriptor its request came from. The
//! threads end when the connection does (`ENODEV`: unmounted or aborted).
//! A reply dropped unsent answers `EIO`, so the kernel never waits on a
//! request the export lost.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use block::IoBuf;

use super::abi::{self, init_flags, InHeader, Request, WRITE_HEADER_LEN};
use super::image_file::ImageFile;
use crate::buffers::Buffer;

/// The largest write (and read) the kernel is asked to send: 256 pages,
/// its default page limit, which it needs `FUSE_MAX_PAGES` to go past
/// 32 pages.
pub const MAX_WRITE: u32 = 1 << 20;
/// The buffer each request is read into after its first bytes: at least
/// `MAX_WRITE`, and one huge page, which the pool maps on a huge-page
/// boundary: the kernel, which pins each page of it in turn while it
/// copies a request in, then finds them in one huge page (pinning 4 KiB
/// pages spread over the buffers in flight took 12% of the daemon's
/// cycles at depth 32 with 1 MiB writes, 6% in huge pages).
const READ_BUFFER_LEN: usize = block::HUGE_PAGE;
/// What the export's buffer pool may keep idle: 16 read buffers, more
/// than the large writes in flight (see `image_file`) and the threads'
/// own, so that a deep queue of large writes takes its buffers from the
/// pool rather than from new memory (each new one costs page faults).
pub const IDLE_BUFFER_BYTES: usize = 16 * READ_BUFFER_LEN;
/// Asynchronous requests the kernel may have outstanding: enough for
/// deep direct I/O queues.
const MAX_BACKGROUND: u16 = 128;
/// Writes shorter than this are copied out of the read buffer (the copy
/// costs less than a read buffer held by each small write in flight);
/// longer ones take the buffer.
pub const HAND_OVER_MIN: usize = 64 << 10;
/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = (2 << 30) | (4 << 16) | (229 << 8);

/// One `/dev/fuse` descriptor of the connection.
pub struct Channel(OwnedFd);

impl Channel {
    /// Another descriptor on the same connection, with its own queue.
    fn clone_fd(&self) -> io::Result<Channel> {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")?;
        let mut source = self.0.as_raw_fd() as u32;
        // SAFETY: the ioctl reads one u32 from a live local; both
        // descriptors are open for the call.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), FUSE_DEV_IOC_CLONE, &mut source) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Channel(OwnedFd::from(device)))
    }

    /// Reads one request: its first `head.len()` bytes into `head`, the
    /// rest into `body`. Returns its length.
    fn receive(&self, head: &mut [u8], body: &mut [u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: head.as_mut_ptr().cast(),
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: body.as_mut_ptr().cast(),
                iov_len: body.len(),
            },
        ];
        // SAFETY: both iovecs describe memory borrowed mutably for the
        // call; the kernel writes at most their lengths.
        let n = unsafe { libc::readv(self.0.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends a reply: `fuse_out_header` then `payload`.
    fn send(&self, unique: u64, error: i32, payload: &[libc::iovec]) {
        let payload_len = payload.iter().map(|iov| iov.iov_len).sum();
        let header = abi::out_header(unique, error, payload_len);
        let mut iov = Vec::with_capacity(1 + payload.len());
        iov.push(libc::iovec {
            iov_base: header.as_ptr().cast_mut().cast(),
            iov_len: header.len(),
        });
        iov.extend_from_slice(payload);
        // SAFETY: the kernel only reads the iovecs' memory, which the
        // caller keeps alive for the call (the header is a local).
        let n = unsafe { libc::writev(self.0.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            // ENOENT: the request was interrupted or the connection
            // aborted; nobody waits for the answer.
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!("FUSE reply to request {unique} not sent: {e}");
            }
        }
    }
}

/// The answer to one request, sent once; `EIO` if dropped unsent.
pub struct Reply {
    channel: Arc<Channel>,
    unique: u64,
    sent: bool,
}

impl Reply {
    fn new(channel: &Arc<Channel>, unique: u64) -> Reply {
        Reply {
            channel: Arc::clone(channel),
            unique,
            sent: false,
        }
    }

    fn send(mut self, error: i32, payload: &[libc::iovec]) {
        self.sent = true;
        self.channel.send(self.unique, error, payload);
    }

    /// No answer: the kernel expects none to this request.
    fn none(mut self) {
        self.sent = true;
    }

    /// Fails the request with `errno` (positive).
    pub fn error(self, errno: i32) {
        self.send(-errno, &[]);
    }

    /// Success without data.
    pub fn ok(self) {
        self.send(0, &[]);
    }

    /// Success with an encoded reply structure.
    pub fn bytes(self, bytes: &[u8]) {
        let iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        self.send(0, &[iov]);
    }

    /// Success with data read from the node.
    pub fn data(self, data: &IoBuf) {
        self.send(0, &data.iovecs());
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.sent {
            self.channel.send(self.unique, -libc::EIO, &[]);
        }
    }
}

/// Answers the kernel's `INIT` on `device` (the mount's descriptor, which
/// the kernel queued it on), then serves the connection on `threads`
/// threads until it ends.
pub fn start(device: OwnedFd, image: ImageFile, threads: usize) -> io::Result<()> {
    let first = Arc::new(Channel(device));
    let mut reader = Reader::new(Arc::clone(&first), image);
    reader.handshake()?;
    let mut channels = vec![first];
    for _ in 1..threads {
        channels.push(Arc::new(channels[0].clone_fd()?));
    }
    for (i, channel) in channels.into_iter().enumerate() {
        let mut reader = Reader::new(channel, reader.image.clone());
        std::thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || reader.serve())?;
    }
    Ok(())
}

/// A session thread's state: its descriptor and its next read buffer.
struct Reader {
    channel: Arc<Channel>,
    image: ImageFile,
    /// `fuse_in_header` and, for a write, `fuse_write_in`; other requests
    /// continue into the buffer.
    head: [u8; WRITE_HEADER_LEN],
    /// Taken by a write that keeps it; replaced before the next read.
    buffer: Option<Buffer>,
}

/// What a session does after a request.
enum Next {
    Continue,
    /// The connection is gone.
    Stop,
}

impl Reader {
    fn new(channel: Arc<Channel>, image: ImageFile) -> Reader {
        Reader {
            channel,
            image,
            head: [0; WRITE_HEADER_LEN],
            buffer: None,
        }
    }

    /// Reads the next request; `None` once the connection is gone.
    fn next(&mut self) -> io::Result<Option<usize>> {
        loop {
            let pool = self.image.buffers();
            let buffer = self.buffer.get_or_insert_with(|| pool.get(READ_BUFFER_LEN));
            match self.channel.receive(&mut self.head, buffer.as_mut()) {
                // The kernel's device never reads as empty: a socket in
                // tests does once its other end is closed.
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(n)),
                // ENOENT: the request was interrupted before it was read.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::EINTR | libc::EAGAIN)
                    ) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The first `n` bytes read, past `skip`, as one slice: the head's
    /// and then the buffer's, copied when they span both (requests other
    /// than writes are short).
    fn args(&self, n: usize, skip: usize) -> Vec<u8> {
        let mut args = Vec::with_capacity(n.saturating_sub(skip));
        args.extend_from_slice(self.head.get(skip..n.min(WRITE_HEADER_LEN)).unwrap_or(&[]));
        if let Some(buffer) = &self.buffer {
            let rest = n.saturating_sub(WRITE_HEADER_LEN).min(buffer.len());
            args.extend_from_slice(&buffer.as_ref()[..rest]);
        }
        args
    }

    /// The connection's first request must be `INIT`.
    fn handshake(&mut self) -> io::Result<()> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        loop {
            let n = self
                .next()?
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
            let header = InHeader::parse(&self.head[..n.min(WRITE_HEADER_LEN)])
                .map_err(|_| invalid("short FUSE message"))?;
            let reply = Reply::new(&self.channel, header.unique);
            let args = self.args(n, abi::IN_HEADER_LEN);
            let Ok(Request::Init {
                major,
                minor,
                max_readahead,
                flags,
            }) = Request::parse(header.opcode, &args)
            else {
                reply.error(libc::EIO);
                return Err(invalid("FUSE request before INIT"));
            };
            if major > abi::MAJOR {
                // The kernel asks again in our version.
                reply.bytes(&abi::init_version_only());
                continue;
            }
            if major < abi::MAJOR || minor < abi::MIN_MINOR {
                reply.error(libc::EPROTO);
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("FUSE protocol {major}.{minor} is too old"),
                ));
            }
            let wanted = init_flags::ASYNC_READ
                | init_flags::BIG_WRITES
                | init_flags::ASYNC_DIO
                | init_flags::MAX_PAGES;
            let init = abi::InitOut {
                minor: minor.min(abi::MINOR),
                max_readahead,
                flags: flags & wanted,
                max_background: MAX_BACKGROUND,
                congestion_threshold: MAX_BACKGROUND / 4 * 3,
                max_write: MAX_WRITE,
                max_pages: (MAX_WRITE / 4096) as u16,
            };
            reply.bytes(&init.encode());
            return Ok(());
        }
    }

    /// Reads and dispatches requests until the connection ends.
    fn serve(&mut self) {
        loop {
            let next = match self.next() {
                Ok(Some(n)) => self.dispatch(n),
                Ok(None) => Next::Stop,
                Err(e) => {
                    tracing::warn!("FUSE session ends: {e}");
                    Next::Stop
                }
            };
            if let Next::Stop = next {
                return;
            }
        }
    }

    /// Checks and runs the request of `n` bytes just read.
    fn dispatch(&mut self, n: usize) -> Next {
        let Ok(header) = InHeader::parse(&self.head[..n.min(WRITE_HEADER_LEN)]) else {
            // Without a whole header there is no request to answer.
            tracing::warn!("FUSE message of {n} bytes ignored");
            return Next::Continue;
        };
        let reply = Reply::new(&self.channel, header.unique);
        if header.len as usize != n {
            reply.error(libc::EIO);
            return Next::Continue;
        }
        let parsed = if header.opcode == abi::opcode::WRITE {
            // The arguments are all in the head; the payload is apart.
            Request::parse(
                header.opcode,
                &self.head[abi::IN_HEADER_LEN..n.min(WRITE_HEADER_LEN)],
            )
        } else {
            Request::parse(header.opcode, &self.args(n, abi::IN_HEADER_LEN))
        };
        let request = match parsed {
            Ok(request) if request.is_one_way() => {
                reply.none();
                return Next::Continue;
            }
            Ok(request) => request,
            Err(_) => {
                reply.error(libc::EINVAL);
                return Next::Continue;
            }
        };
        if header.nodeid != abi::ROOT_ID && !matches!(request, Request::Init { .. }) {
            reply.error(libc::ENOENT);
            return Next::Continue;
        }
        match request {
            Request::Write { offset, size } => match self.payload(n, size as usize) {
                Some(payload) => self.image.write(offset, payload, reply),
                None => reply.error(libc::EINVAL),
            },
            Request::Init { .. } => reply.error(libc::EIO),
            Request::Destroy => {
                reply.ok();
                return Next::Stop;
            }
            other => self.image.request(other, reply),
        }
        Next::Continue
    }

    /// A write's payload of `size` bytes, in a buffer the write owns:
    /// the read buffer itself for a large one, a copy for a small one.
    /// `None` if the message's length disagrees with `size`.
    fn payload(&mut self, n: usize, size: usize) -> Option<IoBuf> {
        if n.checked_sub(WRITE_HEADER_LEN)? != size {
            return None;
        }
        let buffer = self.buffer.take()?;
        if size >= HAND_OVER_MIN {
            return Some(IoBuf::from_owner(buffer).slice(0..size));
        }
        let mut copy = self.image.buffers().get(size);
        copy.as_mut().copy_from_slice(&buffer.as_ref()[..size]);
        self.buffer = Some(buffer);
        Some(IoBuf::from_owner(copy))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;

    use super::*;
    use crate::fuse::abi::{opcode, Encoder, IN_HEADER_LEN, OUT_HEADER_LEN};
    use crate::fuse::image_file::ImageShared;
    use crate::test_support::tmpfs_backend;

    /// A request as the kernel writes it.
    fn message(opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
        let len = (IN_HEADER_LEN + args.len()) as u32;
        let mut bytes = Encoder::default()
            .u32(len)
            .u32(opcode)
            .u64(unique)
            .u64(nodeid)
            .zeroes(16)
            .finish();
        bytes.extend_from_slice(args);
        bytes
    }

    /// `message` followed by a payload, its length counted.
    fn with_payload(mut message: Vec<u8>, payload: &[u8]) -> Vec<u8> {
        message.extend_from_slice(payload);
        let len = message.len() as u32;
        message[..4].copy_from_slice(&len.to_ne_bytes());
        message
    }

    fn rw_args(offset: u64, size: u32) -> Vec<u8> {
        Encoder::default()
            .u64(0)
            .u64(offset)
            .u32(size)
            .zeroes(20)
            .finish()
    }

    /// The next reply: its unique, error and payload.
    fn reply(kernel: &mut File) -> (u64, i32, Vec<u8>) {
        let mut bytes = vec![0; 2 << 20];
        let n = kernel.read(&mut bytes).unwrap();
        assert!(n >= OUT_HEADER_LEN, "{n}");
        let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, n);
        let error = i32::from_ne_bytes(bytes[4..8].try_into().unwrap());
        let unique = u64::from_ne_bytes(bytes[8..16].try_into().unwrap());
        (unique, error, bytes[OUT_HEADER_LEN..n].to_vec())
    }

    /// Sends `request` and checks that the reply to it comes next, with
    /// `errno` (0: success); returns its payload.
    fn expect(kernel: &mut File, request: Vec<u8>, unique: u64, errno: i32) -> Vec<u8> {
        kernel.write_all(&request).unwrap();
        let (got, error, out) = reply(kernel);
        assert_eq!((got, error), (unique, -errno), "request {unique}");
        out
    }

    /// A session over a socket pair that keeps message boundaries, as
    /// `/dev/fuse` does; returns the kernel's end.
    fn session(image: ImageFile) -> (File, std::thread::JoinHandle<()>) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into the array.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors are new and owned here alone.
        let (ours, kernel) = unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let mut reader = Reader::new(Arc::new(Channel(ours)), image);
        let thread = std::thread::spawn(move || {
            reader.handshake().expect("INIT");
            reader.serve();
        });
        (kernel, thread)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_served_and_malformed_ones_answered_with_errors() {
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let (_dir, backend) = tmpfs_backend(&data, true).await;
        let shared = ImageShared::new(
            backend,
            true,
            false,
            false,
            tokio::runtime::Handle::current(),
            1,
        );
        let (mut kernel, thread) = session(ImageFile(Arc::new(shared)));
        let kernel = tokio::task::spawn_blocking(move || {
            let init = Encoder::default()
                .u32(7)
                .u32(45)
                .u32(128 << 10)
                .u32(u32::MAX)
                .zeroes(48)
                .finish();
            kernel
                .write_all(&message(opcode::INIT, 1, 0, &init))
                .unwrap();
            let (unique, error, out) = reply(&mut kernel);
            assert_eq!((unique, error, out.len()), (1, 0, 64));
            let field = |at: usize| u32::from_ne_bytes(out[at..at + 4].try_into().unwrap());
            assert_eq!((field(0), field(4)), (7, abi::MINOR));
            let wanted = init_flags::ASYNC_READ
                | init_flags::BIG_WRITES
                | init_flags::ASYNC_DIO
                | init_flags::MAX_PAGES;
            assert_eq!((field(12), field(20)), (wanted, MAX_WRITE));
            assert_eq!(u16::from_ne_bytes([out[28], out[29]]), 256);

            // Not even a header: nothing to answer (the next reply is 3's).
            kernel.write_all(&[0; 20]).unwrap();
            // A length that is not what was read.
            let mut lying = message(opcode::GETATTR, 3, 1, &[0; 16]);
            lying[0] = 100;
            expect(&mut kernel, lying, 3, libc::EIO);
            expect(
                &mut kernel,
                message(opcode::GETATTR, 4, 1, &[0; 8]),
                4,
                libc::EINVAL,
            );
            expect(&mut kernel, message(999, 5, 1, &[]), 5, libc::ENOSYS);
            expect(
                &mut kernel,
                message(opcode::GETATTR, 6, 2, &[0; 16]),
                6,
                libc::ENOENT,
            );
            // A second INIT is refused; FORGET is not answered.
            expect(
                &mut kernel,
                message(opcode::INIT, 7, 0, &init),
                7,
                libc::EIO,
            );
            kernel
                .write_all(&message(opcode::FORGET, 8, 1, &[0; 8]))
                .unwrap();
            let short_write =
                with_payload(message(opcode::WRITE, 9, 1, &rw_args(0, 4096)), &[0; 100]);
            expect(&mut kernel, short_write, 9, libc::EINVAL);

            // A large write takes the read buffer; a small one is copied.
            for (unique, offset, size) in [(10, 4096, 128 << 10), (11, 512, 100)] {
                let payload: Vec<u8> = (0..size).map(|i| (i % 13) as u8 + 1).collect();
                let write = with_payload(
                    message(opcode::WRITE, unique, 1, &rw_args(offset, size)),
                    &payload,
                );
                let out = expect(&mut kernel, write, unique, 0);
                assert_eq!(out, abi::write_out(size));
                let read = message(opcode::READ, unique + 10, 1, &rw_args(offset, size));
                assert_eq!(expect(&mut kernel, read, unique + 10, 0), payload);
            }
            // Past the end a write is cut short; a read is cut at the end.
            let tail = with_payload(
                message(opcode::WRITE, 30, 1, &rw_args((1 << 20) - 10, 20)),
                &[7; 20],
            );
            assert_eq!(expect(&mut kernel, tail, 30, 0), abi::write_out(10));
            let read = message(opcode::READ, 31, 1, &rw_args((1 << 20) - 10, 4096));
            assert_eq!(expect(&mut kernel, read, 31, 0), vec![7; 10]);
            let attr = expect(
                &mut kernel,
                message(opcode::GETATTR, 32, 1, &[0; 16]),
                32,
                0,
            );
            assert_eq!(attr.len(), 104);
            assert_eq!(
                u64::from_ne_bytes(attr[24..32].try_into().unwrap()),
                1 << 20
            );
            kernel
        })
        .await
        .unwrap();
        drop(kernel);
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
    }
}

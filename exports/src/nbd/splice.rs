//! Zero-copy sends of file data: `splice` moves page-cache pages from a
//! file into a pipe and from the pipe into the socket, by reference (Linux
//! 6.5 and later for Unix sockets; TCP always), instead of copying them
//! into a buffer and out again.
//!
//! Used only for ranges the block layer says live in a file whose reads
//! never wait (`BlockBackend::read_source`: tmpfs), so filling the pipe
//! never stalls the connection.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use block::{BlockBackend, HeldReadSource};
use tokio::io::{AsyncWrite, Interest};

use super::vectored::SocketReadiness;

/// Pipe capacity asked for: fewer system calls per large read (the
/// kernel's `pipe-max-size` default allows it).
const PIPE_SIZE: usize = 1 << 20;

/// Bytes of a file to send, counted in flight in their node (and the file
/// kept open) until sent.
pub struct FileRange {
    pub fd: RawFd,
    pub offset: u64,
    pub len: usize,
    _held: HeldReadSource,
}

impl FileRange {
    /// Where `[offset, offset + len)` of `backend` lives in a file, if it
    /// lives in one whose reads never wait.
    pub fn of(backend: &BlockBackend, offset: u64, len: usize) -> Option<FileRange> {
        let held = backend.read_source(offset, len as u64)?;
        Some(FileRange {
            fd: held.source.fd.as_raw_fd(),
            offset: held.source.offset,
            len,
            _held: held,
        })
    }
}

/// What a connection writes its replies to: its socket, or a layer
/// above one (TLS). Splicing and polling need the socket itself: `raw`
/// gives it only when nothing sits between it and the connection.
pub trait Transport: AsyncWrite + Unpin + Send {
    type Raw: SpliceSink;

    fn raw(&self) -> Option<&Self::Raw>;
}

/// A socket that can take spliced pages.
pub trait SpliceSink: Send + Sync {
    /// The socket's descriptor.
    fn socket_fd(&self) -> BorrowedFd<'_>;

    /// Runs `op` once the socket is writable, again while it reports
    /// `WouldBlock`.
    fn try_write_op(&self, op: impl FnMut() -> io::Result<usize>) -> io::Result<usize>;

    /// Waits until the socket may be writable.
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;

    /// Tells the event loop that a read behind its back found the socket
    /// empty (`SocketReadiness::forget_readable`), so that its next read
    /// waits for the next event instead of trying the socket first.
    fn forget_readable(&self);
}

macro_rules! splice_sink {
    ($half:ty) => {
        impl SpliceSink for $half {
            fn socket_fd(&self) -> BorrowedFd<'_> {
                self.as_ref().as_fd()
            }

            fn try_write_op(&self, op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
                self.as_ref().try_io(Interest::WRITABLE, op)
            }

            fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
                self.as_ref().writable()
            }

            fn forget_readable(&self) {
                SocketReadiness::forget_readable(self.as_ref());
            }
        }
    };
}

splice_sink!(tokio::net::unix::OwnedWriteHalf);
splice_sink!(tokio::net::tcp::OwnedWriteHalf);

macro_rules! raw_transport {
    ($half:ty) => {
        impl Transport for $half {
            type Raw = Self;

            fn raw(&self) -> Option<&Self> {
                Some(self)
            }
        }
    };
}

raw_transport!(tokio::net::unix::OwnedWriteHalf);
raw_transport!(tokio::net::tcp::OwnedWriteHalf);

/// The socket of a transport that has none to give (no value exists).
pub enum NoSocket {}

impl SpliceSink for NoSocket {
    fn socket_fd(&self) -> BorrowedFd<'_> {
        match *self {}
    }

    fn try_write_op(&self, _: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
        match *self {}
    }

    #[allow(clippy::manual_async_fn)]
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        async { match *self {} }
    }

    fn forget_readable(&self) {
        match *self {}
    }
}

/// A connection's pipe, and how many bytes wait in it.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes moved in from the file and not yet out to the socket.
    pub held: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A smaller pipe still works, with more calls.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        Ok(Pipe {
            read,
            write,
            held: 0,
        })
    }

    /// Moves up to `len` bytes of `file` at `offset` into the empty pipe.
    pub fn fill(&mut self, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
        let mut off = offset as libc::loff_t;
        // SAFETY: splice between descriptors that stay open for the call;
        // `off` is a valid offset pointer.
        let n = unsafe {
            libc::splice(
                file,
                &mut off,
                self.write.as_raw_fd(),
                std::ptr::null_mut(),
                len.min(PIPE_SIZE),
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its node",
            )),
            n => {
                self.held += n as usize;
                Ok(n as usize)
            }
        }
    }

    /// Moves what the pipe holds into `socket`; `WouldBlock` when full.
    pub fn drain_into(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        // SAFETY: as above.
        let n = unsafe {
            libc::splice(
                self.read.as_raw_fd(),
                std::ptr::null_mut(),
                socket.as_raw_fd(),
                std::ptr::null_mut(),
                self.held,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.held -= n as usize;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_socket_forgotten_readable_still_wakes_its_reader_when_data_comes() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (mut reader, writer) = ours.into_split();
        let (_, mut client) = theirs.into_split();
        let mut byte = [0u8; 1];
        client.write_all(b"a").await.unwrap();
        // All it asked for: the event loop still holds the socket readable.
        reader.read_exact(&mut byte).await.unwrap();
        SpliceSink::forget_readable(&writer);
        // Data that comes after (here before the loop looked again) is
        // still seen: the loop's next event brings it.
        client.write_all(b"b").await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(30), reader.read(&mut byte)).await;
        assert_eq!(read.expect("the reader was never woken").unwrap(), 1);
        assert_eq!(&byte, b"b");
        // And with nothing there, the next read waits instead of failing.
        SpliceSink::forget_readable(&writer);
        let waiting = tokio::time::timeout(Duration::from_millis(50), reader.read(&mut byte)).await;
        assert!(waiting.is_err(), "{waiting:?}");
    }
}

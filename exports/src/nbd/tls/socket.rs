//! The socket beneath a TLS session: what OpenSSL writes (one call per
//! record of at most 16 KiB) is gathered and sent when OpenSSL's caller
//! flushes, or when [`OUTPUT_BUFFER_LEN`] is reached, so that a large
//! reply costs a few system calls and wake-ups of the client, not one per
//! record; and what OpenSSL reads (a record's header, then its body) is
//! served from up to [`INPUT_BUFFER_LEN`] bytes taken in by one system
//! call, so that a burst of small requests costs one. The socket can
//! leave its event loop (`park`) and join another (`attach`), which moves
//! a session to an export's iothread.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of TLS records gathered before they are sent.
pub const OUTPUT_BUFFER_LEN: usize = 512 << 10;
/// Bytes read from the socket at most by one system call.
pub const INPUT_BUFFER_LEN: usize = 64 << 10;

/// A connection's socket, with the TLS records not yet sent and those
/// received and not yet read.
pub struct Socket {
    io: Io,
    out: Vec<u8>,
    /// Bytes of `out` already sent.
    sent: usize,
    /// Allocated at the first read.
    input: Vec<u8>,
    /// `input[consumed..received]` is received and not yet read.
    consumed: usize,
    received: usize,
}

enum Io {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
    ParkedUnix(std::os::unix::net::UnixStream),
    ParkedTcp(std::net::TcpStream),
    /// Only while `park` or `attach` swaps the socket (or after one
    /// failed).
    Gone,
}

impl Socket {
    fn new(io: Io) -> Socket {
        Socket {
            io,
            out: Vec::new(),
            sent: 0,
            input: Vec::new(),
            consumed: 0,
            received: 0,
        }
    }

    pub fn unix(stream: tokio::net::UnixStream) -> Socket {
        Socket::new(Io::Unix(stream))
    }

    pub fn tcp(stream: tokio::net::TcpStream) -> Socket {
        Socket::new(Io::Tcp(stream))
    }

    /// Leaves the event loop the socket is registered with (everything
    /// written must have been flushed; what was received stays).
    pub fn park(&mut self) -> io::Result<()> {
        if self.sent < self.out.len() {
            return Err(io::Error::other("a socket parked with records unsent"));
        }
        self.io = match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Unix(s) => Io::ParkedUnix(s.into_std()?),
            Io::Tcp(s) => Io::ParkedTcp(s.into_std()?),
            other => other,
        };
        Ok(())
    }

    /// Joins the event loop this runs on.
    pub fn attach(&mut self) -> io::Result<()> {
        self.io = match std::mem::replace(&mut self.io, Io::Gone) {
            Io::ParkedUnix(s) => Io::Unix(tokio::net::UnixStream::from_std(s)?),
            Io::ParkedTcp(s) => Io::Tcp(tokio::net::TcpStream::from_std(s)?),
            other => other,
        };
        Ok(())
    }

    /// Whether bytes were received that nobody has read yet.
    pub fn has_unread(&self) -> bool {
        self.consumed < self.received
    }

    /// Sends every gathered byte.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(self.io.poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

fn parked() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket parked between loops")
}

impl Io {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            _ => Poll::Ready(Err(parked())),
        }
    }
}

impl Io {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            _ => Poll::Ready(Err(parked())),
        }
    }
}

impl AsyncRead for Socket {
    /// From the bytes received, taking in more first if there are none
    /// (straight into `buf` if it holds as many).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.consumed == this.received {
            if buf.remaining() >= INPUT_BUFFER_LEN {
                return this.io.poll_read(cx, buf);
            }
            if this.input.is_empty() {
                this.input = vec![0; INPUT_BUFFER_LEN];
            }
            let mut fill = ReadBuf::new(&mut this.input);
            ready!(this.io.poll_read(cx, &mut fill))?;
            this.received = fill.filled().len();
            this.consumed = 0;
        }
        let n = buf.remaining().min(this.received - this.consumed);
        buf.put_slice(&this.input[this.consumed..this.consumed + n]);
        this.consumed += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Socket {
    /// Takes `buf` whole into the gathered bytes, sending them first if
    /// they would pass [`OUTPUT_BUFFER_LEN`].
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() - this.sent + buf.len() > OUTPUT_BUFFER_LEN {
            ready!(this.poll_send(cx))?;
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        match &mut this.io {
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            _ => Poll::Ready(Err(parked())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        match &mut this.io {
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            _ => Poll::Ready(Err(parked())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_a_flush_and_survive_a_move() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut socket = Socket::unix(ours);
        socket.write_all(b"hello ").await.unwrap();
        socket.write_all(b"world").await.unwrap();
        socket.flush().await.unwrap();
        let mut got = [0; 11];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        // Past the buffer's length, what is gathered goes out first.
        let big = vec![7; OUTPUT_BUFFER_LEN];
        let reader = tokio::spawn(async move {
            let mut all = vec![0; OUTPUT_BUFFER_LEN + 1];
            theirs.read_exact(&mut all).await.unwrap();
            (theirs, all)
        });
        socket.write_all(b"x").await.unwrap();
        socket.write_all(&big).await.unwrap();
        socket.flush().await.unwrap();
        let (mut theirs, all) = reader.await.unwrap();
        assert_eq!(all[0], b'x');
        assert!(all[1..].iter().all(|&b| b == 7));
        socket.write_all(b"unsent").await.unwrap();
        assert!(socket.park().is_err(), "parked with bytes unsent");
        socket.flush().await.unwrap();
        socket.park().unwrap();
        socket.attach().unwrap();
        socket.write_all(b"!").await.unwrap();
        socket.flush().await.unwrap();
        let mut rest = [0; 7];
        theirs.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"unsent!");
    }

    #[tokio::test]
    async fn small_reads_come_from_one_receive() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut socket = Socket::unix(ours);
        theirs.write_all(b"headerbody").await.unwrap();
        let mut header = [0; 6];
        socket.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"header");
        assert!(socket.has_unread());
        // The rest was taken in with the header: the peer may be gone.
        drop(theirs);
        let mut body = Vec::new();
        socket.read_to_end(&mut body).await.unwrap();
        assert_eq!(body, b"body");
    }
}

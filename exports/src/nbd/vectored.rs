//! Reads that fill several buffers in one system call: the rest of a
//! write's payload and, behind it, the next request's header. A plain
//! socket does it with one `readv`; other streams (TLS) fill the first
//! buffer only, as a plain read would.
//!
//! A socket read that returns less than it asked for has emptied the
//! socket, and the event loop is told so (`SocketReadiness`): its next
//! read then waits for the next event instead of asking the socket in
//! vain, as tokio's own reads do.

use std::io::{self, IoSliceMut};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, Interest, ReadBuf};

use super::poll::NonBlocking;
use super::tls::TlsReader;

/// A request stream the connection loop reads.
pub trait ReadVectored: AsyncRead + Unpin {
    /// Reads into `bufs` in order; how many bytes, 0 at end of file.
    fn poll_read_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter_mut().find(|buf| !buf.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let mut buf = ReadBuf::new(first);
        ready!(Pin::new(self).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    }
}

impl ReadVectored for TlsReader {}
impl ReadVectored for NonBlocking<'_> {}

/// Whether a read of `wanted` bytes that returned `n` emptied the
/// socket: it got some, but less than it asked for. (End of file is not
/// an empty socket: no event follows it.)
pub fn emptied(n: usize, wanted: usize) -> bool {
    n > 0 && n < wanted
}

/// The event loop's view of whether a socket has input.
pub trait SocketReadiness {
    /// Forgets that the socket is readable (a read just found it empty);
    /// an event that came in meanwhile is kept.
    fn forget_readable(&self);
}

macro_rules! socket_reads {
    ($socket:ty, $half:ty) => {
        impl SocketReadiness for $socket {
            fn forget_readable(&self) {
                // `WouldBlock` from the operation is what clears it.
                let _ = self.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
        }

        impl ReadVectored for $half {
            fn poll_read_vectored(
                &mut self,
                cx: &mut Context<'_>,
                bufs: &mut [IoSliceMut<'_>],
            ) -> Poll<io::Result<usize>> {
                let socket: &$socket = self.as_ref();
                let wanted: usize = bufs.iter().map(|buf| buf.len()).sum();
                loop {
                    ready!(socket.poll_read_ready(cx))?;
                    // A `WouldBlock` clears the readiness: wait again.
                    match socket.try_read_vectored(bufs) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Ok(n) if emptied(n, wanted) => {
                            socket.forget_readable();
                            return Poll::Ready(Ok(n));
                        }
                        read => return Poll::Ready(read),
                    }
                }
            }
        }
    };
}

socket_reads!(tokio::net::UnixStream, tokio::net::unix::OwnedReadHalf);
socket_reads!(tokio::net::TcpStream, tokio::net::tcp::OwnedReadHalf);

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn read_into<R: ReadVectored>(reader: &mut R, a: &mut [u8], b: &mut [u8]) -> usize {
        poll_fn(|cx| reader.poll_read_vectored(cx, &mut [IoSliceMut::new(a), IoSliceMut::new(b)]))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_socket_fills_both_buffers_in_one_read_and_then_waits() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (mut reader, _writer) = ours.into_split();
        let (_, mut client) = theirs.into_split();
        client.write_all(b"payloadhead").await.unwrap();
        let (mut payload, mut header) = ([0u8; 7], [0u8; 8]);
        // Less than both buffers hold: the socket is empty after it.
        assert_eq!(read_into(&mut reader, &mut payload, &mut header).await, 11);
        assert_eq!(&payload, b"payload");
        assert_eq!(&header[..4], b"head");
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            read_into(&mut reader, &mut payload, &mut header),
        )
        .await;
        assert!(waiting.is_err(), "{waiting:?}");
        // What comes next still wakes the reader.
        client.write_all(b"more").await.unwrap();
        let read = tokio::time::timeout(
            Duration::from_secs(30),
            read_into(&mut reader, &mut payload, &mut header),
        )
        .await;
        assert_eq!(read.expect("the reader was never woken"), 4);
        assert_eq!(&payload[..4], b"more");
        drop(client);
        assert_eq!(read_into(&mut reader, &mut payload, &mut header).await, 0);
    }

    #[tokio::test]
    async fn other_streams_fill_the_first_buffer_only() {
        struct Bytes(&'static [u8]);
        impl AsyncRead for Bytes {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let n = buf.remaining().min(self.0.len());
                buf.put_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Poll::Ready(Ok(()))
            }
        }
        impl ReadVectored for Bytes {}
        let mut stream = Bytes(b"payloadhead");
        let (mut payload, mut header) = ([0u8; 7], [0u8; 8]);
        assert_eq!(read_into(&mut stream, &mut [], &mut payload).await, 7);
        assert_eq!(read_into(&mut stream, &mut payload, &mut header).await, 4);
        assert_eq!(&payload[..4], b"head");
        assert_eq!(header, [0; 8]);
    }
}

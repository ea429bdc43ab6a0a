//! The receiving half of a TLS session as the connection's transport: a
//! read takes every record already received, not one. OpenSSL returns
//! one record's plaintext per read, and a client sends each small request
//! as a record of its own; read one at a time, a burst of 32 requests
//! went through the connection's loop 32 times, and each pass sent the
//! one reply it had made (a system call, and a record the client
//! decrypts, per request). Taken together, the requests start together
//! and their replies leave in one TLS write.
//!
//! A read stops at the first that would wait: the socket beneath clears
//! its readiness after a short receive, so finding the records exhausted
//! costs no system call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf, ReadHalf};

use super::Tls;

/// The receiving half of a TLS session.
pub struct TlsReader {
    half: ReadHalf<Tls>,
    /// An error met after a read had taken records: reported by the next.
    error: Option<io::Error>,
}

impl TlsReader {
    pub fn new(half: ReadHalf<Tls>) -> TlsReader {
        TlsReader { half, error: None }
    }

    pub fn into_inner(self) -> ReadHalf<Tls> {
        self.half
    }
}

impl AsyncRead for TlsReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.error.take() {
            return Poll::Ready(Err(error));
        }
        read_available(&mut this.half, &mut this.error, cx, buf)
    }
}

/// Reads from `source` into `buf` until it is full, `source` ends, or a
/// read would wait; waits only if nothing was read. An error after bytes
/// were read is kept in `error` for the next call.
fn read_available<R: AsyncRead + Unpin>(
    source: &mut R,
    error: &mut Option<io::Error>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let start = buf.filled().len();
    while buf.remaining() > 0 {
        let before = buf.filled().len();
        match Pin::new(&mut *source).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => break,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) if buf.filled().len() == start => return Poll::Ready(Err(e)),
            Poll::Ready(Err(e)) => {
                *error = Some(e);
                break;
            }
            Poll::Pending if buf.filled().len() == start => return Poll::Pending,
            Poll::Pending => break,
        }
    }
    Poll::Ready(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A source that hands out one scripted step per read.
    struct Script(VecDeque<Poll<io::Result<&'static [u8]>>>);

    impl AsyncRead for Script {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.get_mut().0.pop_front() {
                Some(Poll::Ready(Ok(bytes))) => {
                    buf.put_slice(bytes);
                    Poll::Ready(Ok(()))
                }
                Some(Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
                Some(Poll::Pending) | None => Poll::Pending,
            }
        }
    }

    fn read(script: &mut Script, error: &mut Option<io::Error>, len: usize) -> Poll<Vec<u8>> {
        let mut storage = vec![0; len];
        let mut buf = ReadBuf::new(&mut storage);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match read_available(script, error, &mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(buf.filled().to_vec()),
            Poll::Ready(Err(e)) => Poll::Ready(format!("error: {e}").into_bytes()),
            Poll::Pending => Poll::Pending,
        }
    }

    #[test]
    fn a_read_takes_every_record_until_one_would_wait() {
        let mut script = Script(
            [
                Poll::Ready(Ok(&b"one"[..])),
                Poll::Ready(Ok(&b"two"[..])),
                Poll::Pending,
                Poll::Ready(Ok(&b"three"[..])),
            ]
            .into(),
        );
        let mut error = None;
        assert_eq!(
            read(&mut script, &mut error, 64),
            Poll::Ready(b"onetwo".to_vec())
        );
        assert_eq!(
            read(&mut script, &mut error, 64),
            Poll::Ready(b"three".to_vec())
        );
        assert_eq!(read(&mut script, &mut error, 64), Poll::Pending);
    }

    #[test]
    fn a_full_buffer_stops_a_read() {
        let mut script = Script([Poll::Ready(Ok(&b"ab"[..])), Poll::Ready(Ok(&b"cd"[..]))].into());
        let mut error = None;
        assert_eq!(
            read(&mut script, &mut error, 2),
            Poll::Ready(b"ab".to_vec())
        );
        assert_eq!(
            read(&mut script, &mut error, 2),
            Poll::Ready(b"cd".to_vec())
        );
    }

    #[test]
    fn an_error_after_records_waits_for_the_next_read() {
        let mut script = Script(
            [
                Poll::Ready(Ok(&b"last"[..])),
                Poll::Ready(Err(io::Error::other("reset"))),
            ]
            .into(),
        );
        let mut error = None;
        assert_eq!(
            read(&mut script, &mut error, 64),
            Poll::Ready(b"last".to_vec())
        );
        assert_eq!(error.map(|e| e.to_string()).as_deref(), Some("reset"));
    }

    #[test]
    fn the_end_of_the_stream_stops_a_read() {
        let end = || Poll::Ready(Ok(&b""[..]));
        let mut script = Script([Poll::Ready(Ok(&b"bye"[..])), end(), end()].into());
        let mut error = None;
        assert_eq!(
            read(&mut script, &mut error, 64),
            Poll::Ready(b"bye".to_vec())
        );
        assert_eq!(read(&mut script, &mut error, 64), Poll::Ready(Vec::new()));
    }
}

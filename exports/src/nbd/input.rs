//! The receiving side of a connection: a buffer that many request headers
//! (and small write payloads) arrive in per system call.
//!
//! Reading is cancel-safe (a read either lands whole in the buffer or not
//! at all), so the connection loop may wait on it together with other
//! events.

use std::future::poll_fn;
use std::io::{self, IoSliceMut};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::vectored::ReadVectored;

/// Socket read buffering.
pub const INPUT_BUFFER_LEN: usize = 128 << 10;

/// Bytes received and not yet consumed.
pub struct Input {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Input {
    /// A buffer holding `leftover` (bytes read during the handshake).
    pub fn new(leftover: &[u8]) -> Input {
        let mut buf = vec![0; INPUT_BUFFER_LEN.max(leftover.len())].into_boxed_slice();
        buf[..leftover.len()].copy_from_slice(leftover);
        Input {
            buf,
            start: 0,
            end: leftover.len(),
        }
    }

    /// The unconsumed bytes.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether no more bytes fit (every byte unconsumed).
    pub fn is_full(&self) -> bool {
        self.start == 0 && self.end == self.buf.len()
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves up to `dst.len()` buffered bytes into `dst`; returns how many.
    pub fn take_into(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.end - self.start);
        dst[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.consume(n);
        n
    }

    /// Drops up to `n` buffered bytes; returns how many.
    pub fn skip(&mut self, n: u64) -> usize {
        let n = (self.end - self.start).min(usize::try_from(n).unwrap_or(usize::MAX));
        self.consume(n);
        n
    }

    /// Reads at most `max` more bytes after the buffered ones; 0 means end
    /// of file. The buffer must not be full.
    pub async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        max: usize,
    ) -> io::Result<usize> {
        let room = self.room(max);
        let n = reader.read(room).await?;
        self.end += n;
        Ok(n)
    }

    /// Reads into `first`, and what comes after it (at most `max` bytes)
    /// after the buffered ones, in one read; returns how many bytes went
    /// into each. The buffer must not be full.
    pub async fn fill_behind<R: ReadVectored>(
        &mut self,
        reader: &mut R,
        first: &mut [u8],
        max: usize,
    ) -> io::Result<(usize, usize)> {
        let room = self.room(max);
        let n = poll_fn(|cx| {
            reader.poll_read_vectored(cx, &mut [IoSliceMut::new(first), IoSliceMut::new(room)])
        })
        .await?;
        let into_first = n.min(first.len());
        let behind = n - into_first;
        self.end += behind;
        Ok((into_first, behind))
    }

    /// The free space after the buffered bytes, at most `max` long; moves
    /// them to the front first if there is none.
    fn room(&mut self, max: usize) -> &mut [u8] {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = (self.buf.len() - self.end).min(max);
        &mut self.buf[self.end..self.end + room]
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// Bytes read as a socket reads them: into every buffer given.
    struct Stream(Vec<u8>);

    impl AsyncRead for Stream {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            unreachable!("read vectored")
        }
    }

    impl ReadVectored for Stream {
        fn poll_read_vectored(
            &mut self,
            _: &mut Context<'_>,
            bufs: &mut [IoSliceMut<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for buf in bufs {
                let len = buf.len().min(self.0.len() - n);
                buf[..len].copy_from_slice(&self.0[n..n + len]);
                n += len;
            }
            self.0.drain(..n);
            Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn a_payload_and_what_follows_it_arrive_in_one_read() {
        let mut input = Input::new(&[]);
        let mut stream = Stream(b"payloadheader-and-more".to_vec());
        let mut payload = [0u8; 7];
        let (into_payload, behind) = input
            .fill_behind(&mut stream, &mut payload, 6)
            .await
            .unwrap();
        assert_eq!((into_payload, behind), (7, 6));
        assert_eq!(&payload, b"payload");
        assert_eq!(input.buffered(), b"header");
        // Short of the payload: nothing behind it.
        let mut stream = Stream(b"pay".to_vec());
        let mut input = Input::new(&[]);
        let (into_payload, behind) = input
            .fill_behind(&mut stream, &mut payload, 6)
            .await
            .unwrap();
        assert_eq!((into_payload, behind), (3, 0));
        assert!(input.is_empty());
    }

    #[tokio::test]
    async fn fills_consumes_and_compacts() {
        let mut input = Input::new(b"ab");
        let mut source: &[u8] = &[b'c'; 2 * INPUT_BUFFER_LEN];
        let n = input.fill(&mut source, usize::MAX).await.unwrap();
        assert_eq!(n, INPUT_BUFFER_LEN - 2);
        assert_eq!(&input.buffered()[..3], b"abc");
        let mut two = [0; 2];
        assert_eq!(input.take_into(&mut two), 2);
        assert_eq!(&two, b"ab");
        assert_eq!(input.skip(10), 10);
        // Full: the next fill compacts first.
        let n = input.fill(&mut source, usize::MAX).await.unwrap();
        assert_eq!(n, 12);
        assert_eq!(input.buffered().len(), INPUT_BUFFER_LEN);
        assert_eq!(input.skip(u64::MAX), INPUT_BUFFER_LEN);
        assert!(input.is_empty());
        assert_eq!(input.fill(&mut source, 28).await.unwrap(), 28);
    }
}

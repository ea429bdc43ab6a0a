//! The sending side of a connection: replies wait in a queue and go out
//! gathered into vectored writes (headers inline, payloads straight from
//! their read buffers), so a burst of completions costs one system call
//! and no copy. The connection loop is the socket's only writer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::reply::Reply;

/// Slices gathered into one `writev` (well under the kernel's `IOV_MAX`).
const MAX_IOVECS: usize = 64;

/// What a write completed: replies fully sent and the bytes they held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub replies: u32,
    pub cost: u64,
}

/// Replies waiting to be written, in order.
#[derive(Default)]
pub struct ReplyQueue {
    queue: VecDeque<Reply>,
    /// Bytes of `queue[0]` already on the wire.
    front_written: usize,
}

impl ReplyQueue {
    pub fn push(&mut self, reply: Reply) {
        self.queue.push_back(reply);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// One vectored write of as much as is queued. Cancel-safe: if the
    /// future is dropped, nothing was written.
    pub async fn write_some<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> io::Result<Sent> {
        let written = {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let count = self.gather(&mut iov);
            writer.write_vectored(&iov[..count]).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(self.consume(written))
    }

    /// Fills `iov` with the unwritten slices; returns how many.
    fn gather<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        let mut skip = self.front_written;
        for reply in &self.queue {
            reply.visit(|slice| {
                if slice.len() <= skip {
                    skip -= slice.len();
                    return true;
                }
                iov[count] = IoSlice::new(&slice[skip..]);
                skip = 0;
                count += 1;
                count < iov.len()
            });
            if count == iov.len() {
                break;
            }
        }
        count
    }

    /// Drops the replies that `written` bytes completed (releasing their
    /// buffers) and records progress into the next one.
    fn consume(&mut self, mut written: usize) -> Sent {
        let mut sent = Sent::default();
        while let Some(front) = self.queue.front() {
            let remaining = front.len() - self.front_written;
            if written < remaining {
                self.front_written += written;
                break;
            }
            written -= remaining;
            self.front_written = 0;
            sent.replies += 1;
            sent.cost += u64::from(front.cost());
            self.queue.pop_front();
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{ReplyMode, Request};
    use super::super::proto::*;
    use super::*;

    fn req(cookie: u64) -> Request {
        Request {
            flags: 0,
            command: CMD_FLUSH,
            cookie,
            offset: 0,
            length: 0,
        }
    }

    /// A writer that accepts at most 5 bytes per call, to exercise partial
    /// vectored writes.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(5);
            self.0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_keep_replies_whole_and_ordered() {
        let mut queue = ReplyQueue::default();
        let mut expected = Vec::new();
        for cookie in 0..10 {
            let mut reply = if cookie % 2 == 0 {
                Reply::ok(ReplyMode::Simple, &req(cookie))
            } else {
                Reply::error(ReplyMode::Structured, &req(cookie), EIO, "failed here")
            };
            reply.set_cost(100);
            reply.visit(|s| {
                expected.extend_from_slice(s);
                true
            });
            queue.push(reply);
        }
        let mut out = Trickle(Vec::new());
        let mut total = Sent::default();
        while !queue.is_empty() {
            let sent = queue.write_some(&mut out).await.unwrap();
            total.replies += sent.replies;
            total.cost += sent.cost;
        }
        assert_eq!(out.0, expected);
        assert_eq!(
            total,
            Sent {
                replies: 10,
                cost: 1000
            }
        );
    }
}

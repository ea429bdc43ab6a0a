//! The one writer of a connection's socket.
//!
//! Request handlers finish in any order and hand their replies to this
//! task through a channel. It gathers whatever replies are waiting into
//! one vectored write (headers inline, payloads straight from their read
//! buffers), so a burst of completions costs one system call and no copy.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

use super::reply::Reply;

/// Slices gathered into one `writev` (well under the kernel's `IOV_MAX`).
const MAX_IOVECS: usize = 64;

/// Writes replies from `replies` to `writer` until every sender is gone
/// and the queue is empty, or the socket fails.
pub async fn write_replies<W>(
    writer: &mut W,
    replies: &mut UnboundedReceiver<Reply>,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut queue = VecDeque::new();
    // Bytes of `queue[0]` already on the wire.
    let mut front_written = 0;
    loop {
        if queue.is_empty() {
            writer.flush().await?;
            match replies.recv().await {
                Some(reply) => queue.push_back(reply),
                None => return Ok(()),
            }
        }
        while let Ok(reply) = replies.try_recv() {
            queue.push_back(reply);
        }
        let written = {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let count = gather(&queue, front_written, &mut iov);
            writer.write_vectored(&iov[..count]).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        consume(&mut queue, &mut front_written, written);
    }
}

/// Fills `iov` with the unwritten slices of `queue`; returns how many.
fn gather<'a>(queue: &'a VecDeque<Reply>, front_written: usize, iov: &mut [IoSlice<'a>]) -> usize {
    let mut count = 0;
    let mut skip = front_written;
    for reply in queue {
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
/// buffers and in-flight shares) and records progress into the next one.
fn consume(queue: &mut VecDeque<Reply>, front_written: &mut usize, mut written: usize) {
    while let Some(front) = queue.front() {
        let remaining = front.len() - *front_written;
        if written < remaining {
            *front_written += written;
            return;
        }
        written -= remaining;
        *front_written = 0;
        queue.pop_front();
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
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut expected = Vec::new();
        for cookie in 0..10 {
            let reply = if cookie % 2 == 0 {
                Reply::ok(ReplyMode::Simple, &req(cookie))
            } else {
                Reply::error(ReplyMode::Structured, &req(cookie), EIO, "failed here")
            };
            reply.visit(|s| {
                expected.extend_from_slice(s);
                true
            });
            tx.send(reply).unwrap();
        }
        drop(tx);
        let mut out = Trickle(Vec::new());
        write_replies(&mut out, &mut rx).await.unwrap();
        assert_eq!(out.0, expected);
    }
}

//! The sending side of a connection: replies wait in a queue and go out
//! gathered into vectored writes (headers inline, payloads straight from
//! their read buffers), so a burst of completions costs one system call
//! and no copy; data that lives in a file is spliced. The connection loop
//! is the socket's only writer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use tokio::io::AsyncWriteExt;

use super::reply::{Reply, Segment};
use super::splice::{Pipe, SpliceSink, Transport};

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
    /// Created at the first spliced reply.
    pipe: Option<Pipe>,
}

/// Where the next unwritten byte is.
enum Next {
    /// Slices to write, as many as were gathered.
    Slices(usize),
    /// The rest of a file segment: descriptor, file offset, length.
    File(RawFd, u64, usize),
}

/// What a file segment past the end of its file is sent as.
static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

impl ReplyQueue {
    pub fn push(&mut self, reply: Reply) {
        self.queue.push_back(reply);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// One write (vectored, or a splice) of as much as is queued.
    /// Cancel-safe: if the future is dropped, nothing was lost.
    pub async fn write_some<W: Transport>(&mut self, writer: &mut W) -> io::Result<Sent> {
        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
        let written = match self.next(&mut iov) {
            Next::Slices(count) => writer.write_vectored(&iov[..count]).await?,
            Next::File(fd, offset, len) => {
                let pipe = match &mut self.pipe {
                    Some(pipe) => pipe,
                    none => none.insert(Pipe::new()?),
                };
                let past_end = pipe.held == 0
                    && match pipe.fill(fd, offset, len) {
                        Ok(_) => false,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => true,
                        Err(e) => return Err(e),
                    };
                if past_end {
                    // The file was shrunk behind the node's back: the rest
                    // reads as zeroes, as a buffered read gives them (the
                    // reply's header is out, the reply must be complete).
                    writer.write(&ZEROES[..len.min(ZEROES.len())]).await?
                } else {
                    // Only a transport with a raw socket gets file replies.
                    let raw = writer.raw().ok_or_else(|| {
                        io::Error::other("a file reply on a transport without a raw socket")
                    })?;
                    loop {
                        raw.writable().await?;
                        let socket = raw.socket_fd();
                        match raw.try_write_op(|| pipe.drain_into(socket)) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(self.consume(written))
    }

    /// The unwritten slices up to the next file segment, or the rest of
    /// that file segment if it comes first.
    fn next<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> Next {
        let mut count = 0;
        let mut skip = self.front_written;
        let mut file = None;
        let mut full = false;
        for reply in &self.queue {
            reply.visit(|segment| {
                if segment.len() <= skip {
                    skip -= segment.len();
                    return true;
                }
                match segment {
                    Segment::Bytes(bytes) => {
                        iov[count] = IoSlice::new(&bytes[skip..]);
                        count += 1;
                        full = count == iov.len();
                    }
                    Segment::File(range) => {
                        if count == 0 {
                            file = Some(Next::File(
                                range.fd,
                                range.offset + skip as u64,
                                range.len - skip,
                            ));
                        }
                        full = true;
                    }
                }
                skip = 0;
                !full
            });
            if full {
                break;
            }
        }
        file.unwrap_or(Next::Slices(count))
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
    use super::super::splice::FileRange;
    use super::*;
    use crate::test_support::tmpfs_backend;
    use tokio::io::AsyncReadExt;

    fn req(cookie: u64, offset: u64, length: u64) -> Request {
        Request {
            flags: 0,
            command: CMD_READ,
            cookie,
            offset,
            length,
        }
    }

    #[tokio::test]
    async fn slices_and_spliced_files_arrive_whole_and_in_order() {
        let data: Vec<u8> = (0..1 << 21).map(|i| (i * 7 % 251) as u8).collect();
        let (_dir, backend) = tmpfs_backend(&data, false).await;
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_, mut writer) = ours.into_split();
        let reader = tokio::spawn(async move {
            let mut theirs = theirs;
            let mut got = Vec::new();
            let mut chunk = [0; 1000];
            loop {
                match theirs.read(&mut chunk).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let mut queue = ReplyQueue::default();
        let mut expected = Vec::new();
        for cookie in 0..12u64 {
            let mut reply = match cookie % 3 {
                0 => Reply::error(
                    ReplyMode::Structured,
                    &req(cookie, 0, 0),
                    EIO,
                    "failed here",
                ),
                1 => {
                    let (offset, len) = (cookie * 65536, 300_000);
                    let range = FileRange::of(&backend, offset, len).expect("tmpfs file range");
                    Reply::read_file(
                        ReplyMode::Structured,
                        &req(cookie, offset, len as u64),
                        range,
                    )
                }
                _ => Reply::ok(ReplyMode::Simple, &req(cookie, 0, 0)),
            };
            reply.set_cost(100);
            reply.visit(|segment| {
                match segment {
                    Segment::Bytes(bytes) => expected.extend_from_slice(bytes),
                    Segment::File(range) => {
                        let at = range.offset as usize;
                        expected.extend_from_slice(&data[at..at + range.len]);
                    }
                }
                true
            });
            queue.push(reply);
        }
        let mut total = Sent::default();
        while !queue.is_empty() {
            let sent = queue.write_some(&mut writer).await.unwrap();
            total.replies += sent.replies;
            total.cost += sent.cost;
        }
        drop(writer);
        assert_eq!(
            total,
            Sent {
                replies: 12,
                cost: 1200
            }
        );
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
    }
}

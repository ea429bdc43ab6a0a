//! The sending half of a TLS session as the connection's transport: a
//! vectored write's small slices are gathered into one TLS write of up to
//! [`TLS_WRITE_GATHER`] bytes (a reply's header and payload do not each
//! cost a record, nor does each of many small replies), and a write
//! completes once its records are sent (the socket beneath gathers them
//! until flushed). Large slices are not copied: a gather that meets one
//! takes only what completes its last record, and a write that starts
//! with one hands it to TLS as it is.
//!
//! A write that has to wait keeps what TLS took: the connection retries
//! with the same slices first (or more after them), and is told the bytes
//! taken once they are sent, so nothing is encrypted twice.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncWrite, WriteHalf};

use super::super::splice::{NoSocket, Transport};
use super::Tls;

/// Bytes of replies gathered into one TLS write, and the most handed to
/// TLS by one write.
pub const TLS_WRITE_GATHER: usize = 256 << 10;
/// The largest TLS record's plaintext.
const TLS_RECORD: usize = 16 << 10;
/// Slices at least this long are handed to TLS without a copy.
const TLS_WRITE_DIRECT: usize = 4 * TLS_RECORD;

/// The sending half of a TLS session.
pub struct TlsWriter {
    half: WriteHalf<Tls>,
    gather: Vec<u8>,
    /// Bytes TLS took whose records may not all be sent yet.
    taken: Option<usize>,
}

impl TlsWriter {
    pub fn new(half: WriteHalf<Tls>) -> TlsWriter {
        TlsWriter {
            half,
            gather: Vec::new(),
            taken: None,
        }
    }

    pub fn into_inner(self) -> WriteHalf<Tls> {
        self.half
    }
}

impl AsyncWrite for TlsWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let taken = match this.taken {
            Some(taken) => taken,
            None => {
                let first = bufs.iter().find(|buf| !buf.is_empty());
                let plain: &[u8] = match first {
                    Some(buf) if buf.len() >= TLS_WRITE_DIRECT => {
                        &buf[..buf.len().min(TLS_WRITE_GATHER)]
                    }
                    _ => {
                        gather(&mut this.gather, bufs);
                        &this.gather
                    }
                };
                let taken = ready!(Pin::new(&mut this.half).poll_write(cx, plain))?;
                this.taken = Some(taken);
                taken
            }
        };
        ready!(Pin::new(&mut this.half).poll_flush(cx))?;
        this.taken = None;
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_shutdown(cx)
    }
}

/// Gathers `bufs`, in order, into `into`, up to [`TLS_WRITE_GATHER`]
/// bytes; of a slice of [`TLS_WRITE_DIRECT`] bytes or more after others,
/// only what fills the record they started (the rest goes to TLS as it
/// is, by the next write).
fn gather(into: &mut Vec<u8>, bufs: &[IoSlice<'_>]) {
    into.clear();
    for buf in bufs {
        let room = TLS_WRITE_GATHER - into.len();
        if buf.len() >= TLS_WRITE_DIRECT && !into.is_empty() {
            let record_left = (TLS_RECORD - into.len() % TLS_RECORD) % TLS_RECORD;
            into.extend_from_slice(&buf[..record_left.min(room)]);
            return;
        }
        into.extend_from_slice(&buf[..buf.len().min(room)]);
        if into.len() == TLS_WRITE_GATHER {
            return;
        }
    }
}

/// Under TLS there is no raw socket to splice into or poll.
impl Transport for TlsWriter {
    type Raw = NoSocket;

    fn raw(&self) -> Option<&NoSocket> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(bufs: &[&[u8]]) -> Vec<u8> {
        let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut into = vec![9; 3];
        gather(&mut into, &slices);
        into
    }

    #[test]
    fn small_slices_are_gathered_up_to_the_limit() {
        let header = [1u8; 16];
        let small = vec![2u8; 4096];
        let mut want = header.to_vec();
        want.extend_from_slice(&small);
        want.extend_from_slice(&header);
        assert_eq!(gathered(&[&header, &small, &header]), want);
        let many: Vec<&[u8]> = std::iter::repeat_n(&small[..], 100).collect();
        assert_eq!(gathered(&many).len(), TLS_WRITE_GATHER);
    }

    #[test]
    fn a_large_slice_after_others_only_fills_their_last_record() {
        let header = [1u8; 16];
        let payload = vec![2u8; 256 << 10];
        let got = gathered(&[&header, &payload]);
        assert_eq!(got.len(), TLS_RECORD);
        assert_eq!(&got[..16], &header);
        assert!(got[16..].iter().all(|&b| b == 2));
        // Slices that end on a record boundary take nothing of it.
        let record = vec![3u8; TLS_RECORD];
        assert_eq!(gathered(&[&record, &payload]), record);
    }
}

//! The sending half of a TLS session as the connection's transport: a
//! vectored write's slices are gathered into one TLS write of up to
//! [`TLS_WRITE_GATHER`] bytes (a reply's header and payload do not each
//! cost a record), and a write completes once its records are sent (the
//! socket beneath gathers them until flushed).
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

/// Bytes of replies gathered into one TLS write.
pub const TLS_WRITE_GATHER: usize = 256 << 10;

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
                this.gather.clear();
                for buf in bufs {
                    let room = TLS_WRITE_GATHER - this.gather.len();
                    this.gather.extend_from_slice(&buf[..buf.len().min(room)]);
                    if this.gather.len() == TLS_WRITE_GATHER {
                        break;
                    }
                }
                let taken = ready!(Pin::new(&mut this.half).poll_write(cx, &this.gather))?;
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

/// Under TLS there is no raw socket to splice into or poll.
impl Transport for TlsWriter {
    type Raw = NoSocket;

    fn raw(&self) -> Option<&NoSocket> {
        None
    }
}

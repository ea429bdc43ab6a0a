//! The NBD server's TLS (`tls-creds`, `tls-authz`): until the client
//! sends `NBD_OPT_STARTTLS`, every other option is refused with
//! `NBD_REP_ERR_TLS_REQD` and nothing about the exports is said; then
//! the TLS handshake, the authorization of the client's identity, and
//! the rest of the handshake and the transmission over TLS.
//!
//! Nothing the client sends before the TLS handshake is processed after
//! it (the STARTTLS injection of CVE-2021-3716): options are read
//! unbuffered before TLS, so bytes sent after `NBD_OPT_STARTTLS` reach
//! OpenSSL as the client's hello, which fails. Under TLS the connection
//! has no raw socket (`Transport::raw` is `None`): no splicing, no
//! polling beneath the TLS layer. A session moves to an export's
//! iothread with its socket parked (`Socket::park`, `Socket::attach`).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nbdwire::tls::{TlsCreds, TlsStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf, ReadHalf, WriteHalf};

use super::codec::push_option_reply;
use super::connection::{Negotiated, HANDSHAKE_BUFFER_LEN};
use super::handshake::{
    greet, haggle, option_header, protocol, skip, ClientFlags, HandshakeConfig, HandshakeError,
    Outcome, MAX_OPTIONS,
};
use super::proto::*;
use super::splice::{NoSocket, Transport};

/// Bytes of replies gathered into one TLS write (a few records), so that
/// a reply's header and payload do not each cost a record and a system
/// call.
const TLS_WRITE_GATHER: usize = 256 << 10;

/// Decides whether a client's identity may connect (`tls-authz`).
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    /// `identity` is the client certificate's distinguished name or its
    /// PSK user name; `None` if it presented neither. The error says why
    /// the client is refused.
    fn check(&self, identity: Option<&str>) -> Result<(), String>;
}

/// What a server that requires TLS needs.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub creds: Arc<TlsCreds>,
    pub authz: Option<Arc<dyn Authorizer>>,
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        let same_authz = match (&self.authz, &other.authz) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        Arc::ptr_eq(&self.creds, &other.creds) && same_authz
    }
}

impl Eq for ServerTls {}

/// A connection's socket beneath TLS: registered with the event loop it
/// runs on, or parked between two loops.
pub enum Socket {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
    ParkedUnix(std::os::unix::net::UnixStream),
    ParkedTcp(std::net::TcpStream),
    /// Only while `park` or `attach` swaps the socket (or after one
    /// failed).
    Gone,
}

impl Socket {
    /// Leaves the event loop the socket is registered with.
    pub fn park(&mut self) -> io::Result<()> {
        *self = match std::mem::replace(self, Socket::Gone) {
            Socket::Unix(s) => Socket::ParkedUnix(s.into_std()?),
            Socket::Tcp(s) => Socket::ParkedTcp(s.into_std()?),
            other => other,
        };
        Ok(())
    }

    /// Joins the event loop this runs on.
    pub fn attach(&mut self) -> io::Result<()> {
        *self = match std::mem::replace(self, Socket::Gone) {
            Socket::ParkedUnix(s) => Socket::Unix(tokio::net::UnixStream::from_std(s)?),
            Socket::ParkedTcp(s) => Socket::Tcp(tokio::net::TcpStream::from_std(s)?),
            other => other,
        };
        Ok(())
    }
}

fn parked() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket parked between loops")
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            _ => Poll::Ready(Err(parked())),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            _ => Poll::Ready(Err(parked())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            _ => Poll::Ready(Err(parked())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            _ => Poll::Ready(Err(parked())),
        }
    }
}

/// A TLS session on a connection's socket.
pub type Tls = TlsStream<Socket>;
/// The receiving half of a TLS session.
pub type TlsReader = ReadHalf<Tls>;

/// The sending half of a TLS session, which gathers a vectored write's
/// slices into one TLS write.
pub struct TlsWriter {
    half: WriteHalf<Tls>,
    gather: Vec<u8>,
}

impl TlsWriter {
    pub fn new(half: WriteHalf<Tls>) -> TlsWriter {
        TlsWriter {
            half,
            gather: Vec::new(),
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
        Pin::new(&mut self.get_mut().half).poll_write(cx, buf)
    }

    /// The slices gathered, up to [`TLS_WRITE_GATHER`] bytes. A write that
    /// has to wait is retried with the same slices (or more after them),
    /// so the bytes OpenSSL has already taken are the same again.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.gather.clear();
        for buf in bufs {
            let room = TLS_WRITE_GATHER - this.gather.len();
            this.gather.extend_from_slice(&buf[..buf.len().min(room)]);
            if this.gather.len() == TLS_WRITE_GATHER {
                break;
            }
        }
        Pin::new(&mut this.half).poll_write(cx, &this.gather)
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

/// How the options before TLS ended.
enum BeforeTls {
    StartTls,
    Aborted,
}

/// Answers options until `NBD_OPT_STARTTLS`: every other one but
/// `NBD_OPT_ABORT` gets `NBD_REP_ERR_TLS_REQD`. Reads exactly what each
/// option holds, never ahead.
async fn until_starttls(
    socket: &mut Socket,
    flags: ClientFlags,
) -> Result<BeforeTls, HandshakeError> {
    if !flags.fixed() {
        return Err(protocol("TLS is required and the client cannot ask for it"));
    }
    let mut out = Vec::new();
    for _ in 0..MAX_OPTIONS {
        let (option, len) = option_header(socket).await?;
        out.clear();
        let step = match option {
            OPT_EXPORT_NAME => return Err(protocol("Option 0x1 not permitted before TLS")),
            OPT_STARTTLS | OPT_ABORT if len != 0 => {
                skip(socket, len).await?;
                let text = format!("option '{}' has unexpected length", option_name(option));
                push_option_reply(&mut out, option, REP_ERR_INVALID, &[text.as_bytes()]);
                None
            }
            OPT_STARTTLS => {
                push_option_reply(&mut out, option, REP_ACK, &[]);
                Some(BeforeTls::StartTls)
            }
            OPT_ABORT => {
                push_option_reply(&mut out, option, REP_ACK, &[]);
                Some(BeforeTls::Aborted)
            }
            _ => {
                skip(socket, len).await?;
                let text = format!("Option {option:#x} not permitted before TLS");
                push_option_reply(&mut out, option, REP_ERR_TLS_REQD, &[text.as_bytes()]);
                None
            }
        };
        socket.write_all(&out).await?;
        if let Some(step) = step {
            return Ok(step);
        }
    }
    Err(protocol(format!("more than {MAX_OPTIONS} options")))
}

/// The handshake of a server that requires TLS: greeting, options until
/// `NBD_OPT_STARTTLS`, the TLS handshake and the client's authorization,
/// then the options over TLS. `None` if the client aborted.
pub async fn negotiate(
    mut socket: Socket,
    tls: &ServerTls,
    config: &HandshakeConfig,
    peer: &str,
) -> Result<Option<Negotiated<TlsReader, TlsWriter>>, HandshakeError> {
    let flags = {
        let (mut read, mut write) = tokio::io::split(&mut socket);
        greet(&mut read, &mut write).await?
    };
    if let BeforeTls::Aborted = until_starttls(&mut socket, flags).await? {
        return Ok(None);
    }
    let (stream, identity) = tls.creds.accept(socket).await?;
    if let Some(authz) = &tls.authz {
        if let Err(reason) = authz.check(identity.as_deref()) {
            // Refusals are for the administrator to see, at warning level.
            let who = identity.as_deref().unwrap_or("without identity");
            tracing::warn!(peer, "NBD TLS client {who} not authorized: {reason}");
            return Err(protocol(format!("TLS client {who} not authorized")));
        }
    }
    tracing::debug!(peer, identity, "NBD client completed the TLS handshake");
    let (read, write) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(HANDSHAKE_BUFFER_LEN, read);
    let mut writer = TlsWriter::new(write);
    match haggle(&mut reader, &mut writer, config, flags, true).await? {
        Outcome::Aborted => Ok(None),
        Outcome::Transmission(session) => Ok(Some(Negotiated {
            leftover: reader.buffer().to_vec(),
            reader: reader.into_inner(),
            writer,
            session,
        })),
    }
}

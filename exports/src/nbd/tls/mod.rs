//! The NBD server's TLS (`tls-creds`, `tls-authz`): until the client
//! sends `NBD_OPT_STARTTLS`, every other option is refused with
//! `NBD_REP_ERR_TLS_REQD` and nothing about the exports is said; then
//! the TLS handshake, the authorization of the client's identity, and
//! the rest of the handshake and the transmission over TLS.
//!
//! Nothing the client sends before the TLS handshake is processed after
//! it (the STARTTLS injection of CVE-2021-3716): a client that has sent
//! anything after `NBD_OPT_STARTTLS` by the time it is answered is
//! dropped, and bytes that arrive later reach OpenSSL as the client's
//! hello, which fails. Under TLS the connection
//! has no raw socket (`Transport::raw` is `None`): no splicing, no
//! polling beneath the TLS layer. The socket beneath (`socket`) gathers
//! TLS records into few system calls and can move to an export's
//! iothread; `reader` takes every record received at once, and `writer`
//! gathers replies into few TLS writes.

mod reader;
mod socket;
mod writer;

pub use reader::TlsReader;
pub use socket::Socket;
pub use writer::TlsWriter;

use std::sync::Arc;

use nbdwire::tls::{TlsCreds, TlsStream};
use tokio::io::{AsyncWriteExt, BufReader};

use super::codec::push_option_reply;
use super::connection::{Negotiated, HANDSHAKE_BUFFER_LEN};
use super::handshake::{
    greet, haggle, option_header, protocol, skip, ClientFlags, HandshakeConfig, HandshakeError,
    Outcome, MAX_OPTIONS,
};
use super::proto::*;

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

/// A TLS session on a connection's socket.
pub type Tls = TlsStream<Socket>;

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
        socket.flush().await?;
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
    if socket.has_unread() {
        return Err(protocol(
            "data sent after NBD_OPT_STARTTLS before the TLS handshake",
        ));
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
            reader: TlsReader::new(reader.into_inner()),
            writer,
            session,
        })),
    }
}

//! TLS for NBD (`NBD_OPT_STARTTLS`): credentials made once from QEMU's
//! files (`x509`, `psk`, `anon`) into an OpenSSL context, and sessions started
//! from it on a connection that has agreed to TLS (`accept` on a server,
//! `connect` on a client), with the peer's identity for authorization
//! (`identity`).
//!
//! OpenSSL, through `tokio-openssl`, because one stack must do both
//! X.509 and TLS-PSK (QEMU's `tls-creds-psk`; rustls has no PSK) and
//! interoperate with GnuTLS, which QEMU, libnbd and nbdkit use. This
//! module reads no files: the daemon hands it their bytes, with their
//! paths for messages. Sessions read ahead (one system call takes in as
//! many records as have arrived: a client's requests are small records).

pub mod anon;
pub mod identity;
pub mod psk;
pub mod x509;

use std::io;
use std::pin::Pin;

use openssl::ssl::{Ssl, SslContext, SslRef};
use tokio::io::{AsyncRead, AsyncWrite};

pub use tokio_openssl::SslStream as TlsStream;

/// Which side of a TLS connection credentials serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Credentials ready to start sessions.
pub struct TlsCreds {
    side: Side,
    context: SslContext,
    kind: Kind,
}

enum Kind {
    /// Whether the peer's certificate is checked (and, on a client, the
    /// server's name).
    X509 {
        verify_peer: bool,
    },
    Psk,
    /// Nobody authenticated (no identity to authorize).
    Anon,
}

impl std::fmt::Debug for TlsCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::X509 { .. } => "x509",
            Kind::Psk => "psk",
            Kind::Anon => "anon",
        };
        write!(f, "TlsCreds({kind}, {:?})", self.side)
    }
}

impl TlsCreds {
    pub fn side(&self) -> Side {
        self.side
    }

    /// The server side of a session on `stream`, after the TLS handshake,
    /// with the client's identity: its certificate's distinguished name
    /// (as GnuTLS writes it) or its PSK user name, if it gave one.
    pub async fn accept<S>(&self, stream: S) -> io::Result<(TlsStream<S>, Option<String>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ssl = Ssl::new(&self.context).map_err(io::Error::other)?;
        let mut stream = TlsStream::new(ssl, stream).map_err(io::Error::other)?;
        Pin::new(&mut stream)
            .accept()
            .await
            .map_err(|e| handshake_failed(stream.ssl(), e))?;
        let identity = match self.kind {
            Kind::X509 { .. } => stream
                .ssl()
                .peer_certificate()
                .map(|cert| identity::distinguished_name(cert.subject_name())),
            Kind::Psk => psk::identity(stream.ssl()),
            Kind::Anon => None,
        };
        Ok((stream, identity))
    }

    /// The client side of a session on `stream`, after the TLS handshake.
    /// With X.509 and `verify-peer`, the server's certificate must name
    /// `hostname` when one is given.
    pub async fn connect<S>(&self, stream: S, hostname: Option<&str>) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut ssl = Ssl::new(&self.context).map_err(io::Error::other)?;
        if let (Kind::X509 { verify_peer: true }, Some(host)) = (&self.kind, hostname) {
            x509::expect_host(&mut ssl, host).map_err(io::Error::other)?;
        }
        let mut stream = TlsStream::new(ssl, stream).map_err(io::Error::other)?;
        Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| handshake_failed(stream.ssl(), e))?;
        Ok(stream)
    }
}

/// A failed handshake, with the certificate check's reason when that is
/// what failed.
fn handshake_failed(ssl: &SslRef, error: openssl::ssl::Error) -> io::Error {
    let verify = ssl.verify_result();
    let reason = if verify != openssl::x509::X509VerifyResult::OK {
        format!("certificate check failed: {}", verify.error_string())
    } else {
        match error.ssl_error() {
            Some(stack) => stack.to_string(),
            None => error.to_string(),
        }
    };
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("TLS handshake failed: {reason}"),
    )
}

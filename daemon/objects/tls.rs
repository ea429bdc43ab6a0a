//! TLS credential objects (`tls-creds-anon`, `-psk`, `-x509`): the files
//! QEMU loads when it creates them are read here, with QEMU's messages,
//! and made into sessions' credentials by `nbdwire::tls`, which checks
//! their content. `priority` (a GnuTLS priority string) is refused:
//! OpenSSL has no equivalent.

use std::sync::Arc;

use nbdwire::tls::x509::{PemFile, X509Files};
use nbdwire::tls::{self, Side};
use schema::object::{
    QCryptoTlsCredsEndpoint, TlsCredsAnonProperties, TlsCredsPskProperties, TlsCredsX509Properties,
};
use schema::QmpError;

use block::error::os_error_text;

use super::read_small_file;

/// The user name a PSK client presents when none is given.
const DEFAULT_PSK_USERNAME: &str = "qemu";

/// TLS credentials: which side they serve, and the sessions'
/// credentials.
#[derive(Debug, Clone)]
pub struct TlsCreds {
    pub endpoint: QCryptoTlsCredsEndpoint,
    pub sessions: Arc<tls::TlsCreds>,
}

impl PartialEq for TlsCreds {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint == other.endpoint && Arc::ptr_eq(&self.sessions, &other.sessions)
    }
}

impl Eq for TlsCreds {}

/// `tls-creds-anon`: a server's `dir` may hold `dh-params.pem`.
pub fn anon(anon: TlsCredsAnonProperties) -> Result<TlsCreds, QmpError> {
    refuse_priority(anon.priority.as_deref())?;
    let endpoint = anon.endpoint.unwrap_or(QCryptoTlsCredsEndpoint::Client);
    let dh_params = match (&anon.dir, endpoint) {
        (Some(dir), QCryptoTlsCredsEndpoint::Server) => optional_file(dir, "dh-params.pem")?,
        _ => None,
    };
    let sessions = tls::anon::creds(side(endpoint), dh_params.as_ref().map(Loaded::pem))
        .map_err(QmpError::generic)?;
    Ok(TlsCreds {
        endpoint,
        sessions: Arc::new(sessions),
    })
}

fn refuse_priority(priority: Option<&str>) -> Result<(), QmpError> {
    match priority {
        None => Ok(()),
        Some(_) => Err(QmpError::generic(
            "'priority' (a GnuTLS priority string) is not supported by storaged",
        )),
    }
}

fn missing_dir() -> QmpError {
    QmpError::generic("Missing 'dir' property value")
}

fn side(endpoint: QCryptoTlsCredsEndpoint) -> Side {
    match endpoint {
        QCryptoTlsCredsEndpoint::Client => Side::Client,
        QCryptoTlsCredsEndpoint::Server => Side::Server,
    }
}

/// A credentials file read whole.
struct Loaded {
    path: String,
    content: Vec<u8>,
}

impl Loaded {
    fn pem(&self) -> PemFile<'_> {
        PemFile {
            path: &self.path,
            content: &self.content,
        }
    }
}

/// A credentials file that must exist, with QEMU's message.
fn require_file(dir: &str, name: &str) -> Result<Loaded, QmpError> {
    let path = format!("{dir}/{name}");
    match std::fs::metadata(&path) {
        Ok(_) => read(path),
        Err(e) => Err(QmpError::generic(format!(
            "Unable to access credentials {path}: {}",
            os_error_text(&e)
        ))),
    }
}

/// A credentials file used if it exists.
fn optional_file(dir: &str, name: &str) -> Result<Option<Loaded>, QmpError> {
    let path = format!("{dir}/{name}");
    match std::fs::metadata(&path) {
        Ok(_) => read(path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(QmpError::generic(format!(
            "Unable to access credentials {path}: {}",
            os_error_text(&e)
        ))),
    }
}

fn read(path: String) -> Result<Loaded, QmpError> {
    let content = read_small_file(&path).map_err(|reason| {
        QmpError::generic(format!("Unable to access credentials {path}: {reason}"))
    })?;
    Ok(Loaded { path, content })
}

/// QEMU's PSK credentials load: `keys.psk` (a client needs its user's
/// line in it).
pub fn psk(psk: TlsCredsPskProperties) -> Result<TlsCreds, QmpError> {
    refuse_priority(psk.priority.as_deref())?;
    let dir = psk.dir.ok_or_else(missing_dir)?;
    let endpoint = psk.endpoint.unwrap_or(QCryptoTlsCredsEndpoint::Client);
    if endpoint == QCryptoTlsCredsEndpoint::Server && psk.username.is_some() {
        return Err(QmpError::generic(
            "username should not be set when endpoint=server",
        ));
    }
    let keys = require_file(&dir, "keys.psk")?;
    let sessions = match endpoint {
        QCryptoTlsCredsEndpoint::Server => tls::psk::server(&keys.content, &keys.path),
        QCryptoTlsCredsEndpoint::Client => {
            let username = psk.username.as_deref().unwrap_or(DEFAULT_PSK_USERNAME);
            tls::psk::client(&keys.content, &keys.path, username)
        }
    }
    .map_err(QmpError::generic)?;
    Ok(TlsCreds {
        endpoint,
        sessions: Arc::new(sessions),
    })
}

/// QEMU's X.509 credentials load: the CA certificate always, a CRL if
/// there is one; a server's certificate and key (and DH parameters if
/// there are some), a client's if it has both. `key_password` gives the
/// secret that `passwordid` names.
pub fn x509(
    x509: TlsCredsX509Properties,
    key_password: impl FnOnce(&str) -> Result<Vec<u8>, QmpError>,
) -> Result<TlsCreds, QmpError> {
    refuse_priority(x509.priority.as_deref())?;
    let dir = x509.dir.ok_or_else(missing_dir)?;
    let endpoint = x509.endpoint.unwrap_or(QCryptoTlsCredsEndpoint::Client);
    let ca = require_file(&dir, "ca-cert.pem")?;
    let crl = optional_file(&dir, "ca-crl.pem")?;
    let (cert, dh_params) = match endpoint {
        QCryptoTlsCredsEndpoint::Server => {
            let cert = require_file(&dir, "server-cert.pem")?;
            let key = require_file(&dir, "server-key.pem")?;
            (Some((cert, key)), optional_file(&dir, "dh-params.pem")?)
        }
        QCryptoTlsCredsEndpoint::Client => {
            let cert = optional_file(&dir, "client-cert.pem")?;
            let key = optional_file(&dir, "client-key.pem")?;
            (cert.zip(key), None)
        }
    };
    let password = x509.passwordid.as_deref().map(key_password).transpose()?;
    let files = X509Files {
        side: side(endpoint),
        ca: ca.pem(),
        crl: crl.as_ref().map(Loaded::pem),
        cert: cert.as_ref().map(|(cert, key)| (cert.pem(), key.pem())),
        dh_params: dh_params.as_ref().map(Loaded::pem),
        key_password: password.as_deref(),
        verify_peer: x509.verify_peer.unwrap_or(true),
        sanity_check: x509.sanity_check.unwrap_or(true),
    };
    let sessions = tls::x509::creds(&files).map_err(QmpError::generic)?;
    Ok(TlsCreds {
        endpoint,
        sessions: Arc::new(sessions),
    })
}

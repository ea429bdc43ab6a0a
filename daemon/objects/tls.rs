//! TLS credential objects (`tls-creds-anon`, `-psk`, `-x509`): the files
//! QEMU loads when it creates them must be readable, and a PSK client's
//! user must be in its key file. Certificates are not parsed here.

use schema::object::{
    QCryptoTlsCredsEndpoint, TlsCredsAnonProperties, TlsCredsPskProperties, TlsCredsX509Properties,
};
use schema::QmpError;

use block::error::os_error_text;

use super::read_small_file;

/// The user name a PSK client presents when none is given.
const DEFAULT_PSK_USERNAME: &str = "qemu";

/// TLS credentials: where their files are and which side they serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCreds {
    pub kind: TlsCredsKind,
    pub endpoint: QCryptoTlsCredsEndpoint,
    pub dir: Option<String>,
    pub verify_peer: bool,
    pub priority: Option<String>,
}

/// The kind of credentials, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsCredsKind {
    Anon,
    Psk { username: String },
    X509 { passwordid: Option<String> },
}

/// `tls-creds-anon`: nothing to check.
pub fn anon(anon: TlsCredsAnonProperties) -> TlsCreds {
    TlsCreds {
        kind: TlsCredsKind::Anon,
        endpoint: anon.endpoint.unwrap_or(QCryptoTlsCredsEndpoint::Client),
        dir: anon.dir,
        verify_peer: anon.verify_peer.unwrap_or(true),
        priority: anon.priority,
    }
}

fn missing_dir() -> QmpError {
    QmpError::generic("Missing 'dir' property value")
}

/// A credentials file that must be readable, with QEMU's message.
fn require_file(dir: &str, name: &str) -> Result<String, QmpError> {
    let path = format!("{dir}/{name}");
    readable(&path).map(|()| path.clone()).map_err(|reason| {
        QmpError::generic(format!("Unable to access credentials {path}: {reason}"))
    })
}

fn readable(path: &str) -> Result<(), String> {
    let c_path = std::ffi::CString::new(path).map_err(|_| "Invalid argument".to_owned())?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the call.
    if unsafe { libc::access(c_path.as_ptr(), libc::R_OK) } == 0 {
        Ok(())
    } else {
        Err(os_error_text(&std::io::Error::last_os_error()))
    }
}

/// QEMU's PSK credentials load: the server needs `keys.psk`; a client
/// needs its user's line in it.
pub fn psk(psk: TlsCredsPskProperties) -> Result<TlsCreds, QmpError> {
    let dir = psk.dir.ok_or_else(missing_dir)?;
    let endpoint = psk.endpoint.unwrap_or(QCryptoTlsCredsEndpoint::Client);
    let keys = require_file(&dir, "keys.psk")?;
    let username = psk
        .username
        .unwrap_or_else(|| DEFAULT_PSK_USERNAME.to_owned());
    if endpoint == QCryptoTlsCredsEndpoint::Client {
        let content = read_small_file(&keys)
            .map_err(|reason| QmpError::generic(format!("Unable to read {keys}: {reason}")))?;
        let text = String::from_utf8_lossy(&content);
        let found = text.lines().any(|line| {
            line.split_once(':')
                .is_some_and(|(user, _)| user == username)
        });
        if !found {
            return Err(QmpError::generic(format!(
                "Username {username} not found in PSK file {keys}"
            )));
        }
    }
    Ok(TlsCreds {
        kind: TlsCredsKind::Psk { username },
        endpoint,
        dir: Some(dir),
        verify_peer: psk.verify_peer.unwrap_or(true),
        priority: psk.priority,
    })
}

/// QEMU's X.509 credentials load: the CA certificate always, and the
/// server's certificate and key on a server.
pub fn x509(x509: TlsCredsX509Properties) -> Result<TlsCreds, QmpError> {
    let dir = x509.dir.ok_or_else(missing_dir)?;
    let endpoint = x509.endpoint.unwrap_or(QCryptoTlsCredsEndpoint::Client);
    require_file(&dir, "ca-cert.pem")?;
    if endpoint == QCryptoTlsCredsEndpoint::Server {
        require_file(&dir, "server-cert.pem")?;
        require_file(&dir, "server-key.pem")?;
    }
    Ok(TlsCreds {
        kind: TlsCredsKind::X509 {
            passwordid: x509.passwordid,
        },
        endpoint,
        dir: Some(dir),
        verify_peer: x509.verify_peer.unwrap_or(true),
        priority: x509.priority,
    })
}

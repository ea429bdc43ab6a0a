//! TLS-PSK credentials (QEMU's `tls-creds-psk`): the key file in
//! psktool's format, one `username:hexkey` a line; a server accepts any
//! user in it, a client presents one. TLS 1.3 (and 1.2's PSK, DHE-PSK and
//! ECDHE-PSK suites), as GnuTLS negotiates them with QEMU's priorities.

use std::sync::{Arc, OnceLock};

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContextBuilder, SslMethod, SslRef, SslVersion};

use super::{Kind, Side, TlsCreds};

/// The longest key OpenSSL takes (`PSK_MAX_PSK_LEN`).
pub const MAX_KEY_LEN: usize = 512;
/// The longest user name OpenSSL takes (`PSK_MAX_IDENTITY_LEN`, without
/// its terminating NUL).
pub const MAX_USERNAME_LEN: usize = 255;
/// TLS 1.2 suites offered; TLS 1.3's are OpenSSL's defaults.
const TLS12_PSK_CIPHERS: &str = "kECDHEPSK:kDHEPSK:kPSK:!kRSAPSK:!eNULL";

/// One user and its key.
#[derive(Clone)]
struct Key {
    user: String,
    key: Vec<u8>,
}

/// The users and keys of a key file, in its order; `path` names it in
/// messages.
fn parse(content: &[u8], path: &str) -> Result<Vec<Key>, String> {
    let text = std::str::from_utf8(content).map_err(|_| format!("PSK file {path} is not text"))?;
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| format!("{what} on line {} of PSK file {path}", number + 1);
        let (user, hex) = line
            .split_once(':')
            .ok_or_else(|| bad("No ':' after the user name"))?;
        if user.is_empty() || user.len() > MAX_USERNAME_LEN || user.contains('\0') {
            return Err(bad("Invalid user name"));
        }
        let key = decode_hex(hex).ok_or_else(|| bad("Unable to decode PSK key"))?;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(bad(&format!("PSK key not 1 to {MAX_KEY_LEN} bytes long")));
        }
        keys.push(Key {
            user: user.to_owned(),
            key,
        });
    }
    Ok(keys)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Where a server keeps the user name a client presented.
fn identity_index() -> Index<Ssl, String> {
    static INDEX: OnceLock<Index<Ssl, String>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex data index"))
}

/// The user name the client of a server session presented.
pub(super) fn identity(ssl: &SslRef) -> Option<String> {
    ssl.ex_data(identity_index()).cloned()
}

fn builder(side: Side) -> Result<SslContextBuilder, ErrorStack> {
    let method = match side {
        Side::Client => SslMethod::tls_client(),
        Side::Server => SslMethod::tls_server(),
    };
    let mut builder = SslContextBuilder::new(method)?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    builder.set_cipher_list(TLS12_PSK_CIPHERS)?;
    builder.set_read_ahead(true);
    Ok(builder)
}

/// Server credentials: every user of the key file `content` (read from
/// `path`) may connect with its key.
pub fn server(content: &[u8], path: &str) -> Result<TlsCreds, String> {
    let keys: Arc<[Key]> = parse(content, path)?.into();
    let mut builder = builder(Side::Server).map_err(|e| e.to_string())?;
    builder.set_psk_server_callback(move |ssl, identity, psk| {
        let user = identity.and_then(|id| std::str::from_utf8(id).ok());
        let Some(found) = keys.iter().find(|k| Some(k.user.as_str()) == user) else {
            return Ok(0);
        };
        ssl.set_ex_data(identity_index(), found.user.clone());
        let len = found.key.len().min(psk.len());
        psk[..len].copy_from_slice(&found.key[..len]);
        Ok(len)
    });
    Ok(TlsCreds {
        side: Side::Server,
        context: builder.build(),
        kind: Kind::Psk,
    })
}

/// Client credentials: `username` and its key from the key file.
pub fn client(content: &[u8], path: &str, username: &str) -> Result<TlsCreds, String> {
    let keys = parse(content, path)?;
    let key = keys
        .into_iter()
        .find(|k| k.user == username)
        .ok_or_else(|| format!("Username {username} not found in PSK file {path}"))?;
    let mut builder = builder(Side::Client).map_err(|e| e.to_string())?;
    builder.set_psk_client_callback(move |_ssl, _hint, identity, psk| {
        let user = key.user.as_bytes();
        if user.len() >= identity.len() || key.key.len() > psk.len() {
            return Ok(0);
        }
        identity[..user.len()].copy_from_slice(user);
        identity[user.len()] = 0;
        psk[..key.key.len()].copy_from_slice(&key.key);
        Ok(key.key.len())
    });
    Ok(TlsCreds {
        side: Side::Client,
        context: builder.build(),
        kind: Kind::Psk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_checked_line_by_line() {
        let keys = parse(b"alice:00ff\r\n\nbob:0102\n", "k").unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (keys[0].user.as_str(), &keys[0].key[..]),
            ("alice", &[0, 255][..])
        );
        assert_eq!(
            parse(b"alice:0g\n", "k").err().unwrap(),
            "Unable to decode PSK key on line 1 of PSK file k"
        );
        assert_eq!(
            parse(b"a:00\nalice\n", "k").err().unwrap(),
            "No ':' after the user name on line 2 of PSK file k"
        );
        assert_eq!(
            client(b"alice:00\n", "k", "bob").err().unwrap(),
            "Username bob not found in PSK file k"
        );
    }
}

//! Anonymous TLS (QEMU's `tls-creds-anon`): no certificates; anonymous
//! Diffie-Hellman key exchange in TLS 1.2 (TLS 1.3 has none), which
//! GnuTLS offers under QEMU's `NORMAL:+ANON-DH` priority. The session is
//! encrypted, and nobody is authenticated: a man in the middle can read
//! it. A server uses `dh-params.pem` if given, else RFC 7919's ffdhe2048
//! group.

use openssl::dh::Dh;
use openssl::ssl::{SslContextBuilder, SslMethod, SslVersion};

use super::x509::PemFile;
use super::{Kind, Side, TlsCreds};

/// Anonymous suites, which OpenSSL offers only at security level 0.
const ANON_CIPHERS: &str = "aNULL:!eNULL:@SECLEVEL=0";

/// RFC 7919's ffdhe2048 group.
const FFDHE2048: &[u8] = b"-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";

/// Anonymous credentials for `side`.
pub fn creds(side: Side, dh_params: Option<PemFile>) -> Result<TlsCreds, String> {
    let fail = |e: openssl::error::ErrorStack| e.to_string();
    let method = match side {
        Side::Client => SslMethod::tls_client(),
        Side::Server => SslMethod::tls_server(),
    };
    let mut builder = SslContextBuilder::new(method).map_err(fail)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(fail)?;
    builder
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .map_err(fail)?;
    builder.set_security_level(0);
    builder.set_cipher_list(ANON_CIPHERS).map_err(fail)?;
    builder.set_read_ahead(true);
    if side == Side::Server {
        let params = match dh_params {
            Some(pem) => Dh::params_from_pem(pem.content)
                .map_err(|e| format!("Unable to load DH parameters {}: {e}", pem.path))?,
            None => Dh::params_from_pem(FFDHE2048).map_err(fail)?,
        };
        builder.set_tmp_dh(&params).map_err(fail)?;
    }
    Ok(TlsCreds {
        side,
        context: builder.build(),
        kind: Kind::Anon,
    })
}

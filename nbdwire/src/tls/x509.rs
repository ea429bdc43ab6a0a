//! X.509 credentials (QEMU's `tls-creds-x509`): the CA certificates a
//! peer is checked against, optionally a CRL, our certificate and key,
//! and on a server Diffie-Hellman parameters. Checked when made, as QEMU
//! does with `sanity-check` (our certificate in its validity period and
//! valid against the CA), with QEMU's messages.

use std::net::IpAddr;

use openssl::asn1::Asn1Time;
use openssl::dh::Dh;
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::stack::Stack;
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509StoreContext, X509};

use super::{Kind, Side, TlsCreds};

/// A file's path (for messages) and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct PemFile<'a> {
    pub path: &'a str,
    pub content: &'a [u8],
}

/// What `tls-creds-x509` found in its directory, and how to use it.
pub struct X509Files<'a> {
    pub side: Side,
    pub ca: PemFile<'a>,
    pub crl: Option<PemFile<'a>>,
    /// Our certificate (with any intermediates after it) and its key:
    /// required on a server, optional on a client.
    pub cert: Option<(PemFile<'a>, PemFile<'a>)>,
    pub dh_params: Option<PemFile<'a>>,
    /// The password of an encrypted key (`passwordid`).
    pub key_password: Option<&'a [u8]>,
    pub verify_peer: bool,
    pub sanity_check: bool,
}

/// Credentials from `files`, or QEMU's message of what is wrong.
pub fn creds(files: &X509Files) -> Result<TlsCreds, String> {
    let cas = X509::stack_from_pem(files.ca.content).map_err(|e| {
        format!(
            "Unable to import CA certificate list {}: {e}",
            files.ca.path
        )
    })?;
    if cas.is_empty() {
        return Err(format!(
            "Unable to import CA certificate list {}: no certificate found",
            files.ca.path
        ));
    }
    let method = match files.side {
        Side::Client => SslMethod::tls_client(),
        Side::Server => SslMethod::tls_server(),
    };
    let fail = |e: openssl::error::ErrorStack| e.to_string();
    let mut builder = SslContextBuilder::new(method).map_err(fail)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(fail)?;
    builder.set_read_ahead(true);
    if let Some((cert, key)) = &files.cert {
        let chain = own_certificate(files, cert)?;
        let cannot_load = |reason: String| {
            format!(
                "Cannot load certificate '{}' & key '{}': {reason}",
                cert.path, key.path
            )
        };
        let private = match files.key_password {
            Some(password) => PKey::private_key_from_pem_passphrase(key.content, password),
            None => PKey::private_key_from_pem(key.content),
        }
        .map_err(|e| cannot_load(e.to_string()))?;
        let mut chain = chain.into_iter();
        let leaf = chain.next().expect("own_certificate returns one at least");
        builder
            .set_certificate(&leaf)
            .map_err(|e| cannot_load(e.to_string()))?;
        for intermediate in chain {
            builder
                .add_extra_chain_cert(intermediate)
                .map_err(|e| cannot_load(e.to_string()))?;
        }
        let mismatch = || cannot_load("The certificate and the given key do not match.".to_owned());
        let public = leaf.public_key().map_err(|e| cannot_load(e.to_string()))?;
        if !public.public_eq(&private) {
            return Err(mismatch());
        }
        builder
            .set_private_key(&private)
            .map_err(|e| cannot_load(e.to_string()))?;
        builder.check_private_key().map_err(|_| mismatch())?;
        if files.sanity_check {
            validate(&leaf, &cas, files)?;
        }
    }
    let mut store = X509StoreBuilder::new().map_err(fail)?;
    for ca in &cas {
        store
            .add_cert(ca.to_owned())
            .map_err(|e| format!("Cannot load CA certificate '{}': {e}", files.ca.path))?;
    }
    if let Some(crl) = &files.crl {
        let cannot = |e: openssl::error::ErrorStack| format!("Cannot load CRL '{}': {e}", crl.path);
        openssl::x509::X509Crl::from_pem(crl.content).map_err(cannot)?;
        let lookup = store.add_lookup(X509Lookup::file()).map_err(cannot)?;
        lookup
            .load_crl_file(crl.path, SslFiletype::PEM)
            .map_err(cannot)?;
        store
            .set_flags(X509VerifyFlags::CRL_CHECK)
            .map_err(cannot)?;
    }
    builder.set_cert_store(store.build());
    if let Some(dh) = &files.dh_params {
        let params = Dh::params_from_pem(dh.content)
            .map_err(|e| format!("Unable to load DH parameters {}: {e}", dh.path))?;
        builder
            .set_tmp_dh(&params)
            .map_err(|e| format!("Unable to load DH parameters {}: {e}", dh.path))?;
    }
    let mode = match (files.verify_peer, files.side) {
        (false, _) => SslVerifyMode::NONE,
        (true, Side::Client) => SslVerifyMode::PEER,
        (true, Side::Server) => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
    };
    builder.set_verify(mode);
    if files.side == Side::Server {
        // Sessions resumed with a client certificate need a context id.
        builder
            .set_session_id_context(b"storaged-nbd")
            .map_err(fail)?;
    }
    Ok(TlsCreds {
        side: files.side,
        context: builder.build(),
        kind: Kind::X509 {
            verify_peer: files.verify_peer,
        },
    })
}

/// Our certificate and the intermediates after it in its file.
fn own_certificate(files: &X509Files, cert: &PemFile) -> Result<Vec<X509>, String> {
    let side = match files.side {
        Side::Client => "client",
        Side::Server => "server",
    };
    let chain = X509::stack_from_pem(cert.content)
        .map_err(|e| format!("Unable to import {side} certificate {}: {e}", cert.path))?;
    if chain.is_empty() {
        return Err(format!(
            "Unable to import {side} certificate {}: no certificate found",
            cert.path
        ));
    }
    Ok(chain)
}

/// QEMU's sanity check of our certificate: within its validity period,
/// and valid against the CA certificates.
fn validate(leaf: &X509, cas: &[X509], files: &X509Files) -> Result<(), String> {
    let cert_path = files.cert.as_ref().map_or("", |(cert, _)| cert.path);
    let now = Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
    if leaf.not_after() < now {
        return Err(format!("The certificate {cert_path} has expired"));
    }
    if leaf.not_before() > now {
        return Err(format!("The certificate {cert_path} is not yet active"));
    }
    let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for ca in cas {
        store.add_cert(ca.clone()).map_err(|e| e.to_string())?;
    }
    let store = store.build();
    let chain = Stack::new().map_err(|e| e.to_string())?;
    let mut context = X509StoreContext::new().map_err(|e| e.to_string())?;
    let verdict = context
        .init(&store, leaf, &chain, |context| {
            Ok(context.verify_cert()?.then_some(()).ok_or(context.error()))
        })
        .map_err(|e| e.to_string())?;
    verdict.map_err(|error| {
        format!(
            "Our own certificate {cert_path} failed validation against {}: {}",
            files.ca.path,
            error.error_string()
        )
    })
}

/// A client session that accepts only a server certificate naming
/// `host` (a DNS name or an address), and names it to the server (SNI).
pub(super) fn expect_host(ssl: &mut Ssl, host: &str) -> Result<(), openssl::error::ErrorStack> {
    match host.parse::<IpAddr>() {
        Ok(ip) => ssl.param_mut().set_ip(ip),
        Err(_) => {
            ssl.set_hostname(host)?;
            ssl.param_mut().set_host(host)
        }
    }
}

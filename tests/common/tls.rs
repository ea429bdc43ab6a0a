//! Test certificates and PSK key files, made with OpenSSL: a CA, a
//! server certificate for `localhost` and 127.0.0.1, client certificates
//! with a chosen common name (valid or expired), in the directory layout
//! QEMU's `tls-creds-x509` and libnbd's `tls-certificates` read.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Name, X509};

/// The organization in every test certificate's name.
pub const ORGANIZATION: &str = "Storaged Test";

/// A certificate authority.
pub struct Ca {
    cert: X509,
    key: PKey<Private>,
}

/// What a certificate is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Server,
    Client,
}

fn new_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("key")
}

fn name(common_name: &str) -> X509Name {
    let mut name = X509Name::builder().expect("name");
    name.append_entry_by_text("C", "GB").expect("C");
    name.append_entry_by_text("O", ORGANIZATION).expect("O");
    name.append_entry_by_text("CN", common_name).expect("CN");
    name.build()
}

fn days_from_now(days: i64) -> Asn1Time {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    Asn1Time::from_unix(now + days * 86_400).expect("time")
}

impl Ca {
    pub fn new(common_name: &str) -> Ca {
        let key = new_key();
        let mut cert = X509::builder().expect("builder");
        cert.set_version(2).unwrap();
        let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
        cert.set_serial_number(&serial).unwrap();
        cert.set_subject_name(&name(common_name)).unwrap();
        cert.set_issuer_name(&name(common_name)).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&days_from_now(-1)).unwrap();
        cert.set_not_after(&days_from_now(365)).unwrap();
        cert.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        cert.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        Ca {
            cert: cert.build(),
            key,
        }
    }

    /// A certificate for `common_name` valid from `from` to `to` days from
    /// now, and its key, as PEM.
    pub fn issue(
        &self,
        common_name: &str,
        purpose: Purpose,
        from: i64,
        to: i64,
    ) -> (Vec<u8>, Vec<u8>) {
        let key = new_key();
        let mut cert = X509::builder().expect("builder");
        cert.set_version(2).unwrap();
        let serial = BigNum::from_u32(rand_serial())
            .unwrap()
            .to_asn1_integer()
            .unwrap();
        cert.set_serial_number(&serial).unwrap();
        cert.set_subject_name(&name(common_name)).unwrap();
        cert.set_issuer_name(self.cert.subject_name()).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&days_from_now(from)).unwrap();
        cert.set_not_after(&days_from_now(to)).unwrap();
        cert.append_extension(BasicConstraints::new().critical().build().unwrap())
            .unwrap();
        cert.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()
                .unwrap(),
        )
        .unwrap();
        let usage = match purpose {
            Purpose::Server => ExtendedKeyUsage::new().server_auth().build().unwrap(),
            Purpose::Client => ExtendedKeyUsage::new().client_auth().build().unwrap(),
        };
        cert.append_extension(usage).unwrap();
        if purpose == Purpose::Server {
            let context = cert.x509v3_context(Some(&self.cert), None);
            let san = SubjectAlternativeName::new()
                .dns("localhost")
                .ip("127.0.0.1")
                .build(&context)
                .unwrap();
            cert.append_extension(san).unwrap();
        }
        cert.sign(&self.key, MessageDigest::sha256()).unwrap();
        (
            cert.build().to_pem().unwrap(),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
    }

    /// A server's credentials directory: this CA, a server certificate.
    pub fn server_dir(&self, dir: &Path) {
        self.write_dir(dir, "server", "localhost", Purpose::Server, 365);
    }

    /// A client's credentials directory: this CA, a client certificate for
    /// `common_name` that expires in `days` (expired if negative).
    pub fn client_dir(&self, dir: &Path, common_name: &str, days: i64) {
        self.write_dir(dir, "client", common_name, Purpose::Client, days);
    }

    fn write_dir(&self, dir: &Path, side: &str, cn: &str, purpose: Purpose, days: i64) {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = self.issue(cn, purpose, days.min(0) - 30, days);
        std::fs::write(dir.join("ca-cert.pem"), self.cert.to_pem().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{side}-cert.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("{side}-key.pem")), key).unwrap();
    }
}

fn rand_serial() -> u32 {
    let mut bytes = [0; 4];
    openssl::rand::rand_bytes(&mut bytes).unwrap();
    u32::from_le_bytes(bytes) >> 1
}

/// A PSK key file (psktool's format) with a random 32-byte key per user.
pub fn psk_file(path: &Path, users: &[&str]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut text = String::new();
    for user in users {
        let mut key = [0; 32];
        openssl::rand::rand_bytes(&mut key).unwrap();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!("{user}:{hex}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Rewrites the PEM private key at `path` encrypted with `password`
/// (PKCS#8, AES-256-CBC), as `passwordid` expects.
pub fn encrypt_key(path: &Path, password: &[u8]) {
    let key = PKey::private_key_from_pem(&std::fs::read(path).unwrap()).unwrap();
    let cipher = openssl::symm::Cipher::aes_256_cbc();
    let pem = key
        .private_key_to_pem_pkcs8_passphrase(cipher, password)
        .unwrap();
    std::fs::write(path, pem).unwrap();
}

//! The user-creatable objects of `--object` and `object-add`: secrets,
//! iothreads, throttle groups, TLS credentials and authorization rules.
//!
//! Objects are checked here as QEMU checks them when it creates them (a
//! secret's data is read and decoded, a throttle group's limits validated,
//! TLS credential files must be readable) with QEMU's messages, and kept by
//! id for the parts of storaged that use them (the NBD server's TLS, the
//! throttle filter). This module owns the registry and the checks; how an
//! object is used is its user's business.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use schema::object::{
    AuthZListFileProperties, AuthZListProperties, IothreadProperties, ObjectKind, ObjectOptions,
    QCryptoSecretFormat, QCryptoTlsCredsEndpoint, SecretProperties, ThrottleLimits,
    TlsCredsPskProperties, TlsCredsX509Properties,
};
use schema::QmpError;

use block::error::os_error_text;

/// The most objects the daemon keeps.
pub const MAX_OBJECTS: usize = 4096;

/// The largest secret or authorization file read.
const MAX_OBJECT_FILE_BYTES: u64 = 1024 * 1024;

/// The largest value a throttle limit takes (QEMU's `THROTTLE_VALUE_MAX`).
const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;

/// QEMU's default `thread-pool-max`.
const DEFAULT_THREAD_POOL_MAX: i64 = 64;

/// The user name a PSK client presents when none is given.
const DEFAULT_PSK_USERNAME: &str = "qemu";

/// A created object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// The secret's bytes, decoded.
    Secret(Vec<u8>),
    Iothread(IothreadProperties),
    /// The validated limits (boxed: they are large).
    ThrottleGroup(Box<ThrottleLimits>),
    TlsCreds(TlsCreds),
    Authz(AuthZListProperties),
    /// `authz-simple`: the one identity allowed.
    AuthzSimple(String),
}

/// TLS credentials: where their files are and which side they serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCreds {
    pub kind: TlsCredsKind,
    pub endpoint: QCryptoTlsCredsEndpoint,
    pub dir: Option<String>,
    pub verify_peer: bool,
    pub priority: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsCredsKind {
    Anon,
    Psk { username: String },
    X509 { passwordid: Option<String> },
}

/// Every object, by id.
#[derive(Debug, Default)]
pub struct Objects {
    by_id: Mutex<BTreeMap<String, Object>>,
}

impl Objects {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Object>> {
        // Every update is a single insert or remove: never half done.
        self.by_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `object-add`: checks the object and keeps it.
    pub fn add(&self, options: ObjectOptions) -> Result<(), QmpError> {
        let id = options.id;
        if !is_identifier(&id) {
            return Err(QmpError::generic("Parameter 'id' expects an identifier"));
        }
        if self.lock().contains_key(&id) {
            return Err(duplicate(&id));
        }
        let object = self.create(options.kind)?;
        let mut objects = self.lock();
        if objects.contains_key(&id) {
            return Err(duplicate(&id));
        }
        if objects.len() >= MAX_OBJECTS {
            return Err(QmpError::generic(format!(
                "Too many objects (at most {MAX_OBJECTS})"
            )));
        }
        objects.insert(id, object);
        Ok(())
    }

    /// `object-del`.
    pub fn delete(&self, id: &str) -> Result<(), QmpError> {
        self.lock()
            .remove(id)
            .map(drop)
            .ok_or_else(|| QmpError::generic(format!("object '{id}' not found")))
    }

    /// The object with this id.
    pub fn get(&self, id: &str) -> Option<Object> {
        self.lock().get(id).cloned()
    }

    fn create(&self, kind: ObjectKind) -> Result<Object, QmpError> {
        Ok(match kind {
            ObjectKind::Secret(secret) => Object::Secret(self.load_secret(&secret)?),
            ObjectKind::Iothread(iothread) => Object::Iothread(check_iothread(iothread)?),
            ObjectKind::ThrottleGroup(group) => {
                let limits = group.effective_limits();
                check_throttle_limits(&limits)?;
                Object::ThrottleGroup(Box::new(limits))
            }
            ObjectKind::TlsCredsAnon(anon) => Object::TlsCreds(TlsCreds {
                kind: TlsCredsKind::Anon,
                endpoint: anon.endpoint.unwrap_or(QCryptoTlsCredsEndpoint::Client),
                dir: anon.dir,
                verify_peer: anon.verify_peer.unwrap_or(true),
                priority: anon.priority,
            }),
            ObjectKind::TlsCredsPsk(psk) => Object::TlsCreds(check_psk(psk)?),
            ObjectKind::TlsCredsX509(x509) => Object::TlsCreds(check_x509(x509)?),
            ObjectKind::AuthzSimple(simple) => Object::AuthzSimple(simple.identity),
            ObjectKind::AuthzList(list) => Object::Authz(list),
            ObjectKind::AuthzListfile(file) => Object::Authz(load_authz_file(&file)?),
        })
    }

    /// QEMU's `qcrypto_secret_load_data` and decoding.
    fn load_secret(&self, secret: &SecretProperties) -> Result<Vec<u8>, QmpError> {
        let raw = match (&secret.data, &secret.file) {
            (Some(_), Some(_)) => {
                return Err(QmpError::generic(
                    "'file' and 'data' are mutually exclusive",
                ))
            }
            (Some(data), None) => data.clone().into_bytes(),
            (None, Some(file)) => read_small_file(file).map_err(|reason| {
                QmpError::generic(format!(
                    "Unable to read {file}: Failed to open file \u{201c}{file}\u{201d}: {reason}"
                ))
            })?,
            (None, None) => {
                return Err(QmpError::generic(
                    "Either 'file' or 'data' must be provided",
                ))
            }
        };
        if let Some(keyid) = &secret.keyid {
            if !matches!(self.get(keyid), Some(Object::Secret(_))) {
                return Err(QmpError::generic(format!("No secret with id '{keyid}'")));
            }
            return Err(QmpError::generic(
                "Encrypted secrets ('keyid') are not supported by storaged",
            ));
        }
        match secret.format.unwrap_or_default() {
            QCryptoSecretFormat::Raw => Ok(raw),
            QCryptoSecretFormat::Base64 => decode_base64(&raw),
        }
    }
}

fn duplicate(id: &str) -> QmpError {
    QmpError::generic(format!(
        "attempt to add duplicate property '{id}' to object (type 'container')"
    ))
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn read_small_file(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| os_error_text(&error))?;
    let mut bytes = Vec::new();
    file.take(MAX_OBJECT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| os_error_text(&error))?;
    if bytes.len() as u64 > MAX_OBJECT_FILE_BYTES {
        return Err(format!("larger than {MAX_OBJECT_FILE_BYTES} bytes"));
    }
    Ok(bytes)
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// QEMU's `qbase64_decode`: only alphabet characters and `=` are allowed;
/// decoding is then as lenient as GLib's (padding optional, trailing bits
/// dropped).
fn decode_base64(input: &[u8]) -> Result<Vec<u8>, QmpError> {
    if input.contains(&0) {
        return Err(QmpError::generic(
            "Base64 data contains embedded NUL characters",
        ));
    }
    let mut bits: u32 = 0;
    let mut bit_count = 0;
    let mut output = Vec::with_capacity(input.len() / 4 * 3);
    for &byte in input {
        if byte == b'=' {
            continue;
        }
        let Some(value) = BASE64_ALPHABET.iter().position(|&c| c == byte) else {
            return Err(QmpError::generic("Base64 data contains invalid characters"));
        };
        bits = (bits << 6) | value as u32;
        bit_count += 6;
        if bit_count >= 8 {
            bit_count -= 8;
            output.push((bits >> bit_count) as u8);
            bits &= (1 << bit_count) - 1;
        }
    }
    Ok(output)
}

/// QEMU's iothread property checks.
fn check_iothread(iothread: IothreadProperties) -> Result<IothreadProperties, QmpError> {
    let members = [
        ("poll-max-ns", iothread.poll_max_ns),
        ("poll-grow", iothread.poll_grow),
        ("poll-shrink", iothread.poll_shrink),
        ("aio-max-batch", iothread.aio_max_batch),
        ("thread-pool-min", iothread.thread_pool_min),
        ("thread-pool-max", iothread.thread_pool_max),
    ];
    for (name, value) in members {
        if value.is_some_and(|value| value < 0) {
            return Err(QmpError::generic(format!(
                "{name} value must be in range [0, {}]",
                i64::MAX
            )));
        }
    }
    let min = iothread.thread_pool_min.unwrap_or(0);
    let max = iothread.thread_pool_max.unwrap_or(DEFAULT_THREAD_POOL_MAX);
    let limit = i64::from(i32::MAX);
    if min > max || max == 0 || min > limit || max > limit {
        return Err(QmpError::generic(
            "bad thread-pool-min/thread-pool-max values",
        ));
    }
    Ok(iothread)
}

/// One leaky bucket of a throttle configuration, as QEMU's
/// `throttle_is_valid` sees it (values converted as C converts them).
struct Bucket {
    avg: u64,
    max: u64,
    burst_length: u32,
}

/// QEMU's `throttle_limits_to_config` plus `throttle_is_valid`.
fn check_throttle_limits(limits: &ThrottleLimits) -> Result<(), QmpError> {
    // Negative values wrap as QEMU's unsigned fields do, and so fail the
    // range check below with QEMU's message.
    let value = |v: Option<i64>| v.unwrap_or(0) as u64;
    let burst = |name: &str, v: Option<i64>| match v {
        Some(length) if length > i64::from(u32::MAX) => Err(QmpError::generic(format!(
            "{name} value must be in the range [0, {}]",
            u32::MAX
        ))),
        Some(length) => Ok(length as u32),
        None => Ok(1),
    };
    // Order: QEMU's buckets (bps total/read/write, iops total/read/write).
    let buckets = [
        Bucket {
            avg: value(limits.bps_total),
            max: value(limits.bps_total_max),
            burst_length: burst("bps-total-max-length", limits.bps_total_max_length)?,
        },
        Bucket {
            avg: value(limits.bps_read),
            max: value(limits.bps_read_max),
            burst_length: burst("bps-read-max-length", limits.bps_read_max_length)?,
        },
        Bucket {
            avg: value(limits.bps_write),
            max: value(limits.bps_write_max),
            burst_length: burst("bps-write-max-length", limits.bps_write_max_length)?,
        },
        Bucket {
            avg: value(limits.iops_total),
            max: value(limits.iops_total_max),
            burst_length: burst("iops-total-max-length", limits.iops_total_max_length)?,
        },
        Bucket {
            avg: value(limits.iops_read),
            max: value(limits.iops_read_max),
            burst_length: burst("iops-read-max-length", limits.iops_read_max_length)?,
        },
        Bucket {
            avg: value(limits.iops_write),
            max: value(limits.iops_write_max),
            burst_length: burst("iops-write-max-length", limits.iops_write_max_length)?,
        },
    ];
    let [bps_total, bps_read, bps_write, ops_total, ops_read, ops_write] = &buckets;
    let conflict = |total: &Bucket, read: &Bucket, write: &Bucket, pick: fn(&Bucket) -> u64| {
        pick(total) != 0 && (pick(read) != 0 || pick(write) != 0)
    };
    if conflict(bps_total, bps_read, bps_write, |b| b.avg)
        || conflict(ops_total, ops_read, ops_write, |b| b.avg)
        || conflict(bps_total, bps_read, bps_write, |b| b.max)
        || conflict(ops_total, ops_read, ops_write, |b| b.max)
    {
        return Err(QmpError::generic(
            "bps/iops/max total values and read/write values cannot be used at the same time",
        ));
    }
    if value(limits.iops_size) != 0 && ops_total.avg == 0 && ops_read.avg == 0 && ops_write.avg == 0
    {
        return Err(QmpError::generic(
            "iops size requires an iops value to be set",
        ));
    }
    for bucket in &buckets {
        if bucket.avg > THROTTLE_VALUE_MAX || bucket.max > THROTTLE_VALUE_MAX {
            return Err(QmpError::generic(format!(
                "bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]"
            )));
        }
        if bucket.burst_length == 0 {
            return Err(QmpError::generic("the burst length cannot be 0"));
        }
        if bucket.burst_length > 1 && bucket.max == 0 {
            return Err(QmpError::generic("burst length set without burst rate"));
        }
        if bucket.max != 0 && u64::from(bucket.burst_length) > THROTTLE_VALUE_MAX / bucket.max {
            return Err(QmpError::generic(
                "burst length too high for this burst rate",
            ));
        }
        if bucket.max != 0 && bucket.avg == 0 {
            return Err(QmpError::generic(
                "bps_max/iops_max require corresponding bps/iops values",
            ));
        }
        if bucket.max != 0 && bucket.max < bucket.avg {
            return Err(QmpError::generic(
                "bps_max/iops_max cannot be lower than bps/iops",
            ));
        }
    }
    Ok(())
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
fn check_psk(psk: TlsCredsPskProperties) -> Result<TlsCreds, QmpError> {
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
fn check_x509(x509: TlsCredsX509Properties) -> Result<TlsCreds, QmpError> {
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

/// `authz-listfile`: the rules come from a JSON file holding an
/// `authz-list`'s properties.
fn load_authz_file(file: &AuthZListFileProperties) -> Result<AuthZListProperties, QmpError> {
    let path = &file.filename;
    let bytes = read_small_file(path).map_err(|reason| {
        QmpError::generic(format!(
            "Failed to open file \u{201c}{path}\u{201d}: {reason}"
        ))
    })?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| QmpError::generic(format!("{}: {error}", Path::new(path).display())))?;
    schema::from_json(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn add(objects: &Objects, arguments: serde_json::Value) -> Result<(), String> {
        let options: ObjectOptions = schema::from_json(arguments).map_err(|e| e.desc)?;
        objects.add(options).map_err(|e| e.desc)
    }

    #[test]
    fn secrets_are_decoded_and_ids_unique() {
        let objects = Objects::new();
        add(
            &objects,
            json!({"qom-type": "secret", "id": "s0", "data": "aGVsbG8=", "format": "base64"}),
        )
        .expect("valid secret");
        assert_eq!(objects.get("s0"), Some(Object::Secret(b"hello".to_vec())));
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "secret", "id": "s0", "data": "x"})
            ),
            Err("attempt to add duplicate property 's0' to object (type 'container')".into())
        );
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "secret", "id": "s1", "data": "a b", "format": "base64"})
            ),
            Err("Base64 data contains invalid characters".into())
        );
        assert_eq!(
            add(&objects, json!({"qom-type": "secret", "id": "s1"})),
            Err("Either 'file' or 'data' must be provided".into())
        );
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "secret", "id": "9x", "data": "x"})
            ),
            Err("Parameter 'id' expects an identifier".into())
        );
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "secret", "id": "s2", "data": "x", "keyid": "nope"})
            ),
            Err("No secret with id 'nope'".into())
        );
    }

    #[test]
    fn secret_files_are_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "hunter2").expect("write");
        let objects = Objects::new();
        add(
            &objects,
            json!({"qom-type": "secret", "id": "s", "file": path}),
        )
        .expect("valid secret");
        assert_eq!(objects.get("s"), Some(Object::Secret(b"hunter2".to_vec())));
        assert_eq!(
            add(&objects, json!({"qom-type": "secret", "id": "t", "file": "/nonexistent"})),
            Err("Unable to read /nonexistent: Failed to open file \u{201c}/nonexistent\u{201d}: No such file or directory".into())
        );
    }

    #[test]
    fn delete_unknown_object() {
        let objects = Objects::new();
        assert_eq!(
            objects.delete("x").map_err(|e| e.desc),
            Err("object 'x' not found".into())
        );
    }

    #[test]
    fn throttle_limits_are_checked_like_qemu() {
        let objects = Objects::new();
        let check = |limits: serde_json::Value| {
            add(
                &objects,
                json!({"qom-type": "throttle-group", "id": "tg", "limits": limits}),
            )
            .and_then(|()| objects.delete("tg").map_err(|e| e.desc))
        };
        assert_eq!(check(json!({"iops-total": 100})), Ok(()));
        assert_eq!(
            check(json!({"iops-total": 100, "iops-read": 5})),
            Err(
                "bps/iops/max total values and read/write values cannot be used at the same time"
                    .into()
            )
        );
        assert_eq!(
            check(json!({"iops-total": -1})),
            Err("bps/iops/max values must be within [0, 1000000000000000]".into())
        );
        assert_eq!(
            check(json!({"bps-total-max": 100})),
            Err("bps_max/iops_max require corresponding bps/iops values".into())
        );
        assert_eq!(
            check(json!({"iops-total": 100, "iops-total-max": 50})),
            Err("bps_max/iops_max cannot be lower than bps/iops".into())
        );
        assert_eq!(
            check(json!({"iops-total": 100, "iops-total-max": 200, "iops-total-max-length": 0})),
            Err("the burst length cannot be 0".into())
        );
        assert_eq!(
            check(json!({"iops-total": 100, "iops-total-max-length": 5})),
            Err("burst length set without burst rate".into())
        );
        assert_eq!(
            check(json!({"iops-size": 100})),
            Err("iops size requires an iops value to be set".into())
        );
    }

    #[test]
    fn iothread_ranges() {
        let objects = Objects::new();
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "iothread", "id": "io", "poll-max-ns": -1})
            ),
            Err("poll-max-ns value must be in range [0, 9223372036854775807]".into())
        );
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "iothread", "id": "io", "thread-pool-min": 5, "thread-pool-max": 2})
            ),
            Err("bad thread-pool-min/thread-pool-max values".into())
        );
        add(&objects, json!({"qom-type": "iothread", "id": "io"})).expect("valid iothread");
    }

    #[test]
    fn tls_credentials_need_their_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dir_text = dir.path().to_str().expect("utf-8 path");
        let objects = Objects::new();
        assert_eq!(
            add(&objects, json!({"qom-type": "tls-creds-x509", "id": "t"})),
            Err("Missing 'dir' property value".into())
        );
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "tls-creds-psk", "id": "t", "dir": dir_text, "endpoint": "server"})
            ),
            Err(format!(
                "Unable to access credentials {dir_text}/keys.psk: No such file or directory"
            ))
        );
        std::fs::write(dir.path().join("keys.psk"), "alice:0123\n").expect("write");
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "tls-creds-psk", "id": "t", "dir": dir_text})
            ),
            Err(format!(
                "Username qemu not found in PSK file {dir_text}/keys.psk"
            ))
        );
        add(
            &objects,
            json!({"qom-type": "tls-creds-psk", "id": "t", "dir": dir_text, "username": "alice"}),
        )
        .expect("valid client credentials");
    }

    #[test]
    fn base64_is_lenient_about_padding() {
        assert_eq!(
            decode_base64(b"aGVsbG8").map_err(|e| e.desc),
            Ok(b"hello".to_vec())
        );
        assert_eq!(decode_base64(b"").map_err(|e| e.desc), Ok(Vec::new()));
    }
}

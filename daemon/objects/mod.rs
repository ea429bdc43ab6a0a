//! The user-creatable objects of `--object` and `object-add`: secrets,
//! iothreads, throttle groups, TLS credentials and authorization rules.
//!
//! Objects are checked as QEMU checks them when it creates them (a
//! secret's data is read and decoded, a throttle group's limits validated,
//! TLS credential files must be readable), with QEMU's messages, and kept
//! by id for the parts of storaged that use them (the NBD server's TLS,
//! exports' iothreads, throttle nodes). This module owns the registry and
//! the checks of the small types; `secret` and `tls` check theirs, the
//! block crate throttle groups'. How an object is used is its user's
//! business; [`qom`] shows them to `qom-list`, `qom-get` and `qom-set`.
//!
//! Throttle groups are live shared handles: the graph finds them by id
//! through [`ObjectLookup`] when a `throttle` node opens, and a group
//! that nodes use cannot be deleted.

mod authz;
pub mod qom;
pub mod qom_types;
mod secret;
mod tls;

pub use authz::Authz;
pub use tls::TlsCreds;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use schema::object::{IothreadProperties, ObjectKind, ObjectOptions};
use schema::QmpError;

use block::error::os_error_text;
use block::open::ObjectLookup;
use block::throttle::{ThrottleConfig, ThrottleGroup};
use exports::iothread::{IoThread, IoThreadPoll};

/// The most objects the daemon keeps.
pub const MAX_OBJECTS: usize = 4096;

/// The largest secret, key or authorization file read.
const MAX_OBJECT_FILE_BYTES: u64 = 1024 * 1024;

/// QEMU's default `thread-pool-max`.
const DEFAULT_THREAD_POOL_MAX: i64 = 64;

/// A created object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// The secret's bytes, decoded.
    Secret(Vec<u8>),
    /// The running thread.
    Iothread(Arc<IoThread>),
    /// The group the `throttle` nodes that name it share.
    ThrottleGroup(Arc<ThrottleGroup>),
    TlsCreds(TlsCreds),
    /// `authz-simple`, `authz-list` or `authz-listfile`.
    Authz(Arc<Authz>),
}

/// An object and the type it was created as (`qom-type`).
#[derive(Debug, Clone)]
struct Entry {
    qom_type: &'static str,
    object: Object,
}

/// Every object, by id.
#[derive(Debug, Default)]
pub struct Objects {
    by_id: Mutex<BTreeMap<String, Entry>>,
}

impl Objects {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
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
        let qom_type = options.kind.name();
        let object = self.create(&id, options.kind)?;
        let mut objects = self.lock();
        if objects.contains_key(&id) {
            return Err(duplicate(&id));
        }
        if objects.len() >= MAX_OBJECTS {
            return Err(QmpError::generic(format!(
                "Too many objects (at most {MAX_OBJECTS})"
            )));
        }
        objects.insert(id, Entry { qom_type, object });
        Ok(())
    }

    /// `object-del`: refused while something uses the object (a throttle
    /// group that nodes use), as QEMU's `can_be_deleted`.
    pub fn delete(&self, id: &str) -> Result<(), QmpError> {
        let mut objects = self.lock();
        let entry = objects
            .get(id)
            .ok_or_else(|| QmpError::generic(format!("object '{id}' not found")))?;
        if let Object::ThrottleGroup(group) = &entry.object {
            // Retired under the registry's lock, so no node joins the
            // group between the check and the removal.
            if !group.retire() {
                return Err(QmpError::generic(format!(
                    "object '{id}' is in use, can not be deleted"
                )));
            }
        }
        objects.remove(id);
        Ok(())
    }

    /// The object with this id.
    pub fn get(&self, id: &str) -> Option<Object> {
        self.lock().get(id).map(|entry| entry.object.clone())
    }

    /// Every object's id and type, by id.
    pub fn types(&self) -> Vec<(String, &'static str)> {
        self.lock()
            .iter()
            .map(|(id, entry)| (id.clone(), entry.qom_type))
            .collect()
    }

    fn create(&self, id: &str, kind: ObjectKind) -> Result<Object, QmpError> {
        let secret_bytes = |id: &str| match self.get(id) {
            Some(Object::Secret(bytes)) => Some(bytes),
            _ => None,
        };
        Ok(match kind {
            ObjectKind::MainLoop(_) => {
                return Err(QmpError::generic(
                    "Object type 'main-loop' is not supported by storaged: its event loops are \
                 tokio's, tuned by iothread objects",
                ))
            }
            ObjectKind::ThreadContext(_) => {
                return Err(QmpError::generic(
                    "Object type 'thread-context' is not supported by storaged: nothing in it \
                 creates threads on an object's behalf",
                ))
            }
            ObjectKind::Secret(properties) => {
                Object::Secret(secret::load(&properties, secret_bytes)?)
            }
            ObjectKind::Iothread(iothread) => Object::Iothread(start_iothread(id, iothread)?),
            ObjectKind::ThrottleGroup(group) => {
                let config = ThrottleConfig::from_properties(&group)?;
                Object::ThrottleGroup(ThrottleGroup::new(id, config))
            }
            ObjectKind::TlsCredsAnon(anon) => Object::TlsCreds(tls::anon(anon)?),
            ObjectKind::TlsCredsPsk(psk) => Object::TlsCreds(tls::psk(psk)?),
            ObjectKind::TlsCredsX509(x509) => {
                let password = |id: &str| {
                    secret_bytes(id)
                        .ok_or_else(|| QmpError::generic(format!("No secret with id '{id}'")))
                };
                Object::TlsCreds(tls::x509(x509, password)?)
            }
            ObjectKind::AuthzSimple(simple) => {
                Object::Authz(Arc::new(Authz::Simple(simple.identity)))
            }
            ObjectKind::AuthzList(list) => Object::Authz(Arc::new(Authz::List(list))),
            ObjectKind::AuthzListfile(file) => Object::Authz(Arc::new(Authz::list_file(file)?)),
        })
    }
}

/// Drivers find throttle groups and TLS credentials here by id (the
/// objects they use).
impl ObjectLookup for Objects {
    fn object(&self, id: &str) -> Option<Arc<dyn Any + Send + Sync>> {
        match self.get(id)? {
            Object::ThrottleGroup(group) => Some(group),
            Object::TlsCreds(TlsCreds { sessions, .. }) => Some(sessions),
            _ => None,
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

/// A file an object reads, at most [`MAX_OBJECT_FILE_BYTES`]; the error is
/// the OS's text.
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

/// Checks an iothread's properties and starts its thread.
fn start_iothread(id: &str, properties: IothreadProperties) -> Result<Arc<IoThread>, QmpError> {
    let properties = check_iothread(properties)?;
    let unsigned = |value: Option<i64>, default: u64| value.map_or(default, i64::unsigned_abs);
    let defaults = IoThreadPoll::default();
    let poll = IoThreadPoll {
        poll_max_ns: unsigned(properties.poll_max_ns, defaults.poll_max_ns),
        poll_grow: unsigned(properties.poll_grow, defaults.poll_grow),
        poll_shrink: unsigned(properties.poll_shrink, defaults.poll_shrink),
        aio_max_batch: unsigned(properties.aio_max_batch, defaults.aio_max_batch),
    };
    IoThread::start(id, poll)
        .map_err(|e| QmpError::generic(format!("Failed to create iothread: {}", os_error_text(&e))))
}

/// The iothreads, in id order (`query-iothreads`).
impl Objects {
    pub fn iothreads(&self) -> Vec<Arc<IoThread>> {
        let objects = self.lock();
        let threads = objects.values().filter_map(|entry| match &entry.object {
            Object::Iothread(thread) => Some(Arc::clone(thread)),
            _ => None,
        });
        threads.collect()
    }
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
    fn throttle_groups_are_shared_and_deleted_only_when_unused() {
        let objects = Objects::new();
        assert_eq!(
            add(
                &objects,
                json!({"qom-type": "throttle-group", "id": "tg", "limits": {"iops-total": 100, "iops-read": 5}})
            ),
            Err(
                "bps/iops/max total values and read/write values cannot be used at the same time"
                    .into()
            )
        );
        add(
            &objects,
            json!({"qom-type": "throttle-group", "id": "tg", "x-iops-total": 100}),
        )
        .expect("valid group");
        let group = objects
            .object("tg")
            .and_then(|object| object.downcast::<ThrottleGroup>().ok())
            .expect("a throttle group");
        let member = group.join().expect("joins");
        assert_eq!(
            objects.delete("tg").map_err(|e| e.desc),
            Err("object 'tg' is in use, can not be deleted".into())
        );
        assert!(objects.get("tg").is_some());
        drop(member);
        objects.delete("tg").expect("unused");
        assert!(objects.object("tg").is_none());
        assert!(group.join().is_none(), "a deleted group takes no node");
        // Drivers find only the objects they use.
        add(
            &objects,
            json!({"qom-type": "secret", "id": "s", "data": "x"}),
        )
        .expect("secret");
        assert!(objects.object("s").is_none());
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
}

//! The values `qom-get` reads and `qom-set` changes on objects other than
//! throttle groups: what the object was created with, with QEMU's
//! defaults for what was left out, and for an iothread its polling
//! properties in force. An iothread's polling (`poll-max-ns`,
//! `poll-grow`, `poll-shrink`, `aio-max-batch`) and thread pool bounds,
//! an `authz-simple`'s identity and an `authz-list`'s policy and rules can
//! be set while they are in use. A secret's and TLS credentials'
//! properties are set as QEMU 10 sets them once the object is complete:
//! the value is checked and kept (`qom-get` reads it back), but what the
//! object loaded when it was created (the secret's bytes, the
//! credentials' files and settings) stays as it was.

use schema::object::{IothreadProperties, ObjectKind, QCryptoSecretFormat};
use schema::QmpError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value as Json};

use super::{iothread_poll, Object, DEFAULT_THREAD_POOL_MAX};

/// The value of `property` of an object created as `kind`; `None` when
/// storaged does not read it.
pub fn read(object: &Object, kind: &ObjectKind, property: &str) -> Option<Json> {
    let text = |value: &Option<String>| json!(value.as_deref().unwrap_or(""));
    let endpoint = |value: Option<schema::object::QCryptoTlsCredsEndpoint>| {
        value.map_or(json!("client"), |endpoint| json!(endpoint))
    };
    Some(match (kind, property) {
        (ObjectKind::Iothread(properties), _) => {
            let Object::Iothread(thread) = object else {
                return None;
            };
            let poll = thread.poll();
            match property {
                "poll-max-ns" => json!(poll.poll_max_ns),
                "poll-grow" => json!(poll.poll_grow),
                "poll-shrink" => json!(poll.poll_shrink),
                "aio-max-batch" => json!(poll.aio_max_batch),
                "thread-pool-min" => json!(properties.thread_pool_min.unwrap_or(0)),
                "thread-pool-max" => {
                    json!(properties
                        .thread_pool_max
                        .unwrap_or(DEFAULT_THREAD_POOL_MAX))
                }
                _ => return None,
            }
        }
        (ObjectKind::Secret(secret), _) => match property {
            "data" => text(&secret.data),
            "file" => text(&secret.file),
            "keyid" => text(&secret.keyid),
            "iv" => text(&secret.iv),
            "format" => json!(secret.format.unwrap_or(QCryptoSecretFormat::Raw)),
            _ => return None,
        },
        (ObjectKind::TlsCredsAnon(creds), "dir") => text(&creds.dir),
        (ObjectKind::TlsCredsAnon(creds), "endpoint") => endpoint(creds.endpoint),
        (ObjectKind::TlsCredsAnon(creds), "verify-peer") => {
            json!(creds.verify_peer.unwrap_or(true))
        }
        (ObjectKind::TlsCredsAnon(creds), "priority") => text(&creds.priority),
        (ObjectKind::TlsCredsPsk(creds), "dir") => text(&creds.dir),
        (ObjectKind::TlsCredsPsk(creds), "endpoint") => endpoint(creds.endpoint),
        (ObjectKind::TlsCredsPsk(creds), "verify-peer") => json!(creds.verify_peer.unwrap_or(true)),
        (ObjectKind::TlsCredsPsk(creds), "priority") => text(&creds.priority),
        (ObjectKind::TlsCredsPsk(creds), "username") => text(&creds.username),
        (ObjectKind::TlsCredsX509(creds), "dir") => text(&creds.dir),
        (ObjectKind::TlsCredsX509(creds), "endpoint") => endpoint(creds.endpoint),
        (ObjectKind::TlsCredsX509(creds), "verify-peer") => {
            json!(creds.verify_peer.unwrap_or(true))
        }
        (ObjectKind::TlsCredsX509(creds), "priority") => text(&creds.priority),
        (ObjectKind::TlsCredsX509(creds), "sanity-check") => {
            json!(creds.sanity_check.unwrap_or(true))
        }
        (ObjectKind::TlsCredsX509(creds), "passwordid") => text(&creds.passwordid),
        (ObjectKind::AuthzSimple(_) | ObjectKind::AuthzList(_), _) => {
            let Object::Authz(authz) = object else {
                return None;
            };
            return authz.get(property);
        }
        (ObjectKind::AuthzListfile(file), "filename") => json!(file.filename),
        (ObjectKind::AuthzListfile(file), "refresh") => json!(file.refresh.unwrap_or(true)),
        _ => return None,
    })
}

/// Sets `property` of an object to `value`, with `object-add`'s checks
/// and messages; `None` when storaged cannot set it.
pub fn write(
    object: &Object,
    kind: &mut ObjectKind,
    property: &str,
    value: Json,
) -> Option<Result<(), QmpError>> {
    match kind {
        ObjectKind::Secret(properties) => return Some(record(properties, property, value)),
        ObjectKind::TlsCredsAnon(properties) => return Some(record(properties, property, value)),
        ObjectKind::TlsCredsPsk(properties) => return Some(record(properties, property, value)),
        ObjectKind::TlsCredsX509(properties) => return Some(record(properties, property, value)),
        _ => {}
    }
    if let Object::Authz(authz) = object {
        return match authz.set(property, &value) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(error) => Some(Err(error)),
        };
    }
    let (Object::Iothread(thread), ObjectKind::Iothread(properties)) = (object, kind) else {
        return None;
    };
    let mut changed = properties.clone();
    let member = match property {
        "poll-max-ns" => &mut changed.poll_max_ns,
        "poll-grow" => &mut changed.poll_grow,
        "poll-shrink" => &mut changed.poll_shrink,
        "aio-max-batch" => &mut changed.aio_max_batch,
        "thread-pool-min" => &mut changed.thread_pool_min,
        "thread-pool-max" => &mut changed.thread_pool_max,
        _ => return None,
    };
    let Some(number) = value.as_i64() else {
        return Some(Err(QmpError::generic(format!(
            "Invalid parameter type for '{property}', expected: integer"
        ))));
    };
    *member = Some(number);
    Some(apply(thread, properties, changed))
}

/// Replaces the member `property` of an object's recorded properties
/// with `value`, read as `object-add` reads it.
fn record<P: Serialize + DeserializeOwned>(
    properties: &mut P,
    property: &str,
    value: Json,
) -> Result<(), QmpError> {
    let members =
        serde_json::to_value(&*properties).map_err(|e| QmpError::generic(e.to_string()))?;
    let Json::Object(mut members) = members else {
        return Err(QmpError::generic("object properties are not an object"));
    };
    // Members left out serialize as null, which QMP refuses.
    members.retain(|_, member| !member.is_null());
    members.insert(property.to_owned(), value);
    *properties = schema::from_json(Json::Object(members))?;
    Ok(())
}

fn apply(
    thread: &exports::iothread::IoThread,
    properties: &mut IothreadProperties,
    changed: IothreadProperties,
) -> Result<(), QmpError> {
    let poll = iothread_poll(changed.clone())?;
    thread.set_poll(poll);
    *properties = changed;
    Ok(())
}

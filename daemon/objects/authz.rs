//! Authorization objects (`authz-simple`, `authz-list`,
//! `authz-listfile`): whether an identity (a TLS client's distinguished
//! name or PSK user name) is allowed, decided as QEMU's `qauthz_is_allowed`
//! does. An `authz-listfile` with `refresh` re-reads its file when the
//! file changes (checked at each decision, where QEMU uses inotify); a
//! file that no longer loads denies everyone until it is fixed.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, MutexGuard, RwLock};

use schema::object::{
    AuthZListFileProperties, AuthZListProperties, QAuthZListFormat, QAuthZListPolicy,
};
use schema::QmpError;

use super::read_small_file;

/// An authorization object.
#[derive(Debug)]
pub enum Authz {
    /// The one identity allowed (`qom-set` may change it).
    Simple(RwLock<String>),
    /// The rules (`qom-set` may change the policy and the rules).
    List(RwLock<AuthZListProperties>),
    ListFile(ListFile),
}

/// Objects are equal only to themselves.
impl PartialEq for Authz {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Authz {}

/// An `authz-listfile`: its file, and the rules last read from it.
#[derive(Debug)]
pub struct ListFile {
    filename: String,
    refresh: bool,
    loaded: Mutex<Loaded>,
}

/// Rules as last read, and the file's identity then (modification time,
/// size, inode): a change of any means a new file.
#[derive(Debug)]
struct Loaded {
    rules: Result<AuthZListProperties, String>,
    stamp: Option<(i64, i64, u64, u64)>,
}

impl Authz {
    /// `authz-listfile`: the file must load now.
    pub fn list_file(properties: AuthZListFileProperties) -> Result<Authz, QmpError> {
        let stamp = stamp(&properties.filename);
        let rules = load_file(&properties.filename).map_err(QmpError::generic)?;
        Ok(Authz::ListFile(ListFile {
            refresh: properties.refresh.unwrap_or(true),
            filename: properties.filename,
            loaded: Mutex::new(Loaded {
                rules: Ok(rules),
                stamp,
            }),
        }))
    }

    /// Whether `identity` is allowed; an error says why nothing can be
    /// decided (a list file that does not load).
    pub fn is_allowed(&self, identity: &str) -> Result<bool, String> {
        match self {
            Authz::Simple(allowed) => Ok(*read(allowed) == identity),
            Authz::List(list) => Ok(list_allows(&read(list), identity)),
            Authz::ListFile(file) => {
                let loaded = file.current();
                match &loaded.rules {
                    Ok(list) => Ok(list_allows(list, identity)),
                    Err(reason) => Err(reason.clone()),
                }
            }
        }
    }
}

/// A changeable part of an authorization object (every change replaces
/// it whole).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

impl Authz {
    pub fn simple(identity: String) -> Authz {
        Authz::Simple(RwLock::new(identity))
    }

    pub fn list(list: AuthZListProperties) -> Authz {
        Authz::List(RwLock::new(list))
    }

    /// `qom-get` of an `authz-simple`'s identity or an `authz-list`'s
    /// policy or rules as they are now; `None` for any other property.
    pub fn get(&self, property: &str) -> Option<serde_json::Value> {
        Some(match (self, property) {
            (Authz::Simple(identity), "identity") => serde_json::json!(*read(identity)),
            (Authz::List(list), "policy") => {
                serde_json::json!(read(list).policy.unwrap_or_default())
            }
            (Authz::List(list), "rules") => {
                serde_json::json!(read(list).rules.clone().unwrap_or_default())
            }
            _ => return None,
        })
    }

    /// `qom-set` of an `authz-simple`'s identity or an `authz-list`'s
    /// policy or rules, in force for the next check; `false` for any
    /// other property.
    pub fn set(&self, property: &str, value: &serde_json::Value) -> Result<bool, QmpError> {
        match (self, property) {
            (Authz::Simple(identity), "identity") => {
                let text: String = property_value(property, value)?;
                *identity.write().unwrap_or_else(|e| e.into_inner()) = text;
            }
            (Authz::List(list), "policy") => {
                let policy = property_value(property, value)?;
                list.write().unwrap_or_else(|e| e.into_inner()).policy = Some(policy);
            }
            (Authz::List(list), "rules") => {
                let rules = property_value(property, value)?;
                list.write().unwrap_or_else(|e| e.into_inner()).rules = Some(rules);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Reads `value` as property `name` of its type, with QEMU's messages.
fn property_value<T: serde::de::DeserializeOwned>(
    name: &str,
    value: &serde_json::Value,
) -> Result<T, QmpError> {
    let mut wrapped = serde_json::Map::new();
    wrapped.insert(name.to_owned(), value.clone());
    let mut map: std::collections::BTreeMap<String, T> =
        schema::from_json(serde_json::Value::Object(wrapped))?;
    map.remove(name)
        .ok_or_else(|| QmpError::generic(format!("Parameter '{name}' is missing")))
}

impl ListFile {
    /// The rules, re-read first if the file changed and `refresh` is on.
    fn current(&self) -> MutexGuard<'_, Loaded> {
        // Each update replaces both fields at once.
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if self.refresh {
            let now = stamp(&self.filename);
            if now != loaded.stamp {
                *loaded = Loaded {
                    rules: load_file(&self.filename),
                    stamp: now,
                };
                if let Err(reason) = &loaded.rules {
                    tracing::warn!("authz-listfile {}: {reason}", self.filename);
                }
            }
        }
        loaded
    }
}

fn stamp(path: &str) -> Option<(i64, i64, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.mtime(), meta.mtime_nsec(), meta.size(), meta.ino()))
}

/// The rules of an `authz-listfile`: a JSON object of `authz-list`'s
/// properties.
fn load_file(path: &str) -> Result<AuthZListProperties, String> {
    let bytes = read_small_file(path)
        .map_err(|reason| format!("Failed to open file \u{201c}{path}\u{201d}: {reason}"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|error| format!("{path}: {error}"))?;
    schema::from_json(json).map_err(|error: QmpError| error.desc)
}

/// QEMU's `qauthz_list_is_allowed`: the first rule that matches decides,
/// else the list's policy (deny by default).
fn list_allows(list: &AuthZListProperties, identity: &str) -> bool {
    let rules = list.rules.as_deref().unwrap_or_default();
    let policy = rules
        .iter()
        .find(|rule| match rule.format.unwrap_or_default() {
            QAuthZListFormat::Exact => rule.r#match == identity,
            QAuthZListFormat::Glob => glob_matches(&rule.r#match, identity),
        })
        .map_or(list.policy.unwrap_or_default(), |rule| rule.policy);
    policy == QAuthZListPolicy::Allow
}

/// `fnmatch(pattern, text, 0)`, as QEMU matches glob rules.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (Ok(pattern), Ok(text)) = (CString::new(pattern), CString::new(text)) else {
        return false;
    };
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    unsafe { libc::fnmatch(pattern.as_ptr(), text.as_ptr(), 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::object::QAuthZListRule;

    fn rule(pattern: &str, policy: QAuthZListPolicy, glob: bool) -> QAuthZListRule {
        QAuthZListRule {
            r#match: pattern.to_owned(),
            policy,
            format: glob.then_some(QAuthZListFormat::Glob),
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let list = Authz::list(AuthZListProperties {
            policy: Some(QAuthZListPolicy::Allow),
            rules: Some(vec![
                rule("CN=bob,O=Acme", QAuthZListPolicy::Deny, false),
                rule("CN=*,O=Evil", QAuthZListPolicy::Deny, true),
            ]),
        });
        assert_eq!(list.is_allowed("CN=alice,O=Acme"), Ok(true));
        assert_eq!(list.is_allowed("CN=bob,O=Acme"), Ok(false));
        assert_eq!(list.is_allowed("CN=eve,O=Evil"), Ok(false));
        // Exact rules do not glob.
        let exact = Authz::list(AuthZListProperties {
            policy: None,
            rules: Some(vec![rule("CN=*", QAuthZListPolicy::Allow, false)]),
        });
        assert_eq!(exact.is_allowed("CN=x"), Ok(false));
        assert_eq!(exact.is_allowed("CN=*"), Ok(true));
        assert_eq!(Authz::simple("u".into()).is_allowed("u"), Ok(true));
        assert_eq!(Authz::simple("u".into()).is_allowed("v"), Ok(false));
    }

    #[test]
    fn list_files_are_read_again_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl.json");
        let write = |json: &str| {
            // A new file (another inode): a change even within one tick.
            let tmp = dir.path().join("acl.tmp");
            std::fs::write(&tmp, json).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        write(r#"{"policy": "deny", "rules": [{"match": "alice", "policy": "allow"}]}"#);
        let authz = Authz::list_file(AuthZListFileProperties {
            filename: path.to_str().unwrap().to_owned(),
            refresh: None,
        })
        .unwrap();
        assert_eq!(authz.is_allowed("alice"), Ok(true));
        assert_eq!(authz.is_allowed("bob"), Ok(false));
        write(r#"{"policy": "deny", "rules": [{"match": "bob", "policy": "allow"}]}"#);
        assert_eq!(authz.is_allowed("alice"), Ok(false));
        assert_eq!(authz.is_allowed("bob"), Ok(true));
        write("{");
        assert!(authz.is_allowed("bob").is_err());
    }
}

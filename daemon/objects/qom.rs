//! The QOM tree as `qom-list`, `qom-get` and `qom-set` see it: QSD's root
//! container with its `backend`, `objects` and `chardevs` containers, the
//! objects by id under `/objects`, the chardevs under `/chardevs`, each
//! with the properties QSD lists for its type.
//!
//! Paths resolve as QEMU's `object_resolve_path` resolves them: absolute
//! (`/objects/tg0`, empty components skipped) or partial (`tg0`,
//! `objects/tg0`: the one place in the tree they lead to; several places
//! make the path ambiguous). Every property is listed. `type` and the
//! children of containers read everywhere; a throttle group's `limits`
//! and `x-` members read, and its `limits` are set while its nodes run;
//! other objects' properties are [`super::qom_properties`]'; a socket
//! chardev's `connected` and `addr` read (chardevs' properties are read
//! only, as in QEMU). Reading or setting any other property is refused
//! with a message that says so, rather than answered wrongly.

use schema::object::{ObjectPropertyInfo, ThrottleLimits};
use schema::{ErrorClass, QmpError};
use serde::Deserialize;
use serde_json::Value as Json;

use super::qom_types::class_name;
use super::{Object, Objects};

/// The daemon's objects and chardevs, as a tree.
pub struct Qom<'a> {
    pub objects: &'a Objects,
    pub chardevs: &'a [QomChardev],
}

/// A chardev as the tree shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QomChardev {
    pub id: String,
    pub qom_type: &'static str,
    /// A socket's `connected` and `addr` (QEMU's `SocketAddress`).
    pub socket: Option<(bool, Json)>,
}

/// A place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Root,
    Container(Container),
    /// An object or a chardev: its id, its type.
    Leaf {
        id: String,
        qom_type: &'static str,
        parent: Container,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Backend,
    Objects,
    Chardevs,
}

impl Container {
    fn name(self) -> &'static str {
        match self {
            Container::Backend => "backend",
            Container::Objects => "objects",
            Container::Chardevs => "chardevs",
        }
    }
}

/// The properties each class has besides `type` and its children, with
/// their QOM types, as QSD 10 lists them (a class's own after its
/// parent's).
pub(super) fn own_properties(qom_type: &str) -> Vec<(String, &'static str)> {
    let named = |list: &[(&str, &'static str)]| {
        list.iter()
            .map(|&(name, kind)| (name.to_owned(), kind))
            .collect::<Vec<_>>()
    };
    let event_loop: &[(&str, &'static str)] = &[
        ("thread-pool-min", "int"),
        ("aio-max-batch", "int"),
        ("thread-pool-max", "int"),
    ];
    let secret: &[(&str, &'static str)] = &[
        ("iv", "string"),
        ("keyid", "string"),
        ("format", "QCryptoSecretFormat"),
    ];
    let tls: &[(&str, &'static str)] = &[
        ("endpoint", "QCryptoTLSCredsEndpoint"),
        ("dir", "string"),
        ("verify-peer", "bool"),
        ("priority", "string"),
    ];
    match qom_type {
        "throttle-group" => std::iter::once(("limits".to_owned(), "ThrottleLimits"))
            .chain(
                ThrottleLimits::NAMES
                    .iter()
                    .map(|name| (format!("x-{name}"), "int")),
            )
            .collect(),
        "secret_common" => named(secret),
        "secret" => named(&[secret, &[("file", "string"), ("data", "string")]].concat()),
        "event-loop-base" => named(event_loop),
        "iothread" => named(
            &[
                event_loop,
                &[
                    ("poll-max-ns", "int"),
                    ("poll-grow", "int"),
                    ("poll-shrink", "int"),
                ],
            ]
            .concat(),
        ),
        "tls-creds" | "tls-creds-anon" => named(tls),
        "tls-creds-psk" => named(&[tls, &[("username", "string")]].concat()),
        "tls-creds-x509" => {
            named(&[tls, &[("sanity-check", "bool"), ("passwordid", "string")]].concat())
        }
        "authz-simple" => named(&[("identity", "string")]),
        "authz-list" => named(&[("policy", "QAuthZListPolicy"), ("rules", "QAuthZListRule")]),
        "authz-list-file" => named(&[("filename", "string"), ("refresh", "bool")]),
        "chardev-socket" => named(&[("connected", "bool"), ("addr", "SocketAddress")]),
        _ => Vec::new(),
    }
}

/// Why a path names no one node.
enum Unresolved {
    NotFound,
    Ambiguous,
}

/// `qom-set`'s value of a throttle group's `limits`, read as QEMU's
/// visitor reads the property (errors name `limits.iops-total`).
#[derive(Deserialize)]
struct LimitsValue {
    limits: ThrottleLimits,
}

impl Qom<'_> {
    /// `qom-list`.
    pub fn list(&self, path: &str) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
        let node = self.resolve(path).map_err(|why| match why {
            Unresolved::Ambiguous => QmpError::generic(format!("Path '{path}' is ambiguous")),
            Unresolved::NotFound => not_found(path),
        })?;
        let info = |name: String, kind: String| ObjectPropertyInfo { name, kind };
        let mut list = vec![info("type".into(), "string".into())];
        list.extend(
            self.children(&node)
                .into_iter()
                .map(|(name, child)| info(name, format!("child<{}>", type_name(&child)))),
        );
        list.extend(
            own_properties(type_name(&node))
                .into_iter()
                .map(|(name, kind)| info(name, kind.to_owned())),
        );
        Ok(list)
    }

    /// `qom-get`.
    pub fn get(&self, path: &str, property: &str) -> Result<Json, QmpError> {
        let node = self.resolve(path).map_err(|_| not_found(path))?;
        let qom_type = type_name(&node);
        if property == "type" {
            return Ok(Json::from(qom_type));
        }
        if let Some((_, child)) = self
            .children(&node)
            .into_iter()
            .find(|(n, _)| n == property)
        {
            return Ok(Json::from(canonical_path(&child)));
        }
        self.check_property(qom_type, property)?;
        if let Some(value) = self
            .object_id(&node)
            .and_then(|id| self.objects.read_property(id, property))
        {
            return Ok(value);
        }
        if let Some((connected, addr)) = self.chardev(&node).and_then(|c| c.socket.as_ref()) {
            match property {
                "connected" => return Ok(Json::from(*connected)),
                "addr" => return Ok(addr.clone()),
                _ => {}
            }
        }
        let Some(group) = self.throttle_group(&node) else {
            return Err(QmpError::generic(format!(
                "Property '{qom_type}.{property}' cannot be read in storaged"
            )));
        };
        let limits = group.config().to_limits();
        if property == "limits" {
            return serde_json::to_value(limits).map_err(|e| QmpError::generic(e.to_string()));
        }
        // An `x-` member (checked above).
        let values = limits.to_array();
        let value = ThrottleLimits::NAMES
            .iter()
            .zip(values)
            .find(|(name, _)| property.strip_prefix("x-") == Some(**name))
            .and_then(|(_, value)| value);
        Ok(Json::from(value))
    }

    /// `qom-set`.
    pub fn set(&self, path: &str, property: &str, value: Json) -> Result<(), QmpError> {
        let node = self.resolve(path).map_err(|_| not_found(path))?;
        let qom_type = type_name(&node);
        let is_child = self.children(&node).iter().any(|(n, _)| n == property);
        // A chardev's properties are all read only.
        let of_chardev =
            self.chardev(&node).is_some() && self.check_property(qom_type, property).is_ok();
        if property == "type" || is_child || of_chardev {
            return Err(QmpError::generic(format!(
                "Property '{qom_type}.{property}' is not writable"
            )));
        }
        self.check_property(qom_type, property)?;
        if let Some(written) = self
            .object_id(&node)
            .and_then(|id| self.objects.write_property(id, property, value.clone()))
        {
            return written;
        }
        match self.throttle_group(&node) {
            Some(group) if property == "limits" => {
                let mut wrapped = serde_json::Map::new();
                wrapped.insert("limits".into(), value);
                let LimitsValue { limits } = schema::from_json(Json::Object(wrapped))?;
                group.set_limits(&limits)?;
                Ok(())
            }
            // QEMU sets limits only as a whole once the group exists.
            Some(_) => Err(QmpError::generic(
                "Property cannot be set after initialization",
            )),
            None => Err(QmpError::generic(format!(
                "Property '{qom_type}.{property}' cannot be set in storaged"
            ))),
        }
    }

    /// QEMU's error for a property the type does not have.
    fn check_property(&self, qom_type: &str, property: &str) -> Result<(), QmpError> {
        if own_properties(qom_type).iter().any(|(n, _)| n == property) {
            Ok(())
        } else {
            Err(QmpError::generic(format!(
                "Property '{qom_type}.{property}' not found"
            )))
        }
    }

    /// The chardev at `node`, if it is one.
    fn chardev(&self, node: &Node) -> Option<&QomChardev> {
        match node {
            Node::Leaf {
                id,
                parent: Container::Chardevs,
                ..
            } => self.chardevs.iter().find(|chardev| &chardev.id == id),
            _ => None,
        }
    }

    /// The id of the object at `node`, if it is one.
    fn object_id<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match node {
            Node::Leaf {
                id,
                parent: Container::Objects,
                ..
            } => Some(id),
            _ => None,
        }
    }

    fn throttle_group(
        &self,
        node: &Node,
    ) -> Option<std::sync::Arc<block::throttle::ThrottleGroup>> {
        match node {
            Node::Leaf {
                id,
                parent: Container::Objects,
                ..
            } => match self.objects.get(id)? {
                Object::ThrottleGroup(group) => Some(group),
                _ => None,
            },
            _ => None,
        }
    }

    /// The children of `node`, by name.
    fn children(&self, node: &Node) -> Vec<(String, Node)> {
        let leaves = |parent: Container, list: Vec<(String, &'static str)>| {
            list.into_iter()
                .map(|(id, qom_type)| {
                    let leaf = Node::Leaf {
                        id: id.clone(),
                        qom_type: class_name(qom_type),
                        parent,
                    };
                    (id, leaf)
                })
                .collect()
        };
        match node {
            Node::Root => [Container::Backend, Container::Objects, Container::Chardevs]
                .into_iter()
                .map(|c| (c.name().to_owned(), Node::Container(c)))
                .collect(),
            Node::Container(Container::Backend) | Node::Leaf { .. } => Vec::new(),
            Node::Container(Container::Objects) => leaves(Container::Objects, self.objects.types()),
            Node::Container(Container::Chardevs) => leaves(
                Container::Chardevs,
                self.chardevs
                    .iter()
                    .map(|chardev| (chardev.id.clone(), chardev.qom_type))
                    .collect(),
            ),
        }
    }

    /// QEMU's `object_resolve_path`.
    fn resolve(&self, path: &str) -> Result<Node, Unresolved> {
        // As `g_strsplit`: an empty path has no components.
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        match parts.split_first() {
            Some((&"", absolute)) => self
                .resolve_absolute(Node::Root, absolute)
                .ok_or(Unresolved::NotFound),
            _ => {
                let mut ambiguous = false;
                match self.resolve_partial(Node::Root, &parts, &mut ambiguous) {
                    Some(node) => Ok(node),
                    None if ambiguous => Err(Unresolved::Ambiguous),
                    None => Err(Unresolved::NotFound),
                }
            }
        }
    }

    fn resolve_absolute(&self, node: Node, parts: &[&str]) -> Option<Node> {
        match parts.split_first() {
            None => Some(node),
            Some((&"", rest)) => self.resolve_absolute(node, rest),
            Some((name, rest)) => {
                let (_, child) = self.children(&node).into_iter().find(|(n, _)| n == name)?;
                self.resolve_absolute(child, rest)
            }
        }
    }

    /// The one node below `node` (or itself) that `parts` lead to from
    /// there.
    fn resolve_partial(&self, node: Node, parts: &[&str], ambiguous: &mut bool) -> Option<Node> {
        let mut found = self.resolve_absolute(node.clone(), parts);
        for (_, child) in self.children(&node) {
            if let Some(below) = self.resolve_partial(child, parts, ambiguous) {
                if found.is_some() {
                    *ambiguous = true;
                }
                found = Some(below);
            }
            if *ambiguous {
                return None;
            }
        }
        found
    }
}

fn type_name(node: &Node) -> &'static str {
    match node {
        Node::Root | Node::Container(_) => "container",
        Node::Leaf { qom_type, .. } => qom_type,
    }
}

fn canonical_path(node: &Node) -> String {
    match node {
        Node::Root => "/".to_owned(),
        Node::Container(container) => format!("/{}", container.name()),
        Node::Leaf { id, parent, .. } => format!("/{}/{id}", parent.name()),
    }
}

fn not_found(path: &str) -> QmpError {
    QmpError::new(
        ErrorClass::DeviceNotFound,
        format!("Device '{path}' not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects() -> Objects {
        let objects = Objects::new();
        for object in [
            json!({"qom-type": "throttle-group", "id": "tg", "x-iops-total": 100}),
            json!({"qom-type": "secret", "id": "m", "data": "x"}),
        ] {
            objects.add(schema::from_json(object).unwrap()).unwrap();
        }
        objects
    }

    fn desc<T: std::fmt::Debug>(result: Result<T, QmpError>) -> (ErrorClass, String) {
        let error = result.expect_err("an error");
        (error.class, error.desc)
    }

    #[test]
    fn paths_resolve_as_in_qemu() {
        let objects = objects();
        let chardevs = [QomChardev {
            id: "m".to_owned(),
            qom_type: "chardev-socket",
            socket: Some((true, json!({"type": "unix", "path": "/m.sock"}))),
        }];
        let qom = Qom {
            objects: &objects,
            chardevs: &chardevs,
        };
        let type_of = |path: &str| qom.get(path, "type").map_err(|e| e.desc);
        assert_eq!(type_of("/"), Ok(json!("container")));
        assert_eq!(type_of("//objects/"), Ok(json!("container")));
        assert_eq!(type_of("tg"), Ok(json!("throttle-group")));
        assert_eq!(type_of("objects/tg/"), Ok(json!("throttle-group")));
        assert_eq!(type_of("/chardevs/m"), Ok(json!("chardev-socket")));
        assert_eq!(
            desc(qom.get("m", "type")),
            (ErrorClass::DeviceNotFound, "Device 'm' not found".into())
        );
        assert_eq!(
            desc(qom.list("m")),
            (ErrorClass::GenericError, "Path 'm' is ambiguous".into())
        );
        assert_eq!(
            desc(qom.list("")),
            (ErrorClass::GenericError, "Path '' is ambiguous".into())
        );
        assert_eq!(
            desc(qom.list("/objects/tg/limits")),
            (
                ErrorClass::DeviceNotFound,
                "Device '/objects/tg/limits' not found".into()
            )
        );
        assert_eq!(qom.get("/objects", "tg").unwrap(), json!("/objects/tg"));
        assert_eq!(qom.get("/chardevs/m", "connected").unwrap(), json!(true));
        assert_eq!(
            qom.set("/chardevs/m", "addr", json!({}))
                .map_err(|e| e.desc),
            Err("Property 'chardev-socket.addr' is not writable".to_owned())
        );
    }

    #[test]
    fn throttle_limits_read_and_change() {
        let objects = objects();
        let qom = Qom {
            objects: &objects,
            chardevs: &[],
        };
        assert_eq!(qom.get("tg", "x-iops-total").unwrap(), json!(100));
        assert_eq!(qom.get("tg", "x-bps-read-max-length").unwrap(), json!(1));
        qom.set("tg", "limits", json!({"iops-total": 7, "iops-size": 512}))
            .unwrap();
        let limits = qom.get("/objects/tg", "limits").unwrap();
        assert_eq!(
            (limits["iops-total"].clone(), limits["iops-size"].clone()),
            (json!(7), json!(512))
        );
        let refused = [
            (
                qom.set("tg", "limits", json!({"iops-read": 5})),
                "bps/iops/max total values and read/write values cannot be used at the same time",
            ),
            (
                qom.set("tg", "limits", json!({"bogus": 5})),
                "Parameter 'limits.bogus' is unexpected",
            ),
            (
                qom.set("tg", "limits", json!(5)),
                "Invalid parameter type for 'limits', expected: object",
            ),
            (
                qom.set("tg", "x-iops-total", json!(5)),
                "Property cannot be set after initialization",
            ),
            (
                qom.set("tg", "type", json!("x")),
                "Property 'throttle-group.type' is not writable",
            ),
            (
                qom.set("tg", "nosuch", json!("x")),
                "Property 'throttle-group.nosuch' not found",
            ),
            (
                qom.set("m", "data", json!(1)),
                "Invalid parameter type for 'data', expected: string",
            ),
        ];
        for (result, message) in refused {
            assert_eq!(result.map_err(|e| e.desc), Err(message.to_owned()));
        }
        assert_eq!(qom.get("tg", "limits").unwrap(), limits);
    }
}

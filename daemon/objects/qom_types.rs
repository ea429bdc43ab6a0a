//! The QOM classes storaged has, as `qom-list-types` and
//! `qom-list-properties` show them: each with its parent, whether it is
//! abstract, and the interfaces it brings, named and arranged as in QSD 10
//! (a subset of QSD's classes: only those storaged can create or has).

use schema::object::{ObjectPropertyInfo, ObjectTypeInfo};
use schema::{ErrorClass, QmpError};

use super::qom::own_properties;

/// One class.
struct Class {
    name: &'static str,
    parent: Option<&'static str>,
    is_abstract: bool,
    is_interface: bool,
    /// Interfaces the class implements (its subclasses inherit them).
    interfaces: &'static [&'static str],
}

const fn class(name: &'static str, parent: &'static str) -> Class {
    Class {
        name,
        parent: Some(parent),
        is_abstract: false,
        is_interface: false,
        interfaces: &[],
    }
}

const fn abstract_class(name: &'static str, parent: &'static str) -> Class {
    Class {
        is_abstract: true,
        ..class(name, parent)
    }
}

const USER_CREATABLE: &[&str] = &["user-creatable"];

const CLASSES: &[Class] = &[
    Class {
        name: "object",
        parent: None,
        is_abstract: true,
        is_interface: false,
        interfaces: &[],
    },
    Class {
        name: "interface",
        parent: None,
        is_abstract: true,
        is_interface: true,
        interfaces: &[],
    },
    Class {
        is_interface: true,
        ..abstract_class("user-creatable", "interface")
    },
    class("container", "object"),
    Class {
        interfaces: USER_CREATABLE,
        ..abstract_class("event-loop-base", "object")
    },
    class("iothread", "event-loop-base"),
    Class {
        interfaces: USER_CREATABLE,
        ..abstract_class("secret_common", "object")
    },
    class("secret", "secret_common"),
    Class {
        interfaces: USER_CREATABLE,
        ..class("throttle-group", "object")
    },
    Class {
        interfaces: USER_CREATABLE,
        ..abstract_class("tls-creds", "object")
    },
    class("tls-creds-anon", "tls-creds"),
    class("tls-creds-psk", "tls-creds"),
    class("tls-creds-x509", "tls-creds"),
    Class {
        interfaces: USER_CREATABLE,
        ..abstract_class("authz", "object")
    },
    class("authz-simple", "authz"),
    class("authz-list", "authz"),
    class("authz-list-file", "authz"),
    abstract_class("chardev", "object"),
    abstract_class("chardev-fd", "chardev"),
    class("chardev-socket", "chardev"),
    class("chardev-stdio", "chardev-fd"),
];

/// The QOM class of an object created with `qom-type` (they differ only
/// for `authz-listfile`, whose class is `authz-list-file`).
pub fn class_name(qom_type: &'static str) -> &'static str {
    match qom_type {
        "authz-listfile" => "authz-list-file",
        other => other,
    }
}

fn find(name: &str) -> Option<&'static Class> {
    CLASSES.iter().find(|class| class.name == name)
}

/// Whether `class` is `ancestor` or derives from it or implements it.
fn is_a(class: &Class, ancestor: &str) -> bool {
    let mut current = Some(class);
    while let Some(class) = current {
        if class.name == ancestor || class.interfaces.contains(&ancestor) {
            return true;
        }
        current = class.parent.and_then(find);
    }
    false
}

/// `qom-list-types`: the classes that are or implement `implements` (all
/// by default), abstract ones only when asked for. An unknown name
/// matches nothing, as in QEMU.
pub fn list_types(implements: Option<&str>, include_abstract: bool) -> Vec<ObjectTypeInfo> {
    CLASSES
        .iter()
        .filter(|class| include_abstract || !class.is_abstract)
        .filter(|class| implements.is_none_or(|ancestor| is_a(class, ancestor)))
        .map(|class| ObjectTypeInfo {
            name: class.name.to_owned(),
            is_abstract: class.is_abstract.then_some(true),
            parent: class.parent.map(str::to_owned),
        })
        .collect()
}

/// `qom-list-properties`: the properties an object of class `typename`
/// has, as QSD lists them.
pub fn list_properties(typename: &str) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
    let class = find(typename).ok_or_else(|| {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Class '{typename}' not found"),
        )
    })?;
    if class.is_interface {
        return Err(QmpError::generic("Parameter 'typename' expects a QOM type"));
    }
    let property = |name: &str, kind: &str| ObjectPropertyInfo {
        name: name.to_owned(),
        kind: kind.to_owned(),
    };
    Ok(std::iter::once(property("type", "string"))
        .chain(
            own_properties(class.name)
                .iter()
                .map(|(name, kind)| property(name, kind)),
        )
        .collect())
}

/// `--object help` and `--object TYPE,help`: QEMU's
/// `user_creatable_print_help`. `None` when `option` asks for no help.
/// With a class that `object-add` creates, its options; otherwise (no
/// type, an unknown one, or `help` as the type) the list of such classes.
pub fn object_help(option: &str) -> Option<String> {
    let is_help = |word: &str| word == "help" || word == "?";
    let mut words = option.split(',');
    let first = words.next().unwrap_or_default();
    let qom_type = (!first.contains('=')).then_some(first);
    if !qom_type.is_some_and(is_help) && !words.any(is_help) {
        return None;
    }
    let creatable = |class: &&Class| !class.is_abstract && is_a(class, "user-creatable");
    match qom_type.and_then(find).filter(creatable) {
        Some(class) => {
            let mut options: Vec<String> = own_properties(class.name)
                .into_iter()
                .map(|(name, kind)| format!("  {name}=<{kind}>\n"))
                .collect();
            options.sort();
            Some(format!("{} options:\n{}", class.name, options.concat()))
        }
        None => {
            let mut names: Vec<&str> = CLASSES
                .iter()
                .filter(creatable)
                .map(|class| class.name)
                .collect();
            names.sort_unstable();
            let list: String = names.iter().map(|name| format!("  {name}\n")).collect();
            Some(format!("List of user creatable objects:\n{list}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_help_lists_classes_or_their_options() {
        assert_eq!(object_help("iothread,id=x"), None);
        let list = object_help("help").unwrap();
        assert!(list.starts_with("List of user creatable objects:\n  authz-list\n"));
        assert_eq!(object_help("?"), Some(list.clone()));
        assert_eq!(object_help("id=x,help"), Some(list.clone()));
        assert_eq!(object_help("bogus,help"), Some(list));
        assert_eq!(
            object_help("authz-list,help,id=x").unwrap(),
            "authz-list options:\n  policy=<QAuthZListPolicy>\n  rules=<QAuthZListRule>\n"
        );
    }

    #[test]
    fn every_parent_and_interface_is_a_class() {
        for class in CLASSES {
            for name in class.parent.iter().chain(class.interfaces) {
                assert!(find(name).is_some(), "{} names {name}", class.name);
            }
        }
    }

    #[test]
    fn user_creatable_classes_are_those_object_add_makes() {
        let names: Vec<String> = list_types(Some("user-creatable"), false)
            .into_iter()
            .map(|info| info.name)
            .collect();
        assert_eq!(
            names,
            [
                "iothread",
                "secret",
                "throttle-group",
                "tls-creds-anon",
                "tls-creds-psk",
                "tls-creds-x509",
                "authz-simple",
                "authz-list",
                "authz-list-file"
            ]
        );
    }
}

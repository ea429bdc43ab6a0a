//! `query-qmp-schema`: the shape of every command, event and type the
//! daemon accepts or sends, in QEMU's `SchemaInfo` form.
//!
//! Each schema type implements [`Introspect`] (derived from its serde
//! attributes with `#[derive(Introspect)]`, or written by hand for unions
//! and alternates) and registers itself in a [`SchemaBuilder`]. Commands
//! and events are described from the same types their handlers read and
//! their emitters write, so the introspection cannot drift from what is
//! accepted. As in QEMU, type names are opaque: every type but the
//! built-in ones is a number, arrays are `[element]`.

use std::any::TypeId;
use std::collections::HashMap;

use serde::Serialize;

pub use storaged_schema_derive::Introspect;

/// A type with a shape in `query-qmp-schema`.
pub trait Introspect {
    /// Registers the type (and the types it refers to) in `schema`, once,
    /// and returns the name by which others refer to it.
    fn introspect(schema: &mut SchemaBuilder) -> String;
}

/// A struct's members, for the object it is and for the unions that
/// take it as their common members.
pub trait ObjectMembers {
    fn members(schema: &mut SchemaBuilder) -> Vec<Member>;
}

/// The values of an enum type, as strings.
pub trait EnumValues {
    const VALUES: &'static [&'static str];
}

/// One member of an object type (`SchemaInfoObjectMember`).
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct Member {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// Present (always null, as in QEMU) exactly when the member is
    /// optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

impl Member {
    /// A member of type `T`.
    pub fn new<T: Introspect + ?Sized>(
        schema: &mut SchemaBuilder,
        name: &str,
        optional: bool,
        features: &[&str],
    ) -> Self {
        Self {
            name: name.to_owned(),
            ty: T::introspect(schema),
            default: optional.then_some(serde_json::Value::Null),
            features: owned(features),
        }
    }
}

/// One value of an enum type, as the derive declares it.
pub struct EnumValue {
    pub name: &'static str,
    pub features: &'static [&'static str],
}

/// One case of a union: the discriminator's value and the type of the
/// members it adds (`SchemaInfoObjectVariant`).
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct Variant {
    pub case: String,
    #[serde(rename = "type")]
    pub ty: String,
}

/// A value of an enum type (`SchemaInfoEnumMember`).
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct EnumMember {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// A branch of an alternate (`SchemaInfoAlternateMember`).
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct AlternateMember {
    #[serde(rename = "type")]
    pub ty: String,
}

/// The JSON type of a built-in (`JSONType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
#[serde(rename_all = "lowercase")]
pub enum JsonType {
    String,
    Number,
    Int,
    Boolean,
    Null,
    Object,
    Array,
    Value,
}

/// `SchemaInfoBuiltin`.
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct SchemaInfoBuiltin {
    pub json_type: JsonType,
}

/// `SchemaInfoEnum`: the values twice, as QEMU lists them (`values` is
/// deprecated there in favour of `members`).
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct SchemaInfoEnum {
    pub members: Vec<EnumMember>,
    #[introspect(features("deprecated"))]
    pub values: Vec<String>,
}

/// `SchemaInfoArray`.
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct SchemaInfoArray {
    pub element_type: String,
}

/// `SchemaInfoObject`: members, and for a union its tag and variants.
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct SchemaInfoObject {
    pub members: Vec<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<Variant>>,
}

/// `SchemaInfoAlternate`.
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
pub struct SchemaInfoAlternate {
    pub members: Vec<AlternateMember>,
}

/// `SchemaInfoCommand`.
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct SchemaInfoCommand {
    pub arg_type: String,
    pub ret_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_oob: Option<bool>,
}

/// `SchemaInfoEvent`.
#[derive(Debug, Clone, PartialEq, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct SchemaInfoEvent {
    pub arg_type: String,
}

/// What kind of entry a [`SchemaInfo`] is, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "meta-type", rename_all = "kebab-case")]
pub enum SchemaInfoKind {
    Builtin(SchemaInfoBuiltin),
    Enum(SchemaInfoEnum),
    Array(SchemaInfoArray),
    Object(SchemaInfoObject),
    Alternate(SchemaInfoAlternate),
    Command(SchemaInfoCommand),
    Event(SchemaInfoEvent),
}

/// One entry of `query-qmp-schema` (`SchemaInfo`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaInfo {
    pub name: String,
    #[serde(flatten)]
    pub kind: SchemaInfoKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// A union on `meta-type`, as QEMU describes its own introspection.
impl Introspect for SchemaInfo {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        const META_TYPES: &[&str] = &[
            "builtin",
            "enum",
            "array",
            "object",
            "alternate",
            "command",
            "event",
        ];
        schema.flat_union::<Self>(
            &[],
            |schema| {
                vec![
                    Member::new::<String>(schema, "name", false, &[]),
                    Member {
                        name: "meta-type".to_owned(),
                        ty: tag_enum::<SchemaInfoKind>(schema, META_TYPES),
                        default: None,
                        features: None,
                    },
                    Member::new::<Vec<String>>(schema, "features", true, &[]),
                ]
            },
            "meta-type",
            |schema| {
                let types = [
                    SchemaInfoBuiltin::introspect(schema),
                    SchemaInfoEnum::introspect(schema),
                    SchemaInfoArray::introspect(schema),
                    SchemaInfoObject::introspect(schema),
                    SchemaInfoAlternate::introspect(schema),
                    SchemaInfoCommand::introspect(schema),
                    SchemaInfoEvent::introspect(schema),
                ];
                variants(META_TYPES, types)
            },
        )
    }
}

/// The variants of a union whose `cases` have the given `types`.
pub fn variants(cases: &[&str], types: impl IntoIterator<Item = String>) -> Vec<Variant> {
    cases
        .iter()
        .zip(types)
        .map(|(case, ty)| Variant {
            case: (*case).to_owned(),
            ty,
        })
        .collect()
}

/// Collects the entries: each type once, under a number of its own.
#[derive(Default)]
pub struct SchemaBuilder {
    entries: Vec<SchemaInfo>,
    names: HashMap<TypeId, String>,
    /// Arrays and built-ins, by their (non-opaque) name.
    named: HashMap<String, ()>,
    next: usize,
}

impl SchemaBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every entry, in the order they were registered.
    pub fn finish(self) -> Vec<SchemaInfo> {
        self.entries
    }

    /// Registers a command with its argument and return types.
    pub fn command<A: Introspect + ?Sized, R: Introspect + ?Sized>(
        &mut self,
        name: &str,
        features: &[&str],
    ) {
        let arg_type = A::introspect(self);
        let ret_type = R::introspect(self);
        self.entries.push(SchemaInfo {
            name: name.to_owned(),
            kind: SchemaInfoKind::Command(SchemaInfoCommand {
                arg_type,
                ret_type,
                allow_oob: None,
            }),
            features: owned(features),
        });
    }

    /// Registers an event with the type of its data.
    pub fn event<A: Introspect + ?Sized>(&mut self, name: &str, features: &[&str]) {
        let arg_type = A::introspect(self);
        self.entries.push(SchemaInfo {
            name: name.to_owned(),
            kind: SchemaInfoKind::Event(SchemaInfoEvent { arg_type }),
            features: owned(features),
        });
    }

    /// An object type `T` with `members`.
    pub fn object<T: ?Sized + 'static>(
        &mut self,
        features: &[&str],
        members: impl FnOnce(&mut Self) -> Vec<Member>,
    ) -> String {
        self.register::<T>(features, |schema| {
            SchemaInfoKind::Object(SchemaInfoObject {
                members: members(schema),
                tag: None,
                variants: None,
            })
        })
    }

    /// A flat union `T`: its common `members` (the discriminator `tag`
    /// among them) and, for each value of the tag, the type of the
    /// members that value adds.
    pub fn flat_union<T: ?Sized + 'static>(
        &mut self,
        features: &[&str],
        members: impl FnOnce(&mut Self) -> Vec<Member>,
        tag: &str,
        variants: impl FnOnce(&mut Self) -> Vec<Variant>,
    ) -> String {
        self.register::<T>(features, |schema| {
            SchemaInfoKind::Object(SchemaInfoObject {
                members: members(schema),
                tag: Some(tag.to_owned()),
                variants: Some(variants(schema)),
            })
        })
    }

    /// An enum type `T`.
    pub fn enumeration<T: ?Sized + 'static>(
        &mut self,
        features: &[&str],
        values: &[EnumValue],
    ) -> String {
        self.register::<T>(features, |_| {
            SchemaInfoKind::Enum(SchemaInfoEnum {
                members: values
                    .iter()
                    .map(|value| EnumMember {
                        name: value.name.to_owned(),
                        features: owned(value.features),
                    })
                    .collect(),
                values: values.iter().map(|value| value.name.to_owned()).collect(),
            })
        })
    }

    /// An alternate `T`: one of the `branches`' types, told apart by the
    /// JSON type of the value.
    pub fn alternate<T: ?Sized + 'static>(
        &mut self,
        branches: impl FnOnce(&mut Self) -> Vec<String>,
    ) -> String {
        self.register::<T>(&[], |schema| {
            SchemaInfoKind::Alternate(SchemaInfoAlternate {
                members: branches(schema)
                    .into_iter()
                    .map(|ty| AlternateMember { ty })
                    .collect(),
            })
        })
    }

    /// The array type of elements named `element`.
    pub fn array(&mut self, element: String) -> String {
        let name = format!("[{element}]");
        if self.named.insert(name.clone(), ()).is_none() {
            self.entries.push(SchemaInfo {
                name: name.clone(),
                kind: SchemaInfoKind::Array(SchemaInfoArray {
                    element_type: element,
                }),
                features: None,
            });
        }
        name
    }

    /// A built-in type, named as QEMU names it.
    fn builtin(&mut self, name: &'static str, json_type: JsonType) -> String {
        if self.named.insert(name.to_owned(), ()).is_none() {
            self.entries.push(SchemaInfo {
                name: name.to_owned(),
                kind: SchemaInfoKind::Builtin(SchemaInfoBuiltin { json_type }),
                features: None,
            });
        }
        name.to_owned()
    }

    /// Gives `T` its number and then its entry. The number is taken before
    /// the entry is built, so a type may refer to itself.
    fn register<T: ?Sized + 'static>(
        &mut self,
        features: &[&str],
        kind: impl FnOnce(&mut Self) -> SchemaInfoKind,
    ) -> String {
        if let Some(name) = self.names.get(&TypeId::of::<T>()) {
            return name.clone();
        }
        let name = self.next.to_string();
        self.next += 1;
        self.names.insert(TypeId::of::<T>(), name.clone());
        let slot = self.entries.len();
        self.entries.push(SchemaInfo {
            name: name.clone(),
            kind: SchemaInfoKind::Alternate(SchemaInfoAlternate {
                members: Vec::new(),
            }),
            features: owned(features),
        });
        self.entries[slot].kind = kind(self);
        name
    }
}

/// Features as QEMU lists them: absent when there are none.
fn owned(names: &[&str]) -> Option<Vec<String>> {
    (!names.is_empty()).then(|| names.iter().map(|name| (*name).to_owned()).collect())
}

/// The object with no members: the arguments of a command that takes none,
/// and the return of a command that returns nothing.
pub struct Empty;

impl Introspect for Empty {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        schema.object::<Empty>(&[], |_| Vec::new())
    }
}

impl Introspect for () {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        Empty::introspect(schema)
    }
}

macro_rules! builtin {
    ($name:literal, $json:ident: $($ty:ty),+) => {
        $(
            impl Introspect for $ty {
                fn introspect(schema: &mut SchemaBuilder) -> String {
                    schema.builtin($name, JsonType::$json)
                }
            }
        )+
    };
}

builtin!("str", String: String, str);
builtin!("int", Int: i8, i16, i32, i64, u8, u16, u32, u64, usize, crate::Size);
builtin!("number", Number: f64);
builtin!("bool", Boolean: bool);
builtin!("any", Value: serde_json::Value, crate::Value);

/// QAPI's `null`, the branch of an alternate that accepts JSON null.
pub struct Null;

impl Introspect for Null {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        schema.builtin("null", JsonType::Null)
    }
}

impl<T: Introspect> Introspect for Vec<T> {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        let element = T::introspect(schema);
        schema.array(element)
    }
}

/// `Introspect` for an alternate: a hand-deserialized enum whose branches
/// are told apart by JSON type.
macro_rules! alternate {
    ($name:ty: $($branch:ty),+) => {
        impl $crate::introspect::Introspect for $name {
            fn introspect(schema: &mut $crate::introspect::SchemaBuilder) -> String {
                schema.alternate::<Self>(|schema| {
                    vec![$(<$branch as $crate::introspect::Introspect>::introspect(schema)),+]
                })
            }
        }
    };
}
pub(crate) use alternate;

/// The discriminator of a union: an enum of the `cases`, registered under
/// the union's variant type `T`.
pub fn tag_enum<T: ?Sized + 'static>(schema: &mut SchemaBuilder, cases: &[&'static str]) -> String {
    let values: Vec<EnumValue> = cases
        .iter()
        .map(|name| EnumValue {
            name,
            features: &[],
        })
        .collect();
    schema.enumeration::<T>(&[], &values)
}

impl<T: Introspect + ?Sized> Introspect for Box<T> {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        T::introspect(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Introspect)]
    #[serde(rename_all = "kebab-case")]
    #[allow(dead_code)]
    struct Sample {
        node_name: String,
        size: Option<u64>,
        #[serde(default)]
        flag: bool,
        #[serde(skip)]
        hidden: u8,
        children: Vec<Sample>,
        #[introspect(features("deprecated"))]
        mode: Option<Mode>,
    }

    #[derive(serde::Deserialize, Introspect)]
    #[serde(rename_all = "kebab-case")]
    #[allow(dead_code)]
    enum Mode {
        ReadOnly,
        #[serde(rename = "rw")]
        ReadWrite,
    }

    #[test]
    fn derived_shapes_follow_serde_names_and_optionality() {
        let mut schema = SchemaBuilder::new();
        let name = Sample::introspect(&mut schema);
        let entries = serde_json::to_value(schema.finish()).unwrap();
        assert_eq!(name, "0");
        assert_eq!(
            entries,
            serde_json::json!([
                {"name": "0", "meta-type": "object", "members": [
                    {"name": "node-name", "type": "str"},
                    {"name": "size", "type": "int", "default": null},
                    {"name": "flag", "type": "bool", "default": null},
                    {"name": "children", "type": "[0]"},
                    {"name": "mode", "type": "1", "default": null, "features": ["deprecated"]},
                ]},
                {"name": "str", "meta-type": "builtin", "json-type": "string"},
                {"name": "int", "meta-type": "builtin", "json-type": "int"},
                {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
                {"name": "[0]", "meta-type": "array", "element-type": "0"},
                {"name": "1", "meta-type": "enum",
                 "members": [{"name": "read-only"}, {"name": "rw"}],
                 "values": ["read-only", "rw"]},
            ])
        );
    }
}

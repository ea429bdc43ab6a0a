//! QAPI unions and alternates, read without serde's buffering enums.
//!
//! serde's internally tagged enums buffer their input in a private type,
//! which loses keyval coercion and the key path, and they cannot be combined
//! with `deny_unknown_fields` and flattened common members (serde issue
//! 1358). Instead a union or alternate first *captures* its subtree, path and
//! origin ([`Captured`]), then reads the discriminator, the common members
//! and the variant's members from it with the same deserializer, so errors
//! and leniency are exactly those of plain structs.
//!
//! The capture travels through serde as a newtype struct with a reserved
//! name: our deserializer answers it with a map of the tree, its path and
//! its origin; any other deserializer (e.g. `serde_json`) just hands over
//! its value, read as strict JSON from the root.

use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::{scalar, visit_struct, Deserializer, Error, MapReader, Path};
use crate::value::Origin;

/// The newtype name that asks our deserializer for a capture.
pub(crate) const CAPTURE_TOKEN: &str = "$schema::Captured";

const CAPTURE_VALUE: &str = "value";
const CAPTURE_PATH: &str = "path";
const CAPTURE_ORIGIN: &str = "origin";
const CAPTURE_ELEMENT: &str = "element";

/// What our deserializer hands to a capture: entries read strictly.
pub(crate) fn capture_reader(value: Json, path: Path, origin: Origin) -> MapReader {
    let entries = vec![
        (
            CAPTURE_PATH.to_owned(),
            Some(Json::String(path.as_str().to_owned())),
        ),
        (
            CAPTURE_ELEMENT.to_owned(),
            Some(Json::Bool(path.is_element())),
        ),
        (
            CAPTURE_ORIGIN.to_owned(),
            Some(Json::String(origin_name(origin).to_owned())),
        ),
        (CAPTURE_VALUE.to_owned(), Some(value)),
    ];
    MapReader::new(entries, Path::root(), Origin::Json)
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Keyval => "keyval",
        Origin::Json => "json",
        Origin::QemuOpts => "qemu-opts",
    }
}

fn origin_from_name(name: &str) -> Option<Origin> {
    [Origin::Keyval, Origin::Json, Origin::QemuOpts]
        .into_iter()
        .find(|origin| origin_name(*origin) == name)
}

/// A subtree together with where it sits and how its leaves are read.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    value: Json,
    path: Path,
    origin: Origin,
}

impl<'de> Deserialize<'de> for Captured {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_newtype_struct(CAPTURE_TOKEN, CaptureVisitor)
    }
}

struct CaptureVisitor;

impl<'de> Visitor<'de> for CaptureVisitor {
    type Value = Captured;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    /// From our own deserializer: path, origin and tree.
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Captured, A::Error> {
        let mut path = None;
        let mut element = None;
        let mut origin = None;
        let mut value = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                CAPTURE_PATH => path = Some(map.next_value::<String>()?),
                CAPTURE_ELEMENT => element = Some(map.next_value::<bool>()?),
                CAPTURE_ORIGIN => origin = origin_from_name(&map.next_value::<String>()?),
                _ => value = Some(map.next_value::<Json>()?),
            }
        }
        match (path, element, origin, value) {
            (Some(path), Some(element), Some(origin), Some(value)) => Ok(Captured {
                value,
                path: Path::from_parts(path, element),
                origin,
            }),
            _ => Err(de::Error::custom("Internal error: incomplete capture")),
        }
    }

    /// From any other deserializer: a plain JSON value at the root.
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Captured, D::Error> {
        Ok(Captured {
            value: Json::deserialize(d)?,
            path: Path::root(),
            origin: Origin::Json,
        })
    }
}

/// The JSON type of a captured value, for alternates to pick a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    String,
    Null,
    Other,
}

impl Captured {
    pub fn shape(&self) -> Shape {
        match self.value {
            Json::Object(_) => Shape::Object,
            Json::String(_) => Shape::String,
            Json::Null => Shape::Null,
            _ => Shape::Other,
        }
    }

    /// Reads the whole value as `T`.
    pub fn read<T: DeserializeOwned>(self) -> Result<T, Error> {
        T::deserialize(Deserializer::new(self.value, self.path, self.origin))
    }

    /// The error QEMU gives when no branch of alternate `type_name` fits;
    /// it names only the last member.
    pub fn no_branch(&self, type_name: &str) -> Error {
        Error::located(format!(
            "Invalid parameter type for '{}', expected: {type_name}",
            self.path.last()
        ))
    }

    /// Opens the value as the object of a union.
    pub fn into_object(self) -> Result<UnionObject, Error> {
        match self.value {
            Json::Object(map) => Ok(UnionObject {
                map,
                path: self.path,
                origin: self.origin,
            }),
            _ => Err(Error::invalid_type(&self.path, "object")),
        }
    }
}

/// A union's members while they are read: discriminator, then common
/// members, then the variant's members.
pub struct UnionObject {
    map: Map<String, Json>,
    path: Path,
    origin: Origin,
}

impl UnionObject {
    /// Removes and reads the discriminator (a string in either syntax).
    pub fn take_tag(&mut self, tag: &str) -> Result<String, Error> {
        let tag_path = self.path.member(tag);
        match self.map.shift_remove(tag) {
            None => Err(Error::missing(&tag_path)),
            Some(value) => scalar::string(value, &tag_path, self.origin),
        }
    }

    /// The error for a discriminator value no variant has.
    ///
    /// QEMU names the discriminator alone, wherever the union is
    /// (`Parameter 'driver'`, not `'file.driver'`).
    pub fn bad_tag(&self, tag: &str, value: &str) -> Error {
        Error::bad_enum_value(tag, value)
    }

    /// Reads the common members and leaves the others for the variant.
    pub fn take_base<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        T::deserialize(BaseReader {
            map: &mut self.map,
            path: &self.path,
            origin: self.origin,
        })
    }

    /// Reads the variant from the remaining members; a member neither the
    /// base nor the variant declares is an error.
    pub fn finish<T: DeserializeOwned>(self) -> Result<T, Error> {
        T::deserialize(Deserializer::new(
            Json::Object(self.map),
            self.path,
            self.origin,
        ))
    }
}

/// Reads a struct out of a union's map, leaving undeclared keys in place.
struct BaseReader<'a> {
    map: &'a mut Map<String, Json>,
    path: &'a Path,
    origin: Origin,
}

impl<'de> de::Deserializer<'de> for BaseReader<'_> {
    type Error = Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visit_struct(self.map, fields, self.path, self.origin, visitor)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::located(
            "Internal error: the common members of a union must be a struct",
        ))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Defines a QAPI flat union: a struct of common members plus an enum of
/// variants selected by a discriminator member, and its `Deserialize`.
///
/// Common members are named in Rust snake case and read in kebab case;
/// every variant is one struct (with `deny_unknown_fields` unnecessary: the
/// deserializer rejects undeclared keys itself), optionally followed by the
/// QAPI features of its discriminator value (`features ["deprecated"]`).
/// The union also describes itself for `query-qmp-schema`.
macro_rules! qapi_union {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $fty:ty, )*
        }
        $(#[$tmeta:meta])*
        discriminator $tag:literal => pub $tagfield:ident : $enum:ident {
            $(
                $(#[$vmeta:meta])*
                $vname:literal => $variant:ident ( $vty:ty ) $(features [$($vfeature:literal),*])?,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $fty, )*
            $(#[$tmeta])*
            pub $tagfield: $enum,
        }

        #[doc = concat!("The variants of [`", stringify!($name), "`], by `", $tag, "`.")]
        #[derive(Debug, Clone, PartialEq)]
        pub enum $enum {
            $( $(#[$vmeta])* $variant($vty), )+
        }

        impl $enum {
            /// Every accepted value of the discriminator.
            pub const NAMES: &'static [&'static str] = &[$($vname),+];

            /// The discriminator value of this variant.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $vname, )+
                }
            }
        }

        const _: () = {
        /// The common members, read and described apart from the tag.
        #[derive(serde::Deserialize, $crate::introspect::Introspect)]
        #[serde(rename_all = "kebab-case")]
        struct Base {
            $( $field: $fty, )*
        }

        impl $crate::introspect::Introspect for $name {
            fn introspect(schema: &mut $crate::introspect::SchemaBuilder) -> String {
                use $crate::introspect::ObjectMembers;
                schema.flat_union::<Self>(
                    &[],
                    |schema| {
                        let tag = schema.enumeration::<$enum>(&[], &[$(
                            $crate::introspect::EnumValue {
                                name: $vname,
                                features: &[$($($vfeature),*)?],
                            },
                        )+]);
                        let mut members = vec![$crate::introspect::Member {
                            name: $tag.to_owned(),
                            ty: tag,
                            default: None,
                            features: None,
                        }];
                        members.extend(Base::members(schema));
                        members
                    },
                    $tag,
                    |schema| vec![$(
                        $crate::introspect::Variant {
                            case: $vname.to_owned(),
                            ty: <$vty as $crate::introspect::Introspect>::introspect(schema),
                        },
                    )+],
                )
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {

                fn read(
                    captured: $crate::de::union::Captured,
                ) -> Result<$name, $crate::de::Error> {
                    type ReadVariant = fn(
                        $crate::de::union::UnionObject,
                    ) -> Result<$enum, $crate::de::Error>;

                    let mut object = captured.into_object()?;
                    let tag = object.take_tag($tag)?;
                    let read_variant: ReadVariant = match tag.as_str() {
                        $( $vname => |object| object.finish().map($enum::$variant), )+
                        other => return Err(object.bad_tag($tag, other)),
                    };
                    let Base { $( $field, )* } = object.take_base()?;
                    let $tagfield = read_variant(object)?;
                    Ok($name {
                        $( $field, )*
                        $tagfield,
                    })
                }

                let captured = <$crate::de::union::Captured as serde::Deserialize>::deserialize(deserializer)?;
                read(captured).map_err(<D::Error as serde::de::Error>::custom)
            }
        }
        };
    };
}

pub(crate) use qapi_union;

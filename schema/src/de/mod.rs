//! One serde `Deserializer` for every schema type, over a JSON tree whose
//! leaves are read strictly (QMP) or coerced from strings (keyval).
//!
//! Structs are read as QEMU's QObject input visitor reads them: members in
//! declaration order, then an error for any key the struct does not have
//! ("Parameter 'x' is unexpected"). Every error names the full dotted key.
//! QAPI unions and alternates are not serde enums; see [`union`].

mod error;
mod path;
mod scalar;
pub mod union;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde_json::{Map, Value as Json};

pub use error::Error;
pub use path::Path;

use crate::size::SIZE_TOKEN;
use crate::value::Origin;
use crate::QmpError;

/// Deserializes a whole tree; the error is a QMP `GenericError`.
pub(crate) fn from_tree<T: DeserializeOwned>(tree: Json, origin: Origin) -> Result<T, QmpError> {
    T::deserialize(Deserializer::new(tree, Path::root(), origin))
        .map_err(|e| QmpError::generic(e.to_string()))
}

/// Reads one value of the tree at a known path.
pub struct Deserializer {
    value: Json,
    path: Path,
    origin: Origin,
}

impl Deserializer {
    pub(crate) fn new(value: Json, path: Path, origin: Origin) -> Self {
        Self {
            value,
            path,
            origin,
        }
    }

    fn object(self) -> Result<(Map<String, Json>, Path, Origin), Error> {
        match self.value {
            Json::Object(map) => Ok((map, self.path, self.origin)),
            _ => Err(Error::invalid_type(&self.path, "object")),
        }
    }
}

/// Reads the members a struct declares, in declaration order, from `map`;
/// the keys it does not declare are left in `map`.
///
/// Absent members are visited too, as QEMU does: an `Option` member reads
/// as `None`, any other reports "Parameter '...' is missing" right there,
/// so errors come in declaration order. (Hence schema structs mark optional
/// members with `Option`, never with `#[serde(default)]`.)
pub(crate) fn visit_struct<'de, V: Visitor<'de>>(
    map: &mut Map<String, Json>,
    fields: &'static [&'static str],
    path: &Path,
    origin: Origin,
    visitor: V,
) -> Result<V::Value, Error> {
    let members: Vec<(String, Option<Json>)> = fields
        .iter()
        .map(|field| ((*field).to_owned(), map.shift_remove(*field)))
        .collect();
    visitor
        .visit_map(MapReader::new(members, path.clone(), origin))
        .map_err(|e: Error| e.locate(path))
}

/// The first key left over after a struct was read, as QEMU reports it.
pub(crate) fn reject_leftovers(
    map: &Map<String, Json>,
    path: &Path,
    origin: Origin,
) -> Result<(), Error> {
    match (map.keys().next(), origin) {
        (None, _) => Ok(()),
        // QemuOpts options are flat and name the key as written.
        (Some(key), Origin::QemuOpts) => Err(Error::located(format!("Invalid parameter '{key}'"))),
        (Some(key), _) => Err(Error::unexpected(&path.member(key))),
    }
}

macro_rules! narrow_int {
    ($method:ident, $visit:ident, $ty:ty, signed, $c_type:literal) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let range = (i64::from(<$ty>::MIN), i64::from(<$ty>::MAX));
            let v = scalar::narrow_signed(self.value, &self.path, self.origin, range, $c_type)?;
            let v = <$ty>::try_from(v).map_err(|_| Error::expects(self.path.last(), $c_type))?;
            visitor.$visit(v).map_err(|e: Error| e.locate(&self.path))
        }
    };
    ($method:ident, $visit:ident, $ty:ty, unsigned, $c_type:literal) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let max = u64::from(<$ty>::MAX);
            let v = scalar::narrow_unsigned(self.value, &self.path, self.origin, max, $c_type)?;
            let v = <$ty>::try_from(v).map_err(|_| Error::expects(self.path.last(), $c_type))?;
            visitor.$visit(v).map_err(|e: Error| e.locate(&self.path))
        }
    };
}

impl<'de> de::Deserializer<'de> for Deserializer {
    type Error = Error;

    /// Self-describing read, for `any`-typed members: keyval leaves stay
    /// strings.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let path = self.path.clone();
        let result = match self.value {
            Json::Null => visitor.visit_unit(),
            Json::Bool(b) => visitor.visit_bool(b),
            Json::Number(n) => {
                if let Some(v) = n.as_u64() {
                    visitor.visit_u64(v)
                } else if let Some(v) = n.as_i64() {
                    visitor.visit_i64(v)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Json::String(s) => visitor.visit_string(s),
            Json::Array(items) => {
                visitor.visit_seq(SeqReader::new(items, path.clone(), self.origin))
            }
            Json::Object(map) => {
                let entries = map.into_iter().map(|(k, v)| (k, Some(v))).collect();
                visitor.visit_map(MapReader::new(entries, path.clone(), self.origin))
            }
        };
        result.map_err(|e: Error| e.locate(&path))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let v = scalar::boolean(self.value, &self.path, self.origin)?;
        visitor
            .visit_bool(v)
            .map_err(|e: Error| e.locate(&self.path))
    }

    narrow_int!(deserialize_i8, visit_i8, i8, signed, "int8_t");
    narrow_int!(deserialize_i16, visit_i16, i16, signed, "int16_t");
    narrow_int!(deserialize_i32, visit_i32, i32, signed, "int32_t");
    narrow_int!(deserialize_u8, visit_u8, u8, unsigned, "uint8_t");
    narrow_int!(deserialize_u16, visit_u16, u16, unsigned, "uint16_t");
    narrow_int!(deserialize_u32, visit_u32, u32, unsigned, "uint32_t");

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let v = scalar::int64(self.value, &self.path, self.origin)?;
        visitor
            .visit_i64(v)
            .map_err(|e: Error| e.locate(&self.path))
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let v = scalar::uint64(self.value, &self.path, self.origin)?;
        visitor
            .visit_u64(v)
            .map_err(|e: Error| e.locate(&self.path))
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let v = scalar::number(self.value, &self.path, self.origin)?;
        visitor
            .visit_f64(v)
            .map_err(|e: Error| e.locate(&self.path))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let v = scalar::string(self.value, &self.path, self.origin)?;
        visitor
            .visit_string(v)
            .map_err(|e: Error| e.locate(&self.path))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    /// Reached only for a member that is present: QAPI has no "null means
    /// absent", so a present member is always `Some`.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let path = self.path.clone();
        visitor.visit_some(self).map_err(|e: Error| e.locate(&path))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Json::Null => visitor
                .visit_unit()
                .map_err(|e: Error| e.locate(&self.path)),
            _ => Err(Error::invalid_type(&self.path, "null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let path = self.path.clone();
        let result = if name == SIZE_TOKEN {
            let v = scalar::size(self.value, &self.path, self.origin)?;
            visitor.visit_u64(v)
        } else if name == union::CAPTURE_TOKEN {
            visitor.visit_map(union::capture_reader(self.value, self.path, self.origin))
        } else {
            visitor.visit_newtype_struct(self)
        };
        result.map_err(|e: Error| e.locate(&path))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Json::Array(items) => visitor
                .visit_seq(SeqReader::new(items, self.path.clone(), self.origin))
                .map_err(|e: Error| e.locate(&self.path)),
            _ => Err(Error::invalid_type(&self.path, "array")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (map, path, origin) = self.object()?;
        let entries = map.into_iter().map(|(k, v)| (k, Some(v))).collect();
        visitor
            .visit_map(MapReader::new(entries, path.clone(), origin))
            .map_err(|e: Error| e.locate(&path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (mut map, path, origin) = self.object()?;
        let value = visit_struct(&mut map, fields, &path, origin, visitor)?;
        reject_leftovers(&map, &path, origin)?;
        Ok(value)
    }

    /// QAPI enums: a string naming one of the (unit) variants.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let path = self.path.clone();
        let name = scalar::string(self.value, &path, self.origin)?;
        let deserializer: de::value::StringDeserializer<Error> = name.into_deserializer();
        visitor
            .visit_enum(deserializer)
            .map_err(|e: Error| e.locate(&path))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// A member name and its value, `None` when absent.
type Entry = (String, Option<Json>);

/// Hands a struct's members (or a map's entries) to a visitor.
pub(crate) struct MapReader {
    entries: std::vec::IntoIter<Entry>,
    pending: Option<Entry>,
    path: Path,
    origin: Origin,
}

impl MapReader {
    fn new(entries: Vec<Entry>, path: Path, origin: Origin) -> Self {
        Self {
            entries: entries.into_iter(),
            pending: None,
            path,
            origin,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapReader {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let member = self.path.member(&key);
        let deserializer: de::value::StrDeserializer<Error> = key.as_str().into_deserializer();
        let parsed = seed
            .deserialize(deserializer)
            .map_err(|e: Error| e.locate(&member))?;
        self.pending = Some((key, value));
        Ok(Some(parsed))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| Error::located("Internal error: map value read before its key"))?;
        let path = self.path.member(&key);
        match value {
            Some(value) => seed.deserialize(Deserializer::new(value, path, self.origin)),
            None => seed.deserialize(Absent(path)),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Hands list elements to a visitor.
struct SeqReader {
    items: std::iter::Enumerate<std::vec::IntoIter<Json>>,
    path: Path,
    origin: Origin,
}

impl SeqReader {
    fn new(items: Vec<Json>, path: Path, origin: Origin) -> Self {
        Self {
            items: items.into_iter().enumerate(),
            path,
            origin,
        }
    }
}

impl<'de> de::SeqAccess<'de> for SeqReader {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        match self.items.next() {
            None => Ok(None),
            Some((index, item)) => {
                let path = self.path.element(index, self.origin);
                seed.deserialize(Deserializer::new(item, path, self.origin))
                    .map(Some)
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// An absent struct member: `None` for an `Option`, missing otherwise.
struct Absent(Path);

impl<'de> de::Deserializer<'de> for Absent {
    type Error = Error;

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_none()
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::missing(&self.0))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

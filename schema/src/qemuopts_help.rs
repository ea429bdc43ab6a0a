//! The option list QEMU prints for `OPTION,help` of an option in its older
//! syntax (`qemu_opts_print_help`, e.g. `--chardev socket,help`): every
//! option of a schema type with its QemuOpts type, one per line, sorted.
//!
//! The list is read from the type's own `Deserialize` implementation: a
//! probing deserializer offers every field the type names and notes what
//! each asks for (a string, a boolean, a number or a size), so the list
//! cannot drift from what [`crate::qemuopts::parse`] accepts. `id` is not
//! listed, as QEMU handles it apart from the other options.

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, Visitor};

use crate::size::SIZE_TOKEN;

/// QemuOpts' type of an option, as `qemu_opts_print_help` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Number,
    Size,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Str => "str",
            Kind::Bool => "bool (on/off)",
            Kind::Number => "num",
            Kind::Size => "size",
        }
    }
}

/// The help text of the options of `T`, headed `{list} options:`.
pub fn print_help<T: DeserializeOwned>(list: &str) -> String {
    let mut probe = Probe::default();
    // Every field gets a valid placeholder: probing cannot fail, and a
    // type it cannot read simply lists fewer options.
    let _ = T::deserialize(&mut probe);
    let mut lines: Vec<String> = probe
        .options
        .iter()
        .filter(|(name, _)| *name != "id")
        .map(|(name, kind)| format!("  {name}=<{}>\n", kind.name()))
        .collect();
    lines.sort();
    format!("{list} options:\n{}", lines.concat())
}

/// The probing deserializer: a struct whose fields are all present, each
/// answered with a placeholder of the type it asks for.
#[derive(Default)]
struct Probe {
    options: Vec<(&'static str, Kind)>,
}

#[derive(Debug)]
struct ProbeError(String);

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

impl<'de> Deserializer<'de> for &mut Probe {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ProbeError> {
        Err(de::Error::custom("only structs can be probed"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_map(Fields {
            probe: self,
            fields: fields.iter(),
            current: "",
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The fields of the probed struct, offered one after the other.
struct Fields<'p> {
    probe: &'p mut Probe,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        let Some(&field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        seed.deserialize(Field {
            name: self.current,
            options: &mut self.probe.options,
        })
    }
}

/// One field's value: records the type asked for, answers a placeholder.
struct Field<'p> {
    name: &'static str,
    options: &'p mut Vec<(&'static str, Kind)>,
}

impl Field<'_> {
    fn note(self, kind: Kind) {
        self.options.push((self.name, kind));
    }
}

impl<'de> Deserializer<'de> for Field<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ProbeError> {
        Err(de::Error::custom(format!(
            "'{}' is not a QemuOpts option",
            self.name
        )))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.note(Kind::Bool);
        visitor.visit_bool(false)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.note(Kind::Str);
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.note(Kind::Number);
        visitor.visit_u64(0)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.note(Kind::Number);
        visitor.visit_i64(0)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        if name == SIZE_TOKEN {
            self.note(Kind::Size);
            visitor.visit_u64(0)
        } else {
            visitor.visit_newtype_struct(self)
        }
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::char::ChardevOptions;

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    #[allow(dead_code)]
    struct Sample {
        id: Option<String>,
        path: Option<String>,
        wait: Option<bool>,
        reconnect_ms: Option<u64>,
        reconnect: Option<u64>,
        size: Option<crate::Size>,
    }

    #[test]
    fn options_are_listed_sorted_as_qemu_prints_them() {
        assert_eq!(
            print_help::<Sample>("sample"),
            "sample options:\n  path=<str>\n  reconnect-ms=<num>\n  reconnect=<num>\n  \
             size=<size>\n  wait=<bool (on/off)>\n"
        );
    }

    #[test]
    fn every_chardev_option_is_listed() {
        let help = print_help::<ChardevOptions>("chardev");
        assert_eq!(help.lines().count(), 44);
        assert!(help.contains("\n  chardevs.3=<str>\n"));
        assert!(!help.contains("  id="));
    }
}

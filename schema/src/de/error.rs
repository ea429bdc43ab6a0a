//! The deserializer's error, and how it learns where it happened.
//!
//! serde's derived visitors report problems without knowing the key they
//! were reading (`missing_field("filename")`). Those come back through the
//! deserializer that called the visitor, which knows the dotted path, and
//! are turned into QEMU's wording there ([`Error::locate`]).

use std::fmt;

use super::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A complete message, already naming its key.
    Located(String),
    /// A struct member is missing (from serde's derived visitor).
    MissingField(&'static str),
    /// An enum got a value it does not know.
    UnknownVariant(String),
    /// A visitor got a value of another type; the text is what it expected.
    InvalidType(String),
    /// A visitor got a value it cannot accept; the text is what it expected.
    InvalidValue(String),
}

impl Error {
    pub(crate) fn located(message: impl Into<String>) -> Self {
        Self(Kind::Located(message.into()))
    }

    pub(crate) fn missing(path: &Path) -> Self {
        Self::located(format!("Parameter '{path}' is missing"))
    }

    pub(crate) fn unexpected(path: &Path) -> Self {
        Self::located(format!("Parameter '{path}' is unexpected"))
    }

    pub(crate) fn invalid_type(path: &Path, expected: &str) -> Self {
        Self::located(format!(
            "Invalid parameter type for '{path}', expected: {expected}"
        ))
    }

    pub(crate) fn expects(path: impl fmt::Display, expected: &str) -> Self {
        Self::located(format!("Parameter '{path}' expects {expected}"))
    }

    /// A value an enum does not have. A union's discriminator names its
    /// whole path; a plain enum only its own member name, or `null` for a
    /// list element, as QEMU's input visitor does.
    pub(crate) fn bad_enum_value(name: impl fmt::Display, value: &str) -> Self {
        Self::located(format!(
            "Parameter '{name}' does not accept value '{value}'"
        ))
    }

    /// Gives an error from a visitor at `path` its full message.
    pub(crate) fn locate(self, path: &Path) -> Self {
        match self.0 {
            Kind::Located(_) => self,
            Kind::MissingField(field) => Self::missing(&path.member(field)),
            Kind::UnknownVariant(value) => Self::bad_enum_value(path.last(), &value),
            Kind::InvalidType(expected) => Self::invalid_type(path, &expected),
            Kind::InvalidValue(expected) => Self::expects(path, &expected),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Located(message) => f.write_str(message),
            Kind::MissingField(field) => write!(f, "Parameter '{field}' is missing"),
            Kind::UnknownVariant(value) => write!(f, "Invalid value '{value}'"),
            Kind::InvalidType(expected) => {
                write!(f, "Invalid parameter type, expected: {expected}")
            }
            Kind::InvalidValue(expected) => write!(f, "Parameter expects {expected}"),
        }
    }
}

impl std::error::Error for Error {}

impl serde::de::Error for Error {
    /// Messages made with `custom` are taken as complete: inside this crate
    /// they carry an error that already names its key.
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::located(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Self(Kind::MissingField(field))
    }

    fn unknown_variant(variant: &str, _expected: &'static [&'static str]) -> Self {
        Self(Kind::UnknownVariant(variant.to_owned()))
    }

    fn invalid_type(
        _unexpected: serde::de::Unexpected<'_>,
        expected: &dyn serde::de::Expected,
    ) -> Self {
        Self(Kind::InvalidType(expected.to_string()))
    }

    fn invalid_value(
        _unexpected: serde::de::Unexpected<'_>,
        expected: &dyn serde::de::Expected,
    ) -> Self {
        Self(Kind::InvalidValue(expected.to_string()))
    }
}

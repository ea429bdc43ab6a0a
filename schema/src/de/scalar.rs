//! Reading one scalar leaf the way QEMU's QObject input visitor does, in
//! both its strict (JSON) and its keyval flavour.

use serde_json::Value as Json;

use super::error::Error;
use super::path::Path;
use crate::size::{parse_size, SizeError};
use crate::value::Origin;

/// The string of a keyval leaf. A keyval tree has no other scalars, so an
/// object or list here means the user wrote `key.sub=...` where `key=...`
/// was expected.
fn keyval_text(value: Json, path: &Path) -> Result<String, Error> {
    match value {
        Json::String(text) => Ok(text),
        Json::Object(_) | Json::Array(_) => Err(Error::located(format!(
            "Parameters '{path}.*' are unexpected"
        ))),
        _ => Err(Error::located(format!(
            "Internal error: parameter {path} invalid"
        ))),
    }
}

pub fn boolean(value: Json, path: &Path, origin: Origin) -> Result<bool, Error> {
    match origin {
        Origin::Json => value
            .as_bool()
            .ok_or_else(|| Error::invalid_type(path, "boolean")),
        Origin::Keyval | Origin::QemuOpts => match keyval_text(value, path)?.as_str() {
            "on" | "yes" | "true" | "y" => Ok(true),
            "off" | "no" | "false" | "n" => Ok(false),
            _ => Err(Error::expects(path, "'on' or 'off'")),
        },
    }
}

pub fn int64(value: Json, path: &Path, origin: Origin) -> Result<i64, Error> {
    match origin {
        Origin::Json => value
            .as_i64()
            .ok_or_else(|| Error::invalid_type(path, "integer")),
        Origin::Keyval => parse_c_integer(&keyval_text(value, path)?)
            .ok_or_else(|| Error::expects(path, "integer")),
        // QemuOpts numbers are unsigned; a signed member takes their bits.
        Origin::QemuOpts => uint64(value, path, origin).map(|v| v as i64),
    }
}

/// QEMU accepts negative JSON numbers for uint64 "for backward
/// compatibility" and keeps their two's complement bits; so do we.
pub fn uint64(value: Json, path: &Path, origin: Origin) -> Result<u64, Error> {
    match origin {
        Origin::Json => value
            .as_u64()
            .or_else(|| value.as_i64().map(|v| v as u64))
            .ok_or_else(|| Error::expects(path, "uint64")),
        Origin::Keyval => parse_c_unsigned(&keyval_text(value, path)?)
            .ok_or_else(|| Error::expects(path, "integer")),
        Origin::QemuOpts => {
            let text = keyval_text(value, path)?;
            parse_c_unsigned(&text).ok_or_else(|| match split_c_integer(&text) {
                // Digits that do not fit (`qemu_strtou64` says ERANGE).
                Some(_) => Error::located(format!(
                    "Value '{text}' is too large for parameter '{path}'"
                )),
                None => Error::expects(path, "a number"),
            })
        }
    }
}

/// A QAPI `size`: suffixes are allowed only in keyval syntax.
pub fn size(value: Json, path: &Path, origin: Origin) -> Result<u64, Error> {
    match origin {
        Origin::Json => uint64(value, path, origin),
        Origin::Keyval => {
            parse_size(&keyval_text(value, path)?).map_err(|_| Error::expects(path, "size"))
        }
        Origin::QemuOpts => {
            let text = keyval_text(value, path)?;
            parse_size(&text).map_err(|e| match e {
                SizeError::OutOfRange => Error::located(format!(
                    "Value '{text}' is out of range for parameter '{path}'"
                )),
                SizeError::Invalid => Error::expects(path, "a non-negative number below 2^64"),
            })
        }
    }
}

pub fn number(value: Json, path: &Path, origin: Origin) -> Result<f64, Error> {
    let parsed = match origin {
        Origin::Json => value.as_f64(),
        Origin::Keyval | Origin::QemuOpts => keyval_text(value, path)?
            .trim_start_matches(is_c_space)
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite()),
    };
    parsed.ok_or_else(|| Error::invalid_type(path, "number"))
}

pub fn string(value: Json, path: &Path, origin: Origin) -> Result<String, Error> {
    match origin {
        Origin::Json => match value {
            Json::String(text) => Ok(text),
            _ => Err(Error::invalid_type(path, "string")),
        },
        Origin::Keyval | Origin::QemuOpts => keyval_text(value, path),
    }
}

/// A signed integer narrower than 64 bits: QEMU reads an int64 and then
/// checks the range, naming only the last member and the C type.
pub fn narrow_signed(
    value: Json,
    path: &Path,
    origin: Origin,
    (min, max): (i64, i64),
    c_type: &str,
) -> Result<i64, Error> {
    let wide = int64(value, path, origin)?;
    if wide < min || wide > max {
        return Err(Error::expects(path.last(), c_type));
    }
    Ok(wide)
}

/// An unsigned integer narrower than 64 bits (see [`narrow_signed`]).
pub fn narrow_unsigned(
    value: Json,
    path: &Path,
    origin: Origin,
    max: u64,
    c_type: &str,
) -> Result<u64, Error> {
    let wide = uint64(value, path, origin)?;
    if wide > max {
        return Err(Error::expects(path.last(), c_type));
    }
    Ok(wide)
}

fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Splits `strtoll(s, NULL, 0)` input into sign, radix and digits: leading
/// white space, an optional sign, then `0x` (hex), `0` (octal) or decimal.
fn split_c_integer(text: &str) -> Option<(bool, u32, &str)> {
    let text = text.trim_start_matches(is_c_space);
    let (negative, text) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = text.get(..2).map(str::to_ascii_lowercase);
    let (radix, digits) = if lower.as_deref() == Some("0x")
        && text[2..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_hexdigit())
    {
        (16, &text[2..])
    } else if text.len() > 1 && text.starts_with('0') {
        (8, &text[1..])
    } else {
        (10, text)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some((negative, radix, digits))
}

/// `qemu_strtoi64(text, NULL, 0, ...)`: the whole string must be a number.
pub fn parse_c_integer(text: &str) -> Option<i64> {
    let (negative, radix, digits) = split_c_integer(text)?;
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// `qemu_strtou64(text, NULL, 0, ...)`: like `strtoull`, a minus sign
/// negates in two's complement.
pub fn parse_c_unsigned(text: &str) -> Option<u64> {
    let (negative, radix, digits) = split_c_integer(text)?;
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    Some(if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_integers() {
        assert_eq!(parse_c_integer("42"), Some(42));
        assert_eq!(parse_c_integer("-42"), Some(-42));
        assert_eq!(parse_c_integer(" +7"), Some(7));
        assert_eq!(parse_c_integer("0x1F"), Some(31));
        assert_eq!(parse_c_integer("010"), Some(8));
        assert_eq!(parse_c_integer("0"), Some(0));
        assert_eq!(parse_c_integer("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_c_integer("9223372036854775808"), None);
        assert_eq!(parse_c_integer("1G"), None);
        assert_eq!(parse_c_integer("08"), None);
        assert_eq!(parse_c_integer(""), None);
        assert_eq!(parse_c_integer("0x"), None);
        assert_eq!(parse_c_integer("1 "), None);
        assert_eq!(parse_c_unsigned("-1"), Some(u64::MAX));
        assert_eq!(parse_c_unsigned("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_c_unsigned("18446744073709551616"), None);
    }
}

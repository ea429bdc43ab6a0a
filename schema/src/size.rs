//! QAPI's `size` type: a byte count that keyval syntax may write with a
//! binary suffix (`64M`, `1.5G`), read exactly like QEMU's `qemu_strtosz`.
//! In JSON it is a plain unsigned integer.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The name the deserializer recognises to allow size suffixes.
pub(crate) const SIZE_TOKEN: &str = "$schema::Size";

/// A byte count written as a QAPI `size`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl From<Size> for u64 {
    fn from(size: Size) -> u64 {
        size.0
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl<'de> serde::de::Visitor<'de> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("size")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Size, D::Error> {
                u64::deserialize(d).map(Size)
            }
        }
        deserializer.deserialize_newtype_struct(SIZE_TOKEN, SizeVisitor)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

/// The multiplier of a size suffix (case-insensitive), as QEMU's
/// `suffix_mul` with a unit of 1024.
fn suffix_multiplier(suffix: u8) -> Option<u64> {
    let exponent = match suffix.to_ascii_uppercase() {
        b'B' => 0,
        b'K' => 1,
        b'M' => 2,
        b'G' => 3,
        b'T' => 4,
        b'P' => 5,
        b'E' => 6,
        _ => return None,
    };
    Some(1u64 << (10 * exponent))
}

/// Why a size did not parse; QEMU's option parser words the two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Not a size at all.
    Invalid,
    /// Negative, or 2^64 or more.
    OutOfRange,
}

/// `qemu_strtosz(text, NULL, ...)`: decimal digits with an optional
/// fraction, or `0x` hex digits without fraction or suffix; then an optional
/// suffix B/K/M/G/T/P/E. A fraction needs a suffix above B. The result
/// is rounded half up.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    if text.starts_with('-') {
        return Err(SizeError::OutOfRange);
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let integral_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let after_integral = &text[integral_len..];
    let integral = || -> Result<u64, SizeError> {
        match integral_len {
            0 => Ok(0),
            _ => text[..integral_len]
                .parse()
                .map_err(|_| SizeError::OutOfRange),
        }
    };

    if integral_len > 0 && integral()? == 0 && after_integral.starts_with(['x', 'X']) {
        let hex = &after_integral[1..];
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SizeError::Invalid);
        }
        return u64::from_str_radix(hex, 16).map_err(|_| SizeError::OutOfRange);
    }

    let (fraction, rest) = match after_integral.strip_prefix('.') {
        Some(after_dot) => {
            let len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            if integral_len == 0 && len == 0 {
                return Err(SizeError::Invalid);
            }
            let fraction: f64 = format!("0.{}", &after_dot[..len])
                .parse()
                .map_err(|_| SizeError::Invalid)?;
            (fraction, &after_dot[len..])
        }
        None if integral_len == 0 => return Err(SizeError::Invalid),
        None => (0.0, after_integral),
    };
    let integral = integral()?;

    let multiplier = match rest.as_bytes() {
        [] => 1,
        [suffix] => suffix_multiplier(*suffix).ok_or(SizeError::Invalid)?,
        _ => return Err(SizeError::Invalid),
    };
    if multiplier == 1 {
        return match fraction == 0.0 {
            true => Ok(integral),
            false => Err(SizeError::Invalid),
        };
    }
    // 64.64 fixed point, as QEMU computes it, so 1.5G is exact.
    let fraction_fixed = (fraction * 2f64.powi(64)) as u128;
    let whole = u128::from(integral) * u128::from(multiplier);
    let scaled_fraction = fraction_fixed * u128::from(multiplier);
    let rounded = whole + (scaled_fraction >> 64) + ((scaled_fraction >> 63) & 1);
    u64::try_from(rounded).map_err(|_| SizeError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::{parse_size, SizeError};

    fn ok(text: &str) -> Option<u64> {
        parse_size(text).ok()
    }

    #[test]
    fn sizes() {
        assert_eq!(ok("0"), Some(0));
        assert_eq!(ok("512"), Some(512));
        assert_eq!(ok("512B"), Some(512));
        assert_eq!(ok("1k"), Some(1024));
        assert_eq!(ok("64M"), Some(64 << 20));
        assert_eq!(ok("1G"), Some(1 << 30));
        assert_eq!(ok("1.5G"), Some(3 << 29));
        assert_eq!(ok("1.G"), Some(1 << 30));
        assert_eq!(ok(".5K"), Some(512));
        assert_eq!(ok("2T"), Some(2 << 40));
        assert_eq!(ok("1E"), Some(1 << 60));
        assert_eq!(ok("16E"), None);
        assert_eq!(ok("0x10"), Some(16));
        assert_eq!(ok("0x10K"), None);
        assert_eq!(ok("1.5"), None);
        assert_eq!(ok("1.5B"), None);
        assert_eq!(ok("-1"), None);
        assert_eq!(ok("1Q"), None);
        assert_eq!(ok("1KB"), None);
        assert_eq!(ok(""), None);
        assert_eq!(ok("."), None);
        assert_eq!(ok("18446744073709551615"), Some(u64::MAX));
        assert_eq!(ok("18446744073709551616"), None);
        assert_eq!(parse_size("-1"), Err(SizeError::OutOfRange));
        assert_eq!(parse_size("16E"), Err(SizeError::OutOfRange));
        assert_eq!(parse_size("1Q"), Err(SizeError::Invalid));
    }
}

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

/// `qemu_strtosz(text, NULL, ...)`: decimal digits with an optional
/// fraction, or `0x` hex digits without fraction or suffix; then an optional
/// suffix B/K/M/G/T/P/E. A fraction needs a suffix above B. The result
/// is rounded half up; overflow and negative numbers are errors.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let bytes = text.as_bytes();
    let integral_len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let after_integral = &text[integral_len..];

    if integral_len > 0
        && text[..integral_len].bytes().all(|b| b == b'0')
        && after_integral.starts_with(['x', 'X'])
    {
        let hex = &after_integral[1..];
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }

    let (fraction, rest) = match after_integral.strip_prefix('.') {
        Some(after_dot) => {
            let len = after_dot.bytes().take_while(|b| b.is_ascii_digit()).count();
            if integral_len == 0 && len == 0 {
                return None;
            }
            let fraction: f64 = format!("0.{}", &after_dot[..len]).parse().ok()?;
            (Some(fraction), &after_dot[len..])
        }
        None if integral_len == 0 => return None,
        None => (None, after_integral),
    };
    let integral: u64 = if integral_len == 0 {
        0
    } else {
        text[..integral_len].parse().ok()?
    };

    let multiplier = match rest.as_bytes() {
        [] => 1,
        [suffix] => suffix_multiplier(*suffix)?,
        _ => return None,
    };
    let fraction = fraction.unwrap_or(0.0);
    if multiplier == 1 {
        return (fraction == 0.0).then_some(integral);
    }
    // 64.64 fixed point, as QEMU computes it, so 1.5G is exact.
    let fraction_fixed = (fraction * 2f64.powi(64)) as u128;
    let whole = u128::from(integral) * u128::from(multiplier);
    let scaled_fraction = fraction_fixed * u128::from(multiplier);
    let rounded = whole + (scaled_fraction >> 64) + ((scaled_fraction >> 63) & 1);
    u64::try_from(rounded).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("1.G"), Some(1 << 30));
        assert_eq!(parse_size(".5K"), Some(512));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("1E"), Some(1 << 60));
        assert_eq!(parse_size("16E"), None);
        assert_eq!(parse_size("0x10"), Some(16));
        assert_eq!(parse_size("0x10K"), None);
        assert_eq!(parse_size("1.5"), None);
        assert_eq!(parse_size("1.5B"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("1Q"), None);
        assert_eq!(parse_size("1KB"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("."), None);
        assert_eq!(parse_size("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_size("18446744073709551616"), None);
    }
}

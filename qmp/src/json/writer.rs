//! Writes JSON the way QEMU's monitor does (`qobject/json-writer.c`).
//!
//! Members in QDict order ([`super::member_order`]), `": "` and `", "` as
//! separators, every character outside printable ASCII as an upper-case
//! `\uXXXX` escape (surrogate pairs above the BMP), noncharacters as
//! `\uFFFD`, doubles as C's `%.17g`. The pretty form (`--monitor
//! pretty=on`) puts each member on its own line indented by four spaces per
//! level. On the wire QEMU turns every newline into CRLF and ends each
//! message with CRLF ([`message`]).

use std::fmt::Write as _;

use serde_json::{Number, Value};

use super::member_order;
use super::mod_utf8;

/// `value` as one monitor message: QEMU's JSON text with CRLF line ends,
/// CRLF-terminated.
pub fn message(value: &Value, pretty: bool) -> Vec<u8> {
    let mut writer = Writer {
        out: String::new(),
        pretty,
        depth: 0,
        need_comma: false,
    };
    writer.value(None, value);
    let mut text = writer.out;
    text.push('\n');
    text.replace('\n', "\r\n").into_bytes()
}

struct Writer {
    out: String,
    pretty: bool,
    depth: usize,
    need_comma: bool,
}

impl Writer {
    fn newline(&mut self) {
        if self.pretty {
            self.out.push('\n');
            self.out.extend(std::iter::repeat_n(' ', self.depth * 4));
        }
    }

    /// QEMU's `maybe_comma_name`: the separator before a value, and its
    /// name when it is an object member.
    fn separator_and_name(&mut self, name: Option<&str>) {
        if self.need_comma {
            self.out.push(',');
            if self.pretty {
                self.newline();
            } else {
                self.out.push(' ');
            }
        } else {
            if !self.out.is_empty() {
                self.newline();
            }
            self.need_comma = true;
        }
        if let Some(name) = name {
            self.string(name);
            self.out.push_str(": ");
        }
    }

    fn value(&mut self, name: Option<&str>, value: &Value) {
        self.separator_and_name(name);
        match value {
            Value::Null => self.out.push_str("null"),
            Value::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => self.number(n),
            Value::String(s) => self.string(s),
            Value::Array(elements) => {
                self.out.push('[');
                self.enter();
                for element in elements {
                    self.value(None, element);
                }
                self.leave();
                self.out.push(']');
            }
            Value::Object(members) => {
                self.out.push('{');
                self.enter();
                for (key, member) in member_order::members(members) {
                    self.value(Some(key), member);
                }
                self.leave();
                self.out.push('}');
            }
        }
    }

    fn enter(&mut self) {
        self.depth += 1;
        self.need_comma = false;
    }

    fn leave(&mut self) {
        self.depth -= 1;
        self.need_comma = true;
        self.newline();
    }

    fn number(&mut self, n: &Number) {
        if let Some(i) = n.as_i64() {
            let _ = write!(self.out, "{i}");
        } else if let Some(u) = n.as_u64() {
            let _ = write!(self.out, "{u}");
        } else if let Some(f) = n.as_f64() {
            self.out.push_str(&format_g17(f));
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                ' '..='~' => self.out.push(c),
                _ => {
                    let cp = u32::from(c);
                    let cp = if mod_utf8::is_valid_codepoint(cp) {
                        cp
                    } else {
                        0xFFFD
                    };
                    if cp > 0xFFFF {
                        let offset = cp - 0x10000;
                        let high = 0xD800 + (offset >> 10);
                        let low = 0xDC00 + (offset & 0x3FF);
                        let _ = write!(self.out, "\\u{high:04X}\\u{low:04X}");
                    } else {
                        let _ = write!(self.out, "\\u{cp:04X}");
                    }
                }
            }
        }
        self.out.push('"');
    }
}

/// C's `printf("%.17g", f)` for a finite double.
fn format_g17(f: f64) -> String {
    const PRECISION: i32 = 17;
    // Scientific form with 17 significant digits, correctly rounded.
    let scientific = format!("{:.*e}", (PRECISION - 1) as usize, f);
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..PRECISION).contains(&exponent) {
        let mantissa = strip_fraction_zeros(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        let decimals = (PRECISION - 1 - exponent) as usize;
        strip_fraction_zeros(&format!("{f:.decimals$}")).to_string()
    }
}

/// `%g` drops trailing zeros of the fraction, and the point if nothing is
/// left after it.
fn strip_fraction_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(value: Value, pretty: bool) -> String {
        String::from_utf8(message(&value, pretty)).unwrap_or_default()
    }

    #[test]
    fn compact_like_qemu() {
        assert_eq!(
            text(json!({"return": {}, "id": [1, "x", null, true]}), false),
            "{\"return\": {}, \"id\": [1, \"x\", null, true]}\r\n"
        );
    }

    #[test]
    fn pretty_like_qemu() {
        assert_eq!(
            text(json!({"return": {}}), true),
            "{\r\n    \"return\": {\r\n    }\r\n}\r\n"
        );
        assert_eq!(
            text(json!({"capabilities": ["oob"]}), true),
            "{\r\n    \"capabilities\": [\r\n        \"oob\"\r\n    ]\r\n}\r\n"
        );
    }

    #[test]
    fn strings_escape_like_qemu() {
        assert_eq!(
            text(
                json!("é😀\0\u{7f}\"\\/\u{8}\u{c}\n\r\t\u{1}\u{ffff}"),
                false
            ),
            "\"\\u00E9\\uD83D\\uDE00\\u0000\\u007F\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\uFFFD\"\r\n"
        );
    }

    #[test]
    fn doubles_like_printf_g17() {
        for (value, expected) in [
            (0.1, "0.10000000000000001"),
            (1.0, "1"),
            (1.5e300, "1.5000000000000001e+300"),
            (1e-7, "9.9999999999999995e-08"),
            (1.8446744073709552e19, "1.8446744073709552e+19"),
            (-(2f64.powi(63)), "-9.2233720368547758e+18"),
            (1.2345678901234568e29, "1.2345678901234568e+29"),
            (0.0001, "0.0001"),
            (123456.5, "123456.5"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (-0.0, "-0"),
        ] {
            assert_eq!(format_g17(value), expected, "{value}");
        }
    }
}

//! QEMU's JSON parser (`qobject/json-parser.c`): the tokens of one message
//! to one value.
//!
//! The error texts are QEMU's, and like QEMU the first error found is the
//! one reported. Strings are decoded as QEMU does (modified UTF-8, `\'`,
//! surrogate pairs; noncharacters rejected). Integers become `i64` when they
//! fit, else `u64`, else `f64`, as QEMU's `QNum` does. One difference: a
//! number too large for an `f64` (`1e999`) is an error here, where QEMU
//! would keep an infinity and later print `inf`, which is not JSON.
//!
//! Recursion depth is bounded by the splitter's nesting limit.

use serde_json::{Map, Number, Value};

use super::lexer::TokenKind;
use super::mod_utf8;

/// One token of a message: its kind and where its text lies in the
/// message's text buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) start: u32,
    pub(crate) end: u32,
}

/// Why a message is not a value: QEMU's message, as bytes because it may
/// quote client bytes that are not UTF-8.
pub(crate) type ParseError = Vec<u8>;

/// Parses the tokens of one message.
pub(crate) fn parse(tokens: &[Token], text: &[u8]) -> Result<Value, ParseError> {
    Parser {
        tokens,
        text,
        next: 0,
    }
    .value()
}

fn error(message: impl AsRef<[u8]>) -> ParseError {
    let mut out = b"JSON parse error, ".to_vec();
    out.extend_from_slice(message.as_ref());
    out
}

fn premature_end() -> ParseError {
    error("premature EOI")
}

struct Parser<'a> {
    tokens: &'a [Token],
    text: &'a [u8],
    next: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.next).copied()
    }

    fn pop(&mut self) -> Option<Token> {
        let token = self.peek();
        self.next += 1;
        token
    }

    fn text_of(&self, token: Token) -> &'a [u8] {
        &self.text[token.start as usize..token.end as usize]
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        let token = self.peek().ok_or_else(premature_end)?;
        match token.kind {
            TokenKind::LeftCurly => self.object(),
            TokenKind::LeftSquare => self.array(),
            TokenKind::Integer | TokenKind::Float | TokenKind::String | TokenKind::Keyword => {
                self.next += 1;
                self.literal(token)
            }
            _ => Err(error("expecting value")),
        }
    }

    fn object(&mut self) -> Result<Value, ParseError> {
        self.pop();
        let mut members = Map::new();
        let first = self.peek().ok_or_else(premature_end)?;
        if first.kind == TokenKind::RightCurly {
            self.pop();
            return Ok(Value::Object(members));
        }
        loop {
            self.member(&mut members)?;
            let token = self.pop().ok_or_else(premature_end)?;
            match token.kind {
                TokenKind::RightCurly => return Ok(Value::Object(members)),
                TokenKind::Comma => {}
                _ => return Err(error("expected separator in dict")),
            }
        }
    }

    fn member(&mut self, members: &mut Map<String, Value>) -> Result<(), ParseError> {
        if self.peek().is_none() {
            return Err(premature_end());
        }
        let Value::String(key) = self.value()? else {
            return Err(error("key is not a string in object"));
        };
        let colon = self.pop().ok_or_else(premature_end)?;
        if colon.kind != TokenKind::Colon {
            return Err(error("missing : in object pair"));
        }
        let value = self.value()?;
        if members.contains_key(&key) {
            return Err(error("duplicate key"));
        }
        members.insert(key, value);
        Ok(())
    }

    fn array(&mut self) -> Result<Value, ParseError> {
        self.pop();
        let mut elements = Vec::new();
        let first = self.peek().ok_or_else(premature_end)?;
        if first.kind == TokenKind::RightSquare {
            self.pop();
            return Ok(Value::Array(elements));
        }
        loop {
            elements.push(self.value()?);
            let token = self.pop().ok_or_else(premature_end)?;
            match token.kind {
                TokenKind::RightSquare => return Ok(Value::Array(elements)),
                TokenKind::Comma => {}
                _ => return Err(error("expected separator in list")),
            }
        }
    }

    fn literal(&self, token: Token) -> Result<Value, ParseError> {
        let text = self.text_of(token);
        match token.kind {
            TokenKind::String => string(text).map(Value::String),
            TokenKind::Keyword => match text {
                b"true" => Ok(Value::Bool(true)),
                b"false" => Ok(Value::Bool(false)),
                b"null" => Ok(Value::Null),
                _ => {
                    let mut message = b"invalid keyword '".to_vec();
                    message.extend_from_slice(text);
                    message.push(b'\'');
                    Err(error(message))
                }
            },
            _ => number(text, token.kind == TokenKind::Integer),
        }
    }
}

/// A number token (ASCII by construction of the lexer).
fn number(text: &[u8], integer: bool) -> Result<Value, ParseError> {
    let text = std::str::from_utf8(text).map_err(|_| error("invalid number"))?;
    if integer {
        if let Ok(n) = text.parse::<i64>() {
            return Ok(Value::Number(n.into()));
        }
        if let Ok(n) = text.parse::<u64>() {
            return Ok(Value::Number(n.into()));
        }
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
        .ok_or_else(|| error(format!("number {text} is out of range")))
}

/// Four hex digits at `at` (bytes past the end read as NUL, so fail).
fn four_hex_digits(text: &[u8], at: usize) -> Option<u32> {
    (0..4).try_fold(0u32, |acc, i| {
        let digit = char::from(*text.get(at + i)?).to_digit(16)?;
        Some(acc << 4 | digit)
    })
}

/// Decodes a string token, quotes included (QEMU's `parse_string`).
fn string(text: &[u8]) -> Result<String, ParseError> {
    let quote = text[0];
    let mut out = String::new();
    let mut at = 1;
    while text.get(at).is_some_and(|&b| b != quote) {
        if text[at] != b'\\' {
            let (cp, used) = mod_utf8::codepoint(&text[at..]);
            match cp.and_then(char::from_u32) {
                Some(c) => out.push(c),
                None => return Err(error("invalid UTF-8 sequence in string")),
            }
            at += used;
            continue;
        }
        let escape_start = at;
        let escaped = text.get(at + 1).copied().unwrap_or(0);
        at += 2;
        let simple = match escaped {
            b'"' => Some('"'),
            b'\'' => Some('\''),
            b'\\' => Some('\\'),
            b'/' => Some('/'),
            b'b' => Some('\u{8}'),
            b'f' => Some('\u{c}'),
            b'n' => Some('\n'),
            b'r' => Some('\r'),
            b't' => Some('\t'),
            b'u' => None,
            _ => return Err(error("invalid escape sequence in string")),
        };
        if let Some(c) = simple {
            out.push(c);
            continue;
        }
        let mut cp = four_hex_digits(text, at);
        at += 4;
        if let Some(high @ 0xD800..=0xDBFF) = cp {
            if text.get(at) == Some(&b'\\') && text.get(at + 1) == Some(&b'u') {
                cp = match four_hex_digits(text, at + 2) {
                    Some(low @ 0xDC00..=0xDFFF) => {
                        at += 6;
                        Some(0x10000 + ((high & 0x3FF) << 10) + (low & 0x3FF))
                    }
                    _ => None,
                };
            }
        }
        match cp
            .filter(|&cp| mod_utf8::is_valid_codepoint(cp))
            .and_then(char::from_u32)
        {
            Some(c) => out.push(c),
            None => {
                let quoted = &text[escape_start..at.min(text.len())];
                let mut message = quoted.to_vec();
                message.extend_from_slice(b" is not a valid Unicode character");
                return Err(error(message));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_of(text: &str) -> Result<String, String> {
        string(text.as_bytes()).map_err(|e| String::from_utf8_lossy(&e).into_owned())
    }

    #[test]
    fn escapes() {
        assert_eq!(
            string_of(r#""a\"\\\/\b\f\n\r\t\'""#).unwrap(),
            "a\"\\/\u{8}\u{c}\n\r\t'"
        );
        assert_eq!(string_of(r#"'it"s'"#).unwrap(), "it\"s");
        assert_eq!(string_of(r#""\u00e9\ud83d\ude00\u0000""#).unwrap(), "é😀\0");
    }

    #[test]
    fn bad_escapes_have_qemus_messages() {
        assert_eq!(
            string_of(r#""\q""#).unwrap_err(),
            "JSON parse error, invalid escape sequence in string"
        );
        assert_eq!(
            string_of(r#""\ud800""#).unwrap_err(),
            r"JSON parse error, \ud800 is not a valid Unicode character"
        );
        assert_eq!(
            string_of(r#""\ud800\u0041""#).unwrap_err(),
            r"JSON parse error, \ud800 is not a valid Unicode character"
        );
        assert_eq!(
            string_of(r#""\uffff""#).unwrap_err(),
            r"JSON parse error, \uffff is not a valid Unicode character"
        );
        assert_eq!(
            string_of(r#""\u12""#).unwrap_err(),
            r#"JSON parse error, \u12" is not a valid Unicode character"#
        );
    }

    #[test]
    fn numbers_are_qnums() {
        assert_eq!(number(b"-0", true).unwrap(), serde_json::json!(0));
        assert_eq!(
            number(b"18446744073709551615", true).unwrap(),
            serde_json::json!(u64::MAX)
        );
        assert!(number(b"18446744073709551616", true).unwrap().is_f64());
        assert!(number(b"-9223372036854775809", true).unwrap().is_f64());
        assert!(number(b"1e999", false).is_err());
    }
}

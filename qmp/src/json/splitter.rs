//! Splits a byte stream into JSON messages, like QEMU's streamer
//! (`qobject/json-streamer.c`).
//!
//! Tokens are collected until braces and brackets balance (or one goes
//! negative); those tokens are one message. The input need not be split into
//! lines: messages may arrive in pieces or several per read. A lexical
//! error, or a message that breaks a limit, becomes one error message; the
//! tokens collected so far are dropped and splitting starts afresh with the
//! next token, exactly as QEMU does, so a client sees the same sequence of
//! errors from both.
//!
//! Limits: QEMU allows 64 MiB of token text per message; storaged allows
//! [`MAX_MESSAGE_BYTES`], far above any real command, so one client cannot
//! make the daemon hold much memory. Nesting is limited to [`MAX_NESTING`]
//! like QEMU. QEMU's separate limit of 2 Mi tokens cannot be reached within
//! the byte limit (each token counts at least two bytes), so it is not
//! repeated here.

use std::collections::VecDeque;

use serde_json::Value;

use super::lexer::{Lexer, TokenKind};
use super::mod_utf8;
use super::parser::{self, Token};

/// Largest message, counted as QEMU counts it: the bytes of all its tokens
/// (whitespace between tokens is free) plus one per token.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Deepest nesting of objects and arrays in a message (QEMU's limit).
pub const MAX_NESTING: i64 = 1024;

/// One message of the stream: a JSON value, or the text of the error QEMU
/// reports for it.
pub type Message = Result<Value, String>;

/// The splitter's state between bytes.
#[derive(Debug)]
pub struct Splitter {
    lexer: Lexer,
    pending: Pending,
}

/// The tokens of the message being collected.
#[derive(Debug, Default)]
struct Pending {
    braces: i64,
    brackets: i64,
    tokens: Vec<Token>,
    text: Vec<u8>,
    /// QEMU's `token_size`: the bytes of the collected tokens.
    size: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Self::new()
    }
}

impl Splitter {
    /// A splitter at the start of a stream.
    pub fn new() -> Self {
        Self {
            lexer: Lexer::new(MAX_MESSAGE_BYTES),
            pending: Pending::default(),
        }
    }

    /// Feeds one byte; every message it completes is pushed to `out` (one
    /// byte can complete two).
    pub fn feed(&mut self, byte: u8, out: &mut VecDeque<Message>) {
        let pending = &mut self.pending;
        self.lexer
            .feed(byte, &mut |kind, text| pending.add(kind, text, out));
    }

    /// Feeds bytes until one or more messages are complete; returns how many
    /// bytes it used. The rest of `input` is left for later, so a caller can
    /// act on each message before reading on, as QEMU's monitor does.
    pub fn feed_until_message(&mut self, input: &[u8], out: &mut VecDeque<Message>) -> usize {
        for (used, &byte) in input.iter().enumerate() {
            self.feed(byte, out);
            if !out.is_empty() {
                return used + 1;
            }
        }
        input.len()
    }
}

impl Pending {
    fn add(&mut self, kind: TokenKind, text: &[u8], out: &mut VecDeque<Message>) {
        match kind {
            TokenKind::LeftCurly => self.braces += 1,
            TokenKind::RightCurly => self.braces -= 1,
            TokenKind::LeftSquare => self.brackets += 1,
            TokenKind::RightSquare => self.brackets -= 1,
            TokenKind::Error => {
                // QEMU prints the token as a C string: up to its first NUL.
                let printed = text.split(|&b| b == 0).next().unwrap_or_default();
                let mut message = b"JSON parse error, stray '".to_vec();
                message.extend_from_slice(printed);
                message.push(b'\'');
                return self.finish(Err(message), out);
            }
            _ => {}
        }
        if self.size + text.len() + 1 > MAX_MESSAGE_BYTES {
            return self.finish(Err(b"JSON token size limit exceeded".to_vec()), out);
        }
        if self.braces + self.brackets > MAX_NESTING {
            return self.finish(Err(b"JSON nesting depth limit exceeded".to_vec()), out);
        }
        let start = self.text.len();
        self.text.extend_from_slice(text);
        self.tokens.push(Token {
            kind,
            // Both fit: the text never exceeds MAX_MESSAGE_BYTES.
            start: start as u32,
            end: self.text.len() as u32,
        });
        self.size += text.len();
        let open = self.braces > 0 || self.brackets > 0;
        if open && self.braces >= 0 && self.brackets >= 0 {
            return;
        }
        let parsed = parser::parse(&self.tokens, &self.text);
        self.finish(parsed, out);
    }

    fn finish(&mut self, message: Result<Value, parser::ParseError>, out: &mut VecDeque<Message>) {
        out.push_back(message.map_err(|text| mod_utf8::lossy(&text)));
        self.braces = 0;
        self.brackets = 0;
        self.size = 0;
        self.tokens.clear();
        self.text.clear();
        // Do not keep the memory of one huge message for the whole session.
        self.tokens.shrink_to(RETAINED_TOKENS);
        self.text.shrink_to(RETAINED_TEXT_BYTES);
    }
}

/// Buffer capacity kept between messages (ordinary commands fit in it).
const RETAINED_TOKENS: usize = 256;
const RETAINED_TEXT_BYTES: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(input: &[u8]) -> Vec<Message> {
        let mut splitter = Splitter::new();
        let mut out = VecDeque::new();
        for &b in input {
            splitter.feed(b, &mut out);
        }
        out.into()
    }

    fn err(text: &str) -> Message {
        Err(text.to_string())
    }

    #[test]
    fn messages_without_separators() {
        assert_eq!(
            split(br#"{"a":1}{"b":[2]}"c" "#),
            [Ok(json!({"a": 1})), Ok(json!({"b": [2]})), Ok(json!("c"))]
        );
    }

    #[test]
    fn qemu_error_sequences() {
        assert_eq!(
            split(br#"{"execute": @}"#),
            [
                err("JSON parse error, stray '@'"),
                err("JSON parse error, expecting value")
            ]
        );
        assert_eq!(
            split(br#"{"a":1}}"#),
            [
                Ok(json!({"a": 1})),
                err("JSON parse error, expecting value")
            ]
        );
        assert_eq!(
            split(br#"{"a" 1}"#),
            [err("JSON parse error, missing : in object pair")]
        );
        assert_eq!(
            split(br#"{"a":1 "b":2}"#),
            [err("JSON parse error, expected separator in dict")]
        );
        assert_eq!(
            split(br#"{1:2}"#),
            [err("JSON parse error, key is not a string in object")]
        );
        assert_eq!(
            split(br#"{"a":1,"a":2}"#),
            [err("JSON parse error, duplicate key")]
        );
        assert_eq!(
            split(br#"[tru]"#),
            [err("JSON parse error, invalid keyword 'tru'")]
        );
        assert_eq!(split(b"\xff"), [err("JSON parse error, stray '\u{FFFD}'")]);
        assert_eq!(split(b"\x00"), [err("JSON parse error, stray ''")]);
    }

    #[test]
    fn nesting_limit() {
        let depth = MAX_NESTING as usize;
        let ok = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(split(ok.as_bytes())[0].is_ok());
        let deep = format!("{}{}", "[".repeat(depth + 1), "]".repeat(depth + 1));
        let messages = split(deep.as_bytes());
        assert_eq!(messages[0], err("JSON nesting depth limit exceeded"));
        // The tokens after the error are split afresh, as in QEMU.
        assert_eq!(messages.len(), 2 + depth);
    }

    #[test]
    fn size_limit() {
        let big = format!("\"{}\"", "a".repeat(MAX_MESSAGE_BYTES));
        let messages = split(big.as_bytes());
        assert_eq!(messages[0], err("JSON token size limit exceeded"));
        let then = split(format!("{big}\n{{\"a\":1}}").as_bytes());
        assert_eq!(then.last(), Some(&Ok(json!({"a": 1}))));
    }

    #[test]
    fn random_bytes_never_panic_and_always_resynchronise() {
        const ALPHABET: &[u8] =
            b"{}[]:,\"'\\ \n0123456789-+.eEuatrfnl\x00\x01\x80\xc3\xa9\xed\xa0\xff";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let len = (next() % 64) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let mut splitter = Splitter::new();
            let mut out = VecDeque::new();
            for &b in input.iter().chain(b"\n\xff\n{\"after\":1}") {
                splitter.feed(b, &mut out);
            }
            assert_eq!(out.back(), Some(&Ok(json!({"after": 1}))), "{input:?}");
        }
    }
}

//! QEMU's JSON lexer (`qobject/json-lexer.c`), one byte at a time.
//!
//! It accepts QEMU's dialect: single-quoted strings, `\'` escapes, any run of
//! lowercase letters as a keyword (the parser rejects unknown ones), and
//! numbers as RFC 8259 writes them. A byte that cannot continue a token makes
//! an error token of everything read so far; the lexer then skips input up
//! to a structural character or a control character, which is how QEMU
//! resynchronises after garbage (clients send `0xFF` or a newline to reset
//! it, see QEMU's `docs/interop/qmp-spec.rst`). The lexer knows nothing about
//! messages: it hands each token to a callback.

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    LeftCurly,
    RightCurly,
    LeftSquare,
    RightSquare,
    Colon,
    Comma,
    Integer,
    Float,
    Keyword,
    String,
    /// Bytes that cannot start or continue a token.
    Error,
    /// A token that grew past the lexer's size limit, cut off there.
    Oversized,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Recovery,
    DoubleQuoted,
    DoubleQuotedEscape,
    SingleQuoted,
    SingleQuotedEscape,
    Zero,
    Sign,
    Digits,
    Mantissa,
    MantissaDigits,
    ExponentMark,
    ExponentSign,
    ExponentDigits,
    Keyword,
}

/// Where a byte takes the lexer.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// Consume the byte into the current token and go to this state.
    Continue(State),
    /// Consume the byte: it completes a token of this kind.
    Complete(TokenKind),
    /// The byte is not part of the current token, which is complete; the
    /// byte is looked at again from the start state.
    EndBefore(TokenKind),
    /// Consume the whitespace byte; nothing is pending.
    Skip,
    /// Consume the byte: the token so far is an error.
    Fail,
    /// Leave recovery; the byte is looked at again from the start state.
    Resynchronise,
}

/// QEMU's transition table (`json_lexer[][]`), as a function.
fn next(state: State, byte: u8) -> Next {
    use Next::*;
    use State::*;
    let in_string = |b: u8| (0x20..=0xFD).contains(&b);
    match state {
        Start => match byte {
            b'"' => Continue(DoubleQuoted),
            b'\'' => Continue(SingleQuoted),
            b'0' => Continue(Zero),
            b'1'..=b'9' => Continue(Digits),
            b'-' => Continue(Sign),
            b'{' => Complete(TokenKind::LeftCurly),
            b'}' => Complete(TokenKind::RightCurly),
            b'[' => Complete(TokenKind::LeftSquare),
            b']' => Complete(TokenKind::RightSquare),
            b',' => Complete(TokenKind::Comma),
            b':' => Complete(TokenKind::Colon),
            b'a'..=b'z' => Continue(Keyword),
            b' ' | b'\t' | b'\r' | b'\n' => Skip,
            _ => Fail,
        },
        Recovery => match byte {
            b'\t' => Continue(Recovery),
            0..=0x1F | 0xFE | 0xFF => Resynchronise,
            b'[' | b']' | b'{' | b'}' | b':' | b',' => Resynchronise,
            _ => Continue(Recovery),
        },
        DoubleQuoted => match byte {
            b'\\' => Continue(DoubleQuotedEscape),
            b'"' => Complete(TokenKind::String),
            b if in_string(b) => Continue(DoubleQuoted),
            _ => Fail,
        },
        SingleQuoted => match byte {
            b'\\' => Continue(SingleQuotedEscape),
            b'\'' => Complete(TokenKind::String),
            b if in_string(b) => Continue(SingleQuoted),
            _ => Fail,
        },
        DoubleQuotedEscape if in_string(byte) => Continue(DoubleQuoted),
        SingleQuotedEscape if in_string(byte) => Continue(SingleQuoted),
        DoubleQuotedEscape | SingleQuotedEscape => Fail,
        Zero => match byte {
            b'0'..=b'9' => Fail,
            b'.' => Continue(Mantissa),
            _ => EndBefore(TokenKind::Integer),
        },
        Sign => match byte {
            b'0' => Continue(Zero),
            b'1'..=b'9' => Continue(Digits),
            _ => Fail,
        },
        Digits => match byte {
            b'0'..=b'9' => Continue(Digits),
            b'e' | b'E' => Continue(ExponentMark),
            b'.' => Continue(Mantissa),
            _ => EndBefore(TokenKind::Integer),
        },
        Mantissa => match byte {
            b'0'..=b'9' => Continue(MantissaDigits),
            _ => Fail,
        },
        MantissaDigits => match byte {
            b'0'..=b'9' => Continue(MantissaDigits),
            b'e' | b'E' => Continue(ExponentMark),
            _ => EndBefore(TokenKind::Float),
        },
        ExponentMark => match byte {
            b'-' | b'+' => Continue(ExponentSign),
            b'0'..=b'9' => Continue(ExponentDigits),
            _ => Fail,
        },
        ExponentSign => match byte {
            b'0'..=b'9' => Continue(ExponentDigits),
            _ => Fail,
        },
        ExponentDigits => match byte {
            b'0'..=b'9' => Continue(ExponentDigits),
            _ => EndBefore(TokenKind::Float),
        },
        Keyword => match byte {
            b'a'..=b'z' => Continue(Keyword),
            _ => EndBefore(TokenKind::Keyword),
        },
    }
}

/// The lexer's state between bytes: the state machine and the token read so
/// far.
#[derive(Debug)]
pub(crate) struct Lexer {
    state: State,
    token: Vec<u8>,
    max_token_bytes: usize,
}

impl Lexer {
    /// A lexer that cuts off any token longer than `max_token_bytes` and
    /// reports it as [`TokenKind::Oversized`].
    pub(crate) fn new(max_token_bytes: usize) -> Self {
        Self {
            state: State::Start,
            token: Vec::new(),
            max_token_bytes,
        }
    }

    /// Feeds one byte; `emit` receives every token the byte completes (a
    /// byte can complete two: `1}` ends the number and is a brace).
    pub(crate) fn feed(&mut self, byte: u8, emit: &mut impl FnMut(TokenKind, &[u8])) {
        loop {
            let step = next(self.state, byte);
            let consumed = !matches!(step, Next::EndBefore(_) | Next::Resynchronise);
            if consumed {
                self.token.push(byte);
            }
            match step {
                Next::Continue(State::Recovery) => self.token.clear(),
                Next::Continue(state) => self.state = state,
                Next::Complete(kind) | Next::EndBefore(kind) => {
                    emit(kind, &self.token);
                    self.token.clear();
                    self.state = State::Start;
                }
                Next::Skip | Next::Resynchronise => {
                    self.token.clear();
                    self.state = State::Start;
                }
                Next::Fail => {
                    emit(TokenKind::Error, &self.token);
                    self.token.clear();
                    self.state = State::Recovery;
                }
            }
            if consumed {
                break;
            }
        }
        if self.token.len() > self.max_token_bytes {
            emit(TokenKind::Oversized, &self.token);
            self.token.clear();
            self.state = State::Start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(input: &[u8]) -> Vec<(TokenKind, String)> {
        let mut lexer = Lexer::new(1 << 20);
        let mut tokens = Vec::new();
        for &b in input {
            lexer.feed(b, &mut |kind, text: &[u8]| {
                tokens.push((kind, String::from_utf8_lossy(text).into_owned()))
            });
        }
        tokens
    }

    #[test]
    fn tokens_of_a_command() {
        use TokenKind::*;
        let tokens = lex(br#"{"execute": 'x', "id": [-1.5e3, 0, true]} "#);
        let kinds: Vec<_> = tokens.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                LeftCurly,
                String,
                Colon,
                String,
                Comma,
                String,
                Colon,
                LeftSquare,
                Float,
                Comma,
                Integer,
                Comma,
                Keyword,
                RightSquare,
                RightCurly
            ]
        );
        assert_eq!(tokens[3].1, "'x'");
        assert_eq!(tokens[8].1, "-1.5e3");
    }

    #[test]
    fn a_number_ends_only_when_a_byte_follows() {
        assert!(lex(b"42").is_empty());
        assert_eq!(lex(b"42}").len(), 2);
    }

    #[test]
    fn garbage_is_one_error_then_skipped_up_to_a_structural_byte() {
        let tokens = lex(b"@abc def]");
        assert_eq!(tokens[0], (TokenKind::Error, "@".to_string()));
        assert_eq!(tokens[1].0, TokenKind::RightSquare);
        assert_eq!(tokens.len(), 2);
    }

    #[test]
    fn control_byte_in_string_is_an_error_with_the_string_so_far() {
        let tokens = lex(b"\"ab\x01");
        assert_eq!(tokens, [(TokenKind::Error, "\"ab\x01".to_string())]);
    }

    #[test]
    fn oversized_token_is_cut_off() {
        let mut lexer = Lexer::new(4);
        let mut kinds = Vec::new();
        for &b in b"\"abcdef" {
            lexer.feed(b, &mut |kind, _: &[u8]| kinds.push(kind));
        }
        assert_eq!(kinds, [TokenKind::Oversized]);
    }
}

//! JSON as QEMU's monitor reads and writes it.
//!
//! QMP clients and scripts are written against QEMU's own JSON code, which
//! differs from a generic JSON library in ways a client can see: it accepts
//! single-quoted strings, reads a stream of messages without separators,
//! recovers from garbage in a particular way, reports errors with
//! particular texts, and writes members in hash-table order with `\uXXXX`
//! escapes. This module reproduces that: [`Splitter`] turns bytes into
//! messages, [`message`] turns a value into the bytes QEMU would send.

mod lexer;
pub(crate) mod member_order;
mod mod_utf8;
mod parser;
mod splitter;
mod writer;

pub use splitter::{Message, Splitter, MAX_MESSAGE_BYTES, MAX_NESTING};
pub use writer::message;

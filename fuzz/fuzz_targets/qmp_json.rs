//! Bytes as a QMP client sends them, through the monitor's JSON splitter
//! (QEMU's lexer, nesting and size limits, error recovery), and each
//! message found through the schema as `blockdev-add` arguments: any
//! input gives messages or errors, never a panic or unbounded memory.
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use qmp::json::Splitter;
use schema::block::BlockdevOptions;

fuzz_target!(|data: &[u8]| {
    let mut splitter = Splitter::new();
    let mut messages = VecDeque::new();
    let mut rest = data;
    while !rest.is_empty() {
        let used = splitter.feed_until_message(rest, &mut messages);
        rest = &rest[used.max(1).min(rest.len())..];
    }
    for value in messages.into_iter().flatten() {
        let _ = schema::from_json::<BlockdevOptions>(value);
    }
});

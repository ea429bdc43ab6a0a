//! NBD request headers as a client sends them after the handshake, in
//! each reply mode (simple, structured, extended headers): decoded,
//! sized and checked against an export as the transmission phase does.
//! Any bytes give a request or a rejection, never a panic.
#![no_main]

use exports::nbd::codec::{ReplyMode, Request};
use exports::nbd::request::{check, payload_len, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mode = match selector % 3 {
        0 => ReplyMode::Simple,
        1 => ReplyMode::Structured,
        _ => ReplyMode::Extended,
    };
    let limits = Limits {
        mode,
        size: 1 << 30,
        writable: selector & 0x10 != 0,
        alignment: if selector & 0x20 != 0 { 4096 } else { 1 },
        contexts: usize::from(selector >> 6),
    };
    for header in rest.chunks_exact(mode.request_len()) {
        if let Ok(request) = Request::decode(mode, header) {
            let _ = payload_len(&request, mode);
            let _ = check(&request, &limits);
        }
    }
});

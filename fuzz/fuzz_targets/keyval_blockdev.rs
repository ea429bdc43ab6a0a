//! `--blockdev`, `--export` and `--nbd-server` arguments as the command
//! line gives them (keyval, or JSON when they start with `{`), through
//! the schema's deserializer: any input gives a value or an error, never
//! a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schema::block::BlockdevOptions;
use schema::export::{BlockExportOptions, NbdServerOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = schema::parse_option::<BlockdevOptions>(text, Some("driver"));
    let _ = schema::parse_option::<BlockExportOptions>(text, Some("type"));
    let _ = schema::parse_option::<NbdServerOptions>(text, None);
});

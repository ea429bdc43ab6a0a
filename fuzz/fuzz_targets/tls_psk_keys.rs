//! PSK key files (psktool's `user:hexkey` lines) as a server and a
//! client of `tls-creds-psk` read them: any bytes give credentials or a
//! message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdwire::tls::psk;

fuzz_target!(|data: &[u8]| {
    let _ = psk::server(data, "keys.psk");
    let _ = psk::client(data, "keys.psk", "qemu");
});

//! The NBD protocol as both sides need it: the wire constants (`proto`)
//! and the client side of the connection and handshake (`client`), which
//! the server in `exports` and the daemon's clients (`qemu-nbd --list`,
//! the `nbd` block driver) share; and the TLS sessions NBD runs over
//! (`tls`).

pub mod client;
pub mod proto;
pub mod tls;

//! The NBD protocol as both sides need it: the wire constants (`proto`)
//! and the client side of the handshake (`client`), which the server in
//! `exports` and the clients of the daemon (`qemu-nbd --list`, later the
//! `nbd` block driver) share.

pub mod client;
pub mod proto;

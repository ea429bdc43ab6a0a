//! Socket addresses (`qapi/sockets.json`): the flat form
//! ([`SocketAddress`], `addr.type=unix,addr.path=...`) used by the
//! command line and most commands, and the legacy nested form
//! ([`SocketAddressLegacy`], `{"type": "unix", "data": {"path": ...}}`)
//! that `nbd-server-start` and `chardev-add` take.

use crate::introspect::Introspect;
use serde::{Deserialize, Serialize};

use crate::de::union::qapi_union;

/// A TCP address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct InetSocketAddress {
    pub host: String,
    /// A port number or service name.
    pub port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numeric: Option<bool>,
    /// Try ports from `port` up to this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mptcp: Option<bool>,
}

/// A Unix domain socket address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct UnixSocketAddress {
    pub path: String,
    /// Linux abstract namespace instead of the file system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#abstract: Option<bool>,
    /// With `abstract`: the address length is the name's (default on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tight: Option<bool>,
}

/// A vsock address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct VsockSocketAddress {
    pub cid: String,
    pub port: String,
}

/// A file descriptor passed in earlier, by number or name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct FdSocketAddress {
    pub str: String,
}

qapi_union! {
    /// A socket address in the flat form.
    pub struct SocketAddress {}
    discriminator "type" => pub addr: SocketAddressKind {
        "inet" => Inet(InetSocketAddress),
        "unix" => Unix(UnixSocketAddress),
        "vsock" => Vsock(VsockSocketAddress),
        "fd" => Fd(FdSocketAddress),
    }
}

/// The `data` wrapper of a legacy address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct Wrapped<T> {
    pub data: T,
}

qapi_union! {
    /// A socket address in the legacy nested form.
    pub struct SocketAddressLegacy {}
    discriminator "type" => pub addr: SocketAddressLegacyKind {
        "inet" => Inet(Wrapped<InetSocketAddress>),
        "unix" => Unix(Wrapped<UnixSocketAddress>),
        "vsock" => Vsock(Wrapped<VsockSocketAddress>),
        "fd" => Fd(Wrapped<FdSocketAddress>),
    }
}

impl From<SocketAddressLegacy> for SocketAddress {
    fn from(legacy: SocketAddressLegacy) -> Self {
        let addr = match legacy.addr {
            SocketAddressLegacyKind::Inet(w) => SocketAddressKind::Inet(w.data),
            SocketAddressLegacyKind::Unix(w) => SocketAddressKind::Unix(w.data),
            SocketAddressLegacyKind::Vsock(w) => SocketAddressKind::Vsock(w.data),
            SocketAddressLegacyKind::Fd(w) => SocketAddressKind::Fd(w.data),
        };
        SocketAddress { addr }
    }
}

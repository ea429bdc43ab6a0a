//! User-creatable objects (`--object`, `object-add`; `qapi/qom.json`):
//! secrets, iothreads, throttle groups, TLS credentials and authorization
//! lists; and the arguments of `qom-list`, `qom-get` and `qom-set`.

use crate::introspect::Introspect;
use serde::{Deserialize, Serialize};

use crate::de::union::qapi_union;

/// Implied key of `--object`.
pub const OBJECT_IMPLIED_KEY: &str = "qom-type";

/// How secret data is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum QCryptoSecretFormat {
    #[default]
    Raw,
    Base64,
}

/// A secret, given inline (`data`) or read from a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct SecretProperties {
    pub format: Option<QCryptoSecretFormat>,
    /// Id of a secret that decrypts this one (AES-256-CBC).
    pub keyid: Option<String>,
    /// Base64 initialization vector for `keyid`.
    pub iv: Option<String>,
    pub data: Option<String>,
    pub file: Option<String>,
}

/// An I/O thread. Polling parameters are accepted; how closely they are
/// honoured is the daemon's business.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct IothreadProperties {
    pub aio_max_batch: Option<i64>,
    pub thread_pool_min: Option<i64>,
    pub thread_pool_max: Option<i64>,
    pub poll_max_ns: Option<i64>,
    pub poll_grow: Option<i64>,
    pub poll_shrink: Option<i64>,
}

/// Properties of QEMU's `main-loop` object (`MainLoopProperties`): read,
/// then refused, since storaged's loops are not QEMU's main loop.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct MainLoopProperties {
    pub aio_max_batch: Option<i64>,
    pub thread_pool_min: Option<i64>,
    pub thread_pool_max: Option<i64>,
}

/// Properties of QEMU's `thread-context` object
/// (`ThreadContextProperties`): read, then refused, since storaged
/// creates no threads on another's behalf.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ThreadContextProperties {
    pub cpu_affinity: Option<Vec<u16>>,
    pub node_affinity: Option<Vec<u16>>,
}

/// Defines [`ThrottleLimits`] and [`ThrottleGroupProperties`] from one
/// list of limits, each with its QAPI name and the unstable flat `x-`
/// member that sets it.
macro_rules! throttle_limits {
    ($( $limit:ident / $flat:ident = $name:literal, )*) => {
        /// I/O limits of a throttle group (`ThrottleLimits`).
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
        #[serde(rename_all = "kebab-case")]
        pub struct ThrottleLimits {
            $( pub $limit: Option<i64>, )*
        }

        impl ThrottleLimits {
            /// How many members there are.
            pub const COUNT: usize = [$( $name, )*].len();

            /// The members' QAPI names, in the order of
            /// [`ThrottleLimits::to_array`] (QEMU's order of the
            /// throttle group's properties); the flat property of each is
            /// its name with `x-` in front.
            pub const NAMES: [&'static str; Self::COUNT] = [$( $name, )*];

            /// The members in the order of [`ThrottleLimits::NAMES`].
            pub fn to_array(&self) -> [Option<i64>; Self::COUNT] {
                [$( self.$limit, )*]
            }

            /// The limits with the members in the order of
            /// [`ThrottleLimits::NAMES`].
            pub fn from_array(values: [Option<i64>; Self::COUNT]) -> Self {
                let [$( $limit, )*] = values;
                ThrottleLimits { $( $limit, )* }
            }
        }

        /// A throttle group: `limits`, and/or the unstable flat `x-`
        /// members.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
        #[serde(rename_all = "kebab-case")]
        pub struct ThrottleGroupProperties {
            pub limits: Option<ThrottleLimits>,
            $(
                #[introspect(features("unstable"))]
                pub $flat: Option<i64>,
            )*
        }

        impl ThrottleGroupProperties {
            /// The flat `x-` members, in the order of
            /// [`ThrottleLimits::NAMES`].
            pub fn flat_members(&self) -> [Option<i64>; ThrottleLimits::COUNT] {
                [$( self.$flat, )*]
            }

            /// The limits to apply: `limits` with every `x-` member that is
            /// set on top (QEMU accepts both forms together).
            pub fn effective_limits(&self) -> ThrottleLimits {
                let limits = self.limits.clone().unwrap_or_default();
                ThrottleLimits {
                    $( $limit: self.$flat.or(limits.$limit), )*
                }
            }
        }
    };
}

throttle_limits! {
    iops_total / x_iops_total = "iops-total",
    iops_total_max / x_iops_total_max = "iops-total-max",
    iops_total_max_length / x_iops_total_max_length = "iops-total-max-length",
    iops_read / x_iops_read = "iops-read",
    iops_read_max / x_iops_read_max = "iops-read-max",
    iops_read_max_length / x_iops_read_max_length = "iops-read-max-length",
    iops_write / x_iops_write = "iops-write",
    iops_write_max / x_iops_write_max = "iops-write-max",
    iops_write_max_length / x_iops_write_max_length = "iops-write-max-length",
    bps_total / x_bps_total = "bps-total",
    bps_total_max / x_bps_total_max = "bps-total-max",
    bps_total_max_length / x_bps_total_max_length = "bps-total-max-length",
    bps_read / x_bps_read = "bps-read",
    bps_read_max / x_bps_read_max = "bps-read-max",
    bps_read_max_length / x_bps_read_max_length = "bps-read-max-length",
    bps_write / x_bps_write = "bps-write",
    bps_write_max / x_bps_write_max = "bps-write-max",
    bps_write_max_length / x_bps_write_max_length = "bps-write-max-length",
    iops_size / x_iops_size = "iops-size",
}

/// Which side of a TLS connection credentials are for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum QCryptoTlsCredsEndpoint {
    Client,
    #[default]
    Server,
}

/// Anonymous TLS credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct TlsCredsAnonProperties {
    pub verify_peer: Option<bool>,
    pub dir: Option<String>,
    pub endpoint: Option<QCryptoTlsCredsEndpoint>,
    pub priority: Option<String>,
}

/// Pre-shared-key TLS credentials (`dir/keys.psk`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct TlsCredsPskProperties {
    pub verify_peer: Option<bool>,
    pub dir: Option<String>,
    pub endpoint: Option<QCryptoTlsCredsEndpoint>,
    pub priority: Option<String>,
    pub username: Option<String>,
}

/// X.509 TLS credentials (`dir/ca-cert.pem`, `server-cert.pem`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct TlsCredsX509Properties {
    pub verify_peer: Option<bool>,
    pub dir: Option<String>,
    pub endpoint: Option<QCryptoTlsCredsEndpoint>,
    pub priority: Option<String>,
    pub sanity_check: Option<bool>,
    /// Id of a secret holding the private key's password.
    pub passwordid: Option<String>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum QAuthZListPolicy {
    #[default]
    Deny,
    Allow,
}

/// How a rule's `match` is compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum QAuthZListFormat {
    #[default]
    Exact,
    Glob,
}

/// One rule of an `authz-list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct QAuthZListRule {
    pub r#match: String,
    pub policy: QAuthZListPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<QAuthZListFormat>,
}

/// Authorizes exactly one identity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct AuthZSimpleProperties {
    pub identity: String,
}

/// Authorizes by a list of rules; the first match decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct AuthZListProperties {
    pub policy: Option<QAuthZListPolicy>,
    pub rules: Option<Vec<QAuthZListRule>>,
}

/// An `authz-list` whose rules are read from a JSON file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct AuthZListFileProperties {
    pub filename: String,
    pub refresh: Option<bool>,
}

qapi_union! {
    /// An object to create (`--object`, `object-add`).
    pub struct ObjectOptions {
        pub id: String,
    }
    /// The object type and its properties.
    discriminator "qom-type" => pub kind: ObjectKind {
        "authz-list" => AuthzList(AuthZListProperties),
        "authz-listfile" => AuthzListfile(AuthZListFileProperties),
        "authz-simple" => AuthzSimple(AuthZSimpleProperties),
        "iothread" => Iothread(IothreadProperties),
        "main-loop" => MainLoop(MainLoopProperties),
        "secret" => Secret(SecretProperties),
        "thread-context" => ThreadContext(ThreadContextProperties),
        "throttle-group" => ThrottleGroup(Box<ThrottleGroupProperties>),
        "tls-creds-anon" => TlsCredsAnon(TlsCredsAnonProperties),
        "tls-creds-psk" => TlsCredsPsk(TlsCredsPskProperties),
        "tls-creds-x509" => TlsCredsX509(TlsCredsX509Properties),
    }
}

/// `object-del`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct ObjectDelArgs {
    pub id: String,
}

/// `qom-list`: the properties of the object at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct QomListArgs {
    /// An absolute path (`/objects/tg0`) or a partial one that names one
    /// object (`tg0`).
    pub path: String,
}

/// `qom-get`: one property of the object at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct QomGetArgs {
    pub path: String,
    pub property: String,
}

/// `qom-set`: sets one property of the object at `path`; `value` is
/// checked against the property's own type.
#[derive(Debug, Clone, PartialEq, Deserialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub struct QomSetArgs {
    pub path: String,
    pub property: String,
    pub value: serde_json::Value,
}

/// One element of `qom-list-types` (`ObjectTypeInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct ObjectTypeInfo {
    pub name: String,
    #[serde(rename = "abstract", skip_serializing_if = "Option::is_none")]
    pub is_abstract: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// `qom-list-types`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct QomListTypesArgs {
    pub implements: Option<String>,
    #[serde(rename = "abstract")]
    pub include_abstract: Option<bool>,
}

/// `qom-list-properties`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct QomListPropertiesArgs {
    pub typename: String,
}

/// One entry of `qom-list`'s reply (`ObjectPropertyInfo`; QSD gives
/// neither `description` nor `default-value` for the objects it lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct ObjectPropertyInfo {
    pub name: String,
    /// `string`, `int`, `child<secret>`, `ThrottleLimits`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

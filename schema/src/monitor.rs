//! The types of the commands the monitor answers itself
//! (`qmp_capabilities`, `query-commands`), for `query-qmp-schema`. The
//! monitor (the `qmp` crate) reads and writes the same shapes with QEMU's
//! checks and messages; its tests hold the two together.

use serde::{Deserialize, Serialize};

use crate::introspect::Introspect;

/// A capability `qmp_capabilities` can enable (`QMPCapability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Introspect)]
#[serde(rename_all = "kebab-case")]
pub enum QmpCapability {
    Oob,
}

/// `qmp_capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Introspect)]
pub struct QmpCapabilitiesArgs {
    pub enable: Option<Vec<QmpCapability>>,
}

/// One element of `query-commands` (`CommandInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct CommandInfo {
    pub name: String,
}

//! QMP error classes and the error value every command returns.
//!
//! QEMU reports nearly everything as `GenericError`; the other classes exist
//! for the few cases clients match on. The wire form is
//! `{"error": {"class": "...", "desc": "..."}}`.

use crate::introspect::Introspect;
use serde::Serialize;

/// The error classes QEMU's QMP uses (`qapi/error.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Introspect)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotActive,
    DeviceNotFound,
    KVMMissingCap,
}

/// An error as a QMP client sees it: a class and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Introspect)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        Self {
            class,
            desc: desc.into(),
        }
    }
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.desc)
    }
}

impl std::error::Error for QmpError {}

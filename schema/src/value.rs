//! A parsed option or argument tree and the syntax it came from.
//!
//! The tree itself is plain JSON. What differs is how leaves are read: a
//! tree parsed from keyval syntax holds only strings, which the target type
//! coerces (`on` becomes `true`, `1G` becomes 1073741824 where a size is
//! expected); a tree from JSON is typed and read strictly, as QMP does.

use serde::de::DeserializeOwned;

use crate::de;
use crate::QmpError;

/// The syntax a [`Value`] was written in; it decides how leaves are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `key=val,...`: every leaf is a string, coerced by the target type.
    Keyval,
    /// JSON (QMP arguments, or `--blockdev '{...}'`): leaves are typed.
    Json,
    /// QEMU's older option syntax (`--chardev`): flat string leaves, read
    /// like keyval but with that parser's own error wording.
    QemuOpts,
}

/// An option tree and its [`Origin`].
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    tree: serde_json::Value,
    origin: Origin,
}

impl Value {
    /// A typed tree, read strictly.
    pub fn from_json(tree: serde_json::Value) -> Self {
        Self {
            tree,
            origin: Origin::Json,
        }
    }

    /// A tree of string leaves built by the keyval parser.
    pub(crate) fn from_keyval(tree: serde_json::Value) -> Self {
        Self {
            tree,
            origin: Origin::Keyval,
        }
    }

    /// A flat object of string leaves built by the QemuOpts parser.
    pub(crate) fn from_qemu_opts(tree: serde_json::Value) -> Self {
        Self {
            tree,
            origin: Origin::QemuOpts,
        }
    }

    pub fn tree(&self) -> &serde_json::Value {
        &self.tree
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn into_tree(self) -> serde_json::Value {
        self.tree
    }

    /// Deserializes the tree into a schema type.
    pub fn deserialize_into<T: DeserializeOwned>(self) -> Result<T, QmpError> {
        de::from_tree(self.tree, self.origin)
    }
}

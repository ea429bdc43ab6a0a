//! The dotted name of the member being read, as QEMU prints it in errors:
//! `file.filename`, and for list elements `bitmaps[1]` in JSON but
//! `bitmaps.1` in keyval syntax.

use std::fmt;

use crate::value::Origin;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path {
    full: String,
    /// Whether the last step is a list element, which has no name.
    element: bool,
}

impl Path {
    /// The path of the whole tree.
    pub fn root() -> Self {
        Self::default()
    }

    /// The path of member `name` of the object at `self`.
    pub fn member(&self, name: &str) -> Self {
        let full = if self.full.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.full)
        };
        Self {
            full,
            element: false,
        }
    }

    /// The path of element `index` of the list at `self`.
    pub fn element(&self, index: usize, origin: Origin) -> Self {
        let full = match origin {
            Origin::Keyval | Origin::QemuOpts => format!("{}.{index}", self.full),
            Origin::Json => format!("{}[{index}]", self.full),
        };
        Self {
            full,
            element: true,
        }
    }

    /// The last member name, which QEMU uses in a few messages; list
    /// elements and the root have none and QEMU prints `null`.
    pub fn last(&self) -> &str {
        match self.full.rsplit('.').next() {
            Some(last) if !self.element && !last.is_empty() => last,
            _ => "null",
        }
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// A path carried through a capture.
    pub(crate) fn from_parts(full: String, element: bool) -> Self {
        Self { full, element }
    }

    pub(crate) fn is_element(&self) -> bool {
        self.element
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.full.is_empty() {
            f.write_str("<anonymous>")
        } else {
            f.write_str(&self.full)
        }
    }
}

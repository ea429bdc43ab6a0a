//! The dotted name of the member being read, as QEMU prints it in errors:
//! `file.filename`, and for list elements `bitmaps[1]` in JSON but
//! `bitmaps.1` in keyval syntax.

use std::fmt;

use crate::value::Origin;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    /// The path of the whole tree.
    pub fn root() -> Self {
        Self::default()
    }

    /// The path of member `name` of the object at `self`.
    pub fn member(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// The path of element `index` of the list at `self`.
    pub fn element(&self, index: usize, origin: Origin) -> Self {
        match origin {
            Origin::Keyval => Self(format!("{}.{index}", self.0)),
            Origin::Json => Self(format!("{}[{index}]", self.0)),
        }
    }

    /// The last member name, which QEMU uses in a few messages.
    pub fn last(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<anonymous>")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl Path {
    /// A path carried through a capture, already in display form.
    pub(crate) fn from_str_unchecked(path: String) -> Self {
        Self(path)
    }
}

//! The schema: every option and command type of storaged, as plain serde
//! types. Both the command line (keyval or JSON) and QMP deserialize into
//! these, so there is exactly one definition of each option.

pub mod error;

pub use error::{ErrorClass, QmpError};

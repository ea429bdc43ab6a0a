//! The QMP commands the daemon implements, as a table.
//!
//! Each module is one group of commands and exports a `COMMANDS` table of
//! [`Command`]s; [`GROUPS`] lists the tables. Adding a group is one module
//! and one line in [`GROUPS`]. `qmp_capabilities` and `query-commands`
//! belong to the monitor (the `qmp` crate), not to this table.
//!
//! A handler takes the arguments as the monitor received them (an object)
//! and reads them into its schema type with [`arguments`], so unknown or
//! mistyped members get QEMU's messages. Handlers that the command line
//! shares (`--blockdev` is `blockdev-add`) keep their work in a typed
//! function the command line calls directly.

mod bitmap;
mod block;
mod blockjob;
mod export;
mod job;
mod misc;
mod object;
mod qom;
mod snapshot;
mod stats;
mod transaction;

pub use block::blockdev_add;
pub use export::{block_export_add, nbd_server_start};
pub use object::object_add;

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use schema::{ErrorClass, QmpError};

use crate::state::Daemon;

/// What a handler returns: the `return` value (`Value::Null` for none) or
/// the error.
pub type CommandResult = Result<Value, QmpError>;

/// A running handler.
pub type CommandFuture<'a> = Pin<Box<dyn Future<Output = CommandResult> + Send + 'a>>;

/// A handler: the daemon and the request's arguments.
pub type Handler = for<'a> fn(&'a Daemon, Map<String, Value>) -> CommandFuture<'a>;

/// One QMP command.
pub struct Command {
    pub name: &'static str,
    pub run: Handler,
}

/// Every group, in the order `query-commands` lists them.
const GROUPS: &[&[Command]] = &[
    misc::COMMANDS,
    block::COMMANDS,
    export::COMMANDS,
    object::COMMANDS,
    qom::COMMANDS,
    job::COMMANDS,
    blockjob::COMMANDS,
    bitmap::COMMANDS,
    snapshot::COMMANDS,
    transaction::COMMANDS,
    stats::COMMANDS,
];

/// Makes a [`Command`] of an `async fn(&Daemon, Map<String, Value>)`.
macro_rules! command {
    ($name:literal, $handler:path) => {
        $crate::commands::Command {
            name: $name,
            run: |daemon, arguments| Box::pin($handler(daemon, arguments)),
        }
    };
}
pub(crate) use command;

/// The names of every command, for `query-commands`.
pub fn names() -> Vec<String> {
    GROUPS
        .iter()
        .flat_map(|group| group.iter())
        .map(|command| command.name.to_owned())
        .collect()
}

/// Runs `name`. The monitor only passes names from [`names`]; anything
/// else gets QEMU's `CommandNotFound`.
pub async fn execute(daemon: &Daemon, name: &str, arguments: Map<String, Value>) -> CommandResult {
    let command = GROUPS
        .iter()
        .flat_map(|group| group.iter())
        .find(|command| command.name == name);
    match command {
        Some(command) => (command.run)(daemon, arguments).await,
        None => Err(QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {name} has not been found"),
        )),
    }
}

/// Reads a request's arguments into the command's schema type.
pub fn arguments<T: DeserializeOwned>(arguments: Map<String, Value>) -> Result<T, QmpError> {
    schema::from_json(Value::Object(arguments))
}

/// The arguments of a command that takes none: any member is unexpected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

/// A return value as JSON.
pub fn returning<T: Serialize>(value: T) -> CommandResult {
    serde_json::to_value(value)
        .map_err(|error| QmpError::generic(format!("cannot encode the reply: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names = names();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count);
    }
}

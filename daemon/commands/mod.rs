//! The QMP commands the daemon implements, as a table.
//!
//! Each module is one group of commands and exports a `COMMANDS` table of
//! [`Command`]s; [`GROUPS`] lists the tables. Adding a group is one module
//! and one line in [`GROUPS`]. `qmp_capabilities` and `query-commands`
//! belong to the monitor (the `qmp` crate), not to this table.
//!
//! A handler takes its arguments as its schema type and returns its reply
//! type; [`command!`] reads the request into the one and writes the other,
//! so unknown or mistyped members get QEMU's messages and
//! `query-qmp-schema` describes exactly what is read and written. Handlers that the command line
//! shares (`--blockdev` is `blockdev-add`) keep their work in a typed
//! function the command line calls directly.

mod bitmap;
mod block;
mod blockjob;
mod chardev;
mod export;
mod introspection;
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

use schema::introspect::{Empty, Introspect, SchemaBuilder};
use schema::{ErrorClass, QmpError};

use crate::state::Daemon;

/// What the monitor gets back from a command: the `return` value
/// (`Value::Null` for none) or the error.
pub type CommandResult = Result<Value, QmpError>;

/// A running command.
pub type CommandFuture<'a> = Pin<Box<dyn Future<Output = CommandResult> + Send + 'a>>;

/// One QMP command: its name, how to run it on the arguments as the
/// monitor received them, and how to describe it in `query-qmp-schema`.
/// Both come from one typed handler, `async fn(&Daemon, Args) ->
/// Result<Ret, QmpError>`, through [`command!`]: the arguments are read
/// into `Args` with QEMU's messages, the return is `Ret` as JSON (`()`
/// for none), and the schema shows exactly `Args` and `Ret`.
pub struct Command {
    pub name: &'static str,
    pub run: for<'a> fn(&'a Daemon, Map<String, Value>) -> CommandFuture<'a>,
    pub describe: fn(&mut SchemaBuilder),
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
    chardev::COMMANDS,
    introspection::COMMANDS,
    stats::COMMANDS,
];

/// Makes a [`Command`] of a typed handler; `features` are its QAPI
/// features (`deprecated`, `unstable`, ...).
macro_rules! command {
    ($name:literal, $handler:path $(, features: [$($feature:literal),*])?) => {
        $crate::commands::Command {
            name: $name,
            run: |daemon, arguments| {
                Box::pin($crate::commands::run_typed(daemon, arguments, $handler))
            },
            describe: |schema| {
                $crate::commands::describe_typed(schema, $name, &[$($($feature),*)?], $handler)
            },
        }
    };
}
pub(crate) use command;

/// Reads the arguments into the handler's type, runs it, and encodes what
/// it returns.
pub async fn run_typed<'a, A, R, F, Fut>(
    daemon: &'a Daemon,
    arguments: Map<String, Value>,
    handler: F,
) -> CommandResult
where
    A: DeserializeOwned,
    R: Serialize,
    F: FnOnce(&'a Daemon, A) -> Fut,
    Fut: Future<Output = Result<R, QmpError>>,
{
    let arguments = schema::from_json(Value::Object(arguments))?;
    let value = handler(daemon, arguments).await?;
    serde_json::to_value(value)
        .map_err(|error| QmpError::generic(format!("cannot encode the reply: {error}")))
}

/// Registers a command with the argument and return types of its handler.
pub fn describe_typed<'a, A, R, F, Fut>(
    schema: &mut SchemaBuilder,
    name: &str,
    features: &[&str],
    _handler: F,
) where
    A: Introspect,
    R: Introspect,
    F: FnOnce(&'a Daemon, A) -> Fut,
    Fut: Future<Output = Result<R, QmpError>>,
{
    schema.command::<A, R>(name, features);
}

/// The names of every command, for `query-commands`.
pub fn names() -> Vec<String> {
    all().map(|command| command.name.to_owned()).collect()
}

/// Describes every command in `schema`.
pub fn describe(schema: &mut SchemaBuilder) {
    for command in all() {
        (command.describe)(schema);
    }
}

fn all() -> impl Iterator<Item = &'static Command> {
    GROUPS.iter().flat_map(|group| group.iter())
}

/// Runs `name`. The monitor only passes names from [`names`]; anything
/// else gets QEMU's `CommandNotFound`.
pub async fn execute(daemon: &Daemon, name: &str, arguments: Map<String, Value>) -> CommandResult {
    match all().find(|command| command.name == name) {
        Some(command) => (command.run)(daemon, arguments).await,
        None => Err(QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {name} has not been found"),
        )),
    }
}

/// The arguments of a command that takes none: any member is unexpected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

impl Introspect for NoArguments {
    fn introspect(schema: &mut SchemaBuilder) -> String {
        Empty::introspect(schema)
    }
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

//! `object-add`, `object-del` and `query-iothreads`; the checks live in
//! [`crate::objects`].

use schema::object::{ObjectDelArgs, ObjectOptions};
use schema::QmpError;
use serde_json::{Map, Value};

use super::{arguments, command, returning, Command, CommandResult, NoArguments};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("object-add", qmp_object_add),
    command!("object-del", object_del),
    command!("query-iothreads", query_iothreads),
];

/// `object-add` and `--object`.
pub fn object_add(daemon: &Daemon, options: ObjectOptions) -> Result<(), QmpError> {
    daemon.objects.add(options)
}

async fn qmp_object_add(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    object_add(daemon, arguments(args)?)?;
    Ok(Value::Null)
}

async fn object_del(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let ObjectDelArgs { id } = arguments(args)?;
    daemon.objects.delete(&id)?;
    Ok(Value::Null)
}

/// `query-iothreads`: every iothread with its thread's id and polling
/// properties.
async fn query_iothreads(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let NoArguments {} = arguments(args)?;
    let rows: Vec<_> = daemon
        .objects
        .iothreads()
        .iter()
        .map(|t| t.info())
        .collect();
    returning(rows)
}

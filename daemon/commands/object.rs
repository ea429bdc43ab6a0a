//! `object-add` and `object-del`; the checks live in [`crate::objects`].

use schema::object::{ObjectDelArgs, ObjectOptions};
use schema::QmpError;
use serde_json::{Map, Value};

use super::{arguments, command, Command, CommandResult};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("object-add", qmp_object_add),
    command!("object-del", object_del),
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

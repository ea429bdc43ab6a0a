//! `object-add`, `object-del` and `query-iothreads`; the checks live in
//! [`crate::objects`].

use exports::iothread::IoThreadInfo;
use schema::object::{ObjectDelArgs, ObjectOptions};
use schema::QmpError;

use super::{command, Command, NoArguments};
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

async fn qmp_object_add(daemon: &Daemon, options: ObjectOptions) -> Result<(), QmpError> {
    object_add(daemon, options)
}

async fn object_del(daemon: &Daemon, ObjectDelArgs { id }: ObjectDelArgs) -> Result<(), QmpError> {
    daemon.objects.delete(&id)?;
    Ok(())
}

/// `query-iothreads`: every iothread with its thread's id and polling
/// properties.
async fn query_iothreads(daemon: &Daemon, _: NoArguments) -> Result<Vec<IoThreadInfo>, QmpError> {
    Ok(daemon
        .objects
        .iothreads()
        .iter()
        .map(|t| t.info())
        .collect())
}

//! `qom-list`, `qom-get` and `qom-set`; the tree and its properties live
//! in [`crate::objects::qom`].

use schema::object::{QomGetArgs, QomListArgs, QomSetArgs};
use serde_json::{Map, Value};

use super::{arguments, command, returning, Command, CommandResult};
use crate::objects::qom::Qom;
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("qom-list", qom_list),
    command!("qom-get", qom_get),
    command!("qom-set", qom_set),
];

/// Runs `f` on the daemon's tree.
fn with_tree<R>(daemon: &Daemon, f: impl FnOnce(&Qom<'_>) -> R) -> R {
    let chardevs = daemon
        .chardevs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    f(&Qom {
        objects: &daemon.objects,
        chardevs: &chardevs,
    })
}

async fn qom_list(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let QomListArgs { path } = arguments(args)?;
    returning(with_tree(daemon, |qom| qom.list(&path))?)
}

async fn qom_get(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let QomGetArgs { path, property } = arguments(args)?;
    with_tree(daemon, |qom| qom.get(&path, &property))
}

/// Applies at once: a throttle group's new limits hold for the requests
/// already waiting.
async fn qom_set(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let QomSetArgs {
        path,
        property,
        value,
    } = arguments(args)?;
    with_tree(daemon, |qom| qom.set(&path, &property, value))?;
    Ok(Value::Null)
}

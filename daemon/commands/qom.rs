//! `qom-list`, `qom-get`, `qom-set`, `qom-list-types` and
//! `qom-list-properties`; the tree and its properties live in
//! [`crate::objects::qom`], the classes in [`crate::objects::qom_types`].

use schema::object::{
    ObjectPropertyInfo, ObjectTypeInfo, QomGetArgs, QomListArgs, QomListPropertiesArgs,
    QomListTypesArgs, QomSetArgs,
};
use schema::QmpError;
use serde_json::Value;

use super::{command, Command};
use crate::objects::qom::Qom;
use crate::objects::qom_types;
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("qom-list", qom_list),
    command!("qom-get", qom_get),
    command!("qom-set", qom_set),
    command!("qom-list-types", qom_list_types),
    command!("qom-list-properties", qom_list_properties),
];

/// Runs `f` on the daemon's tree.
fn with_tree<R>(daemon: &Daemon, f: impl FnOnce(&Qom<'_>) -> R) -> R {
    let chardevs = daemon.chardevs.qom_chardevs();
    f(&Qom {
        objects: &daemon.objects,
        chardevs: &chardevs,
    })
}

async fn qom_list(
    daemon: &Daemon,
    QomListArgs { path }: QomListArgs,
) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
    with_tree(daemon, |qom| qom.list(&path))
}

async fn qom_get(
    daemon: &Daemon,
    QomGetArgs { path, property }: QomGetArgs,
) -> Result<Value, QmpError> {
    with_tree(daemon, |qom| qom.get(&path, &property))
}

/// Applies at once: a throttle group's new limits hold for the requests
/// already waiting.
async fn qom_set(
    daemon: &Daemon,
    QomSetArgs {
        path,
        property,
        value,
    }: QomSetArgs,
) -> Result<(), QmpError> {
    with_tree(daemon, |qom| qom.set(&path, &property, value))?;
    Ok(())
}

async fn qom_list_types(
    _daemon: &Daemon,
    QomListTypesArgs {
        implements,
        include_abstract,
    }: QomListTypesArgs,
) -> Result<Vec<ObjectTypeInfo>, QmpError> {
    Ok(qom_types::list_types(
        implements.as_deref(),
        include_abstract.unwrap_or(false),
    ))
}

async fn qom_list_properties(
    _daemon: &Daemon,
    QomListPropertiesArgs { typename }: QomListPropertiesArgs,
) -> Result<Vec<ObjectPropertyInfo>, QmpError> {
    qom_types::list_properties(&typename)
}

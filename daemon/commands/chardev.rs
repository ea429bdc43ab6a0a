//! `query-chardev` and `query-chardev-backends`: the character devices of
//! the command line ([`crate::chardev`]) as QSD lists them.

use schema::char::{ChardevBackendInfo, ChardevInfo};
use schema::QmpError;

use super::{command, Command, NoArguments};
use crate::chardev::BACKENDS;
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("query-chardev", query_chardev),
    command!("query-chardev-backends", query_chardev_backends),
];

async fn query_chardev(daemon: &Daemon, _: NoArguments) -> Result<Vec<ChardevInfo>, QmpError> {
    let rows = daemon
        .chardevs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(rows
        .into_iter()
        .map(|row| ChardevInfo {
            label: row.id,
            filename: row.filename,
            frontend_open: row.frontend_open,
        })
        .collect())
}

async fn query_chardev_backends(
    _daemon: &Daemon,
    _: NoArguments,
) -> Result<Vec<ChardevBackendInfo>, QmpError> {
    Ok(BACKENDS
        .iter()
        .map(|name| ChardevBackendInfo {
            name: (*name).to_owned(),
        })
        .collect())
}

//! The daemon's own commands: `query-version` and `quit`.

use schema::info::VersionInfo;
use schema::QmpError;

use super::{command, Command, NoArguments};
use crate::state::Daemon;
use crate::version;

pub const COMMANDS: &[Command] = &[
    command!("query-version", query_version),
    command!("quit", quit),
];

async fn query_version(_daemon: &Daemon, _: NoArguments) -> Result<VersionInfo, QmpError> {
    Ok(version::version_info())
}

/// Replies at once; the daemon then stops as on SIGTERM (the monitor
/// writes this reply before it closes).
async fn quit(daemon: &Daemon, _: NoArguments) -> Result<(), QmpError> {
    daemon.request_quit();
    Ok(())
}

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

/// Closes the exports first, so that their `BLOCK_EXPORT_DELETED` events
/// (newest export first) precede the reply, as in QSD; the daemon then
/// stops as on SIGTERM (the monitor writes this reply before it closes).
async fn quit(daemon: &Daemon, _: NoArguments) -> Result<(), QmpError> {
    daemon.exports.close_all().await;
    daemon.request_quit();
    Ok(())
}

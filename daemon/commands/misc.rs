//! The daemon's own commands: `query-version` and `quit`.

use serde_json::{Map, Value};

use super::{arguments, command, returning, Command, CommandResult, NoArguments};
use crate::state::Daemon;
use crate::version;

pub const COMMANDS: &[Command] = &[
    command!("query-version", query_version),
    command!("quit", quit),
];

async fn query_version(_daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let NoArguments {} = arguments(args)?;
    returning(version::version_info())
}

/// Replies at once; the daemon then stops as on SIGTERM (the monitor
/// writes this reply before it closes).
async fn quit(daemon: &Daemon, args: Map<String, Value>) -> CommandResult {
    let NoArguments {} = arguments(args)?;
    daemon.request_quit();
    Ok(Value::Null)
}

//! The interface between the monitor and the daemon's commands.
//!
//! The monitor owns the protocol: it parses and checks requests, handles
//! `qmp_capabilities` and `query-commands` itself, and calls the
//! [`Dispatcher`] for every other command. The dispatcher knows nothing
//! about sockets, ids or negotiation.

use async_trait::async_trait;
use schema::QmpError;
use serde_json::{Map, Value};

/// The daemon's commands, as the monitor sees them.
///
/// The monitor runs one command at a time across all its monitors and
/// clients, as QEMU's single QMP dispatcher does, so `execute` never runs
/// twice at once. A command keeps running to its end even if its client
/// disconnects (its reply is then dropped): dropping a half-done command
/// could leave the daemon in a state no command would produce. A command
/// that panics gets a `GenericError` reply; the monitor goes on.
#[async_trait]
pub trait Dispatcher: Send + Sync + 'static {
    /// The commands [`execute`](Self::execute) implements, in the order
    /// `query-commands` lists them. The monitor's own `qmp_capabilities`
    /// and `query-commands` may be named to place them in that list; if
    /// not, they are listed last. The monitor reads this list once, when
    /// [`crate::Monitors`] is created: a command not in it is reported as
    /// `CommandNotFound` without calling `execute`.
    fn commands(&self) -> Vec<String>;

    /// Runs `command` with its `arguments` (an empty map when the request
    /// had none). `Ok(Value::Null)` means "no return value" and is sent as
    /// `{"return": {}}`, as QEMU does for commands without a return type.
    async fn execute(
        &self,
        command: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, QmpError>;
}

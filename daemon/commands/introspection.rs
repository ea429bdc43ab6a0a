//! `query-qmp-schema`: every command (the monitor's own and the table's)
//! and every event, described from the types they read and write.

use std::sync::OnceLock;

use schema::event::QmpEvent;
use schema::introspect::{SchemaBuilder, SchemaInfo};
use schema::monitor::{CommandInfo, QmpCapabilitiesArgs};
use schema::QmpError;

use super::{command, Command, NoArguments};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[command!("query-qmp-schema", query_qmp_schema)];

async fn query_qmp_schema(_daemon: &Daemon, _: NoArguments) -> Result<Vec<SchemaInfo>, QmpError> {
    Ok(entries().to_vec())
}

/// The schema, built once: it depends only on the code.
pub fn entries() -> &'static [SchemaInfo] {
    static ENTRIES: OnceLock<Vec<SchemaInfo>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let mut schema = SchemaBuilder::new();
        schema.command::<QmpCapabilitiesArgs, ()>("qmp_capabilities", &[]);
        schema.command::<NoArguments, Vec<CommandInfo>>("query-commands", &[]);
        super::describe(&mut schema);
        QmpEvent::describe(&mut schema);
        schema.finish()
    })
}

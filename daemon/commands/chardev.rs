//! The character device commands: `chardev-add`, `chardev-change`,
//! `chardev-remove`, `chardev-send-break`, `ringbuf-write`, `ringbuf-read`,
//! `query-chardev` and `query-chardev-backends`; the chardevs are
//! [`crate::chardev_table`]'s.

use schema::char::{
    ChardevAddArgs, ChardevBackendInfo, ChardevIdArgs, ChardevInfo, ChardevReturn, RingbufReadArgs,
    RingbufWriteArgs,
};
use schema::QmpError;

use super::{command, Command, NoArguments};
use crate::chardev::BACKENDS;
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("chardev-add", chardev_add),
    command!("chardev-change", chardev_change),
    command!("chardev-remove", chardev_remove),
    command!("chardev-send-break", chardev_send_break),
    command!("ringbuf-write", ringbuf_write),
    command!("ringbuf-read", ringbuf_read),
    command!("query-chardev", query_chardev),
    command!("query-chardev-backends", query_chardev_backends),
];

async fn chardev_add(daemon: &Daemon, args: ChardevAddArgs) -> Result<ChardevReturn, QmpError> {
    daemon.chardevs.add(&args.id, &args.backend).await?;
    Ok(ChardevReturn::default())
}

async fn chardev_change(daemon: &Daemon, args: ChardevAddArgs) -> Result<ChardevReturn, QmpError> {
    daemon.chardevs.change(&args.id, &args.backend).await?;
    Ok(ChardevReturn::default())
}

async fn chardev_remove(
    daemon: &Daemon,
    ChardevIdArgs { id }: ChardevIdArgs,
) -> Result<(), QmpError> {
    daemon.chardevs.remove(&id)
}

async fn chardev_send_break(
    daemon: &Daemon,
    ChardevIdArgs { id }: ChardevIdArgs,
) -> Result<(), QmpError> {
    daemon.chardevs.send_break(&id)
}

async fn ringbuf_write(daemon: &Daemon, args: RingbufWriteArgs) -> Result<(), QmpError> {
    daemon
        .chardevs
        .ringbuf_write(&args.device, &args.data, args.format.unwrap_or_default())
}

async fn ringbuf_read(daemon: &Daemon, args: RingbufReadArgs) -> Result<String, QmpError> {
    daemon
        .chardevs
        .ringbuf_read(&args.device, args.size, args.format.unwrap_or_default())
}

async fn query_chardev(daemon: &Daemon, _: NoArguments) -> Result<Vec<ChardevInfo>, QmpError> {
    Ok(daemon.chardevs.query())
}

/// The backends of the command line and of `chardev-add`.
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

//! Every character device of the daemon as QMP sees it: those of the
//! command line (sockets and stdio carrying monitors, [`crate::chardev`])
//! and those `chardev-add` creates while the daemon runs
//! ([`crate::chardev_open`]): `ringbuf` (and its alias `memory`), `null`,
//! `file` (output only), `pipe`, `stdio` and `socket`. storaged has no
//! device frontends, so a ring buffer added at run time is only written
//! and read through QMP (`ringbuf-write`, `ringbuf-read`), as in QSD.
//!
//! Standard input and output serve one chardev at most; once a chardev
//! added on them is removed, they count as closed (QEMU closes them) and
//! no other chardev can use them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use schema::char::{ChardevBackend, ChardevBackendKind, ChardevInfo, DataFormat};
use schema::QmpError;

use crate::chardev::ChardevRow;
use crate::chardev_open::Added;
use crate::objects::qom::QomChardev;

/// The most chardevs `chardev-add` may create.
pub const MAX_ADDED_CHARDEVS: usize = 256;

enum Entry {
    /// Of the command line: fixed, maybe carrying a monitor.
    CommandLine(ChardevRow),
    Added(Added),
}

impl Entry {
    fn uses_stdio(&self) -> bool {
        match self {
            Entry::CommandLine(row) => row.qom_type == "chardev-stdio",
            Entry::Added(added) => matches!(added, Added::Stdio),
        }
    }
}

/// The chardevs, by id.
#[derive(Default)]
pub struct ChardevTable {
    by_id: Mutex<BTreeMap<String, Entry>>,
    /// A chardev on standard input and output was removed.
    stdio_closed: AtomicBool,
    /// The daemon runs detached (`--daemonize`): no standard streams.
    daemonized: AtomicBool,
}

impl ChardevTable {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // Every change is one insert, remove or write: never half done.
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon runs detached: `stdio` chardevs are refused.
    pub fn set_daemonized(&self) {
        self.daemonized.store(true, Ordering::Relaxed);
    }

    /// The command line's chardevs, as startup knows them now.
    pub fn set_command_line(&self, rows: Vec<ChardevRow>) {
        let mut table = self.lock();
        table.retain(|_, entry| matches!(entry, Entry::Added(_)));
        for row in rows {
            table.insert(row.id.clone(), Entry::CommandLine(row));
        }
    }

    /// `query-chardev`, by id.
    pub fn query(&self) -> Vec<ChardevInfo> {
        self.lock()
            .iter()
            .map(|(id, entry)| {
                let (filename, frontend_open) = match entry {
                    Entry::CommandLine(row) => (row.filename(), row.frontend_open),
                    Entry::Added(added) => (added.filename(), false),
                };
                ChardevInfo {
                    label: id.clone(),
                    filename,
                    frontend_open,
                }
            })
            .collect()
    }

    /// Every chardev as the QOM tree shows it.
    pub fn qom_chardevs(&self) -> Vec<QomChardev> {
        self.lock()
            .iter()
            .map(|(id, entry)| {
                let (qom_type, socket) = match entry {
                    Entry::CommandLine(row) => (row.qom_type, row.socket()),
                    Entry::Added(added) => (added.qom_type(), added.socket()),
                };
                QomChardev {
                    id: id.clone(),
                    qom_type,
                    socket,
                }
            })
            .collect()
    }

    /// A command-line socket no monitor took, served without one from now
    /// on (it can be changed and removed as one added at run time).
    pub fn serve_unused(&self, id: &str, spec: &qmp::SocketSpec, opened: qmp::socket::Opened) {
        let socket = crate::chardev_open::SocketChardev::serve(spec, opened);
        self.lock()
            .insert(id.to_owned(), Entry::Added(Added::Socket(socket)));
    }

    /// `--chardev` of a backend `chardev-add` also creates; the error is
    /// QEMU's bare reason, as the command line shows it.
    pub async fn add_command_line(&self, id: &str, backend: &ChardevBackend) -> Result<(), String> {
        let added = Added::open(backend).await?;
        self.lock().insert(id.to_owned(), Entry::Added(added));
        Ok(())
    }

    /// `chardev-add`.
    pub async fn add(&self, id: &str, backend: &ChardevBackend) -> Result<(), QmpError> {
        if self.lock().contains_key(id) {
            return Err(QmpError::generic(format!(
                "Chardev with id '{id}' already exists"
            )));
        }
        let added = self.open(id, backend).await?;
        let mut table = self.lock();
        let count = table
            .values()
            .filter(|e| matches!(e, Entry::Added(_)))
            .count();
        if count >= MAX_ADDED_CHARDEVS {
            return Err(QmpError::generic(format!(
                "Too many chardevs (at most {MAX_ADDED_CHARDEVS} added)"
            )));
        }
        if table.contains_key(id) {
            return Err(QmpError::generic(format!(
                "Chardev with id '{id}' already exists"
            )));
        }
        table.insert(id.to_owned(), Entry::Added(added));
        Ok(())
    }

    /// `chardev-change`: a chardev without a monitor takes another
    /// backend (a monitor's cannot: its user does not support the swap).
    /// The old backend closes once the new one is open. (QEMU also drops
    /// the chardev when the new backend fails to open; storaged keeps it.)
    pub async fn change(&self, id: &str, backend: &ChardevBackend) -> Result<(), QmpError> {
        match self.lock().get(id) {
            None => return Err(QmpError::generic(format!("Chardev '{id}' does not exist"))),
            Some(Entry::CommandLine(row)) if row.frontend_open => {
                return Err(QmpError::generic(
                    "Chardev user does not support chardev hotswap",
                ))
            }
            Some(_) => {}
        }
        let added = self.open(id, backend).await?;
        let old = self.lock().insert(id.to_owned(), Entry::Added(added));
        self.closing(old);
        Ok(())
    }

    /// Opens a backend for chardev `id`, with QEMU's message.
    async fn open(&self, id: &str, backend: &ChardevBackend) -> Result<Added, QmpError> {
        let failed =
            |why: String| QmpError::generic(format!("Failed to add chardev '{id}': {why}"));
        if matches!(backend.kind, ChardevBackendKind::Stdio(_)) {
            if self.daemonized.load(Ordering::Relaxed) {
                return Err(failed("cannot use stdio with -daemonize".to_owned()));
            }
            if self.stdio_closed.load(Ordering::Relaxed) {
                return Err(failed(
                    "Failed to set FD nonblocking: Bad file descriptor".to_owned(),
                ));
            }
            if self.lock().values().any(Entry::uses_stdio) {
                return Err(failed(
                    "cannot use stdio by multiple character devices".to_owned(),
                ));
            }
        }
        Added::open(backend).await.map_err(failed)
    }

    /// Notes what closing `entry` closes.
    fn closing(&self, entry: Option<Entry>) {
        if entry.as_ref().is_some_and(Entry::uses_stdio) {
            self.stdio_closed.store(true, Ordering::Relaxed);
        }
    }

    /// `chardev-remove`: refused while a monitor uses it.
    pub fn remove(&self, id: &str) -> Result<(), QmpError> {
        let mut table = self.lock();
        match table.get(id) {
            None => Err(QmpError::generic(format!("Chardev '{id}' not found"))),
            Some(Entry::CommandLine(row)) if row.frontend_open => {
                Err(QmpError::generic(format!("Chardev '{id}' is busy")))
            }
            Some(_) => {
                let removed = table.remove(id);
                drop(table);
                self.closing(removed);
                Ok(())
            }
        }
    }

    /// `chardev-send-break`: no frontend here takes breaks.
    pub fn send_break(&self, id: &str) -> Result<(), QmpError> {
        if self.lock().contains_key(id) {
            Ok(())
        } else {
            Err(QmpError::generic(format!("Chardev '{id}' not found")))
        }
    }

    /// `ringbuf-write`.
    pub fn ringbuf_write(
        &self,
        device: &str,
        data: &str,
        format: DataFormat,
    ) -> Result<(), QmpError> {
        let mut table = self.lock();
        let (bytes, size) = ringbuf(&mut table, device)?;
        let data = decode(data, format)?;
        bytes.extend(data);
        let excess = bytes.len().saturating_sub(size);
        bytes.drain(..excess);
        Ok(())
    }

    /// `ringbuf-read`: up to `size` bytes, oldest first, taken out.
    pub fn ringbuf_read(
        &self,
        device: &str,
        size: i64,
        format: DataFormat,
    ) -> Result<String, QmpError> {
        let mut table = self.lock();
        let (bytes, _) = ringbuf(&mut table, device)?;
        if size <= 0 {
            return Err(QmpError::generic("size must be greater than zero"));
        }
        let count = bytes.len().min(usize::try_from(size).unwrap_or(usize::MAX));
        let read: Vec<u8> = bytes.drain(..count).collect();
        Ok(match format {
            DataFormat::Utf8 => String::from_utf8_lossy(&read).into_owned(),
            DataFormat::Base64 => openssl::base64::encode_block(&read),
        })
    }
}

/// The ring buffer of `device`, with QEMU's errors.
fn ringbuf<'t>(
    table: &'t mut BTreeMap<String, Entry>,
    device: &str,
) -> Result<(&'t mut VecDeque<u8>, usize), QmpError> {
    match table.get_mut(device) {
        None => Err(QmpError::generic(format!("Device '{device}' not found"))),
        Some(Entry::Added(Added::Ringbuf { bytes, size, .. })) => Ok((bytes, *size)),
        Some(_) => Err(QmpError::generic(format!(
            "{device} is not a ringbuf device"
        ))),
    }
}

fn decode(data: &str, format: DataFormat) -> Result<Vec<u8>, QmpError> {
    match format {
        DataFormat::Utf8 => Ok(data.as_bytes().to_vec()),
        DataFormat::Base64 => openssl::base64::decode_block(data)
            .map_err(|_| QmpError::generic("Base64 data contains invalid characters")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio() -> ChardevBackend {
        schema::from_json(serde_json::json!({"type": "stdio", "data": {}})).expect("backend")
    }

    async fn add_stdio(table: &ChardevTable, id: &str) -> Result<(), String> {
        table.add(id, &stdio()).await.map_err(|e| e.desc)
    }

    #[tokio::test]
    async fn stdio_serves_one_chardev_and_closes_with_it() {
        let table = ChardevTable::default();
        add_stdio(&table, "a").await.expect("first");
        assert_eq!(
            add_stdio(&table, "b").await,
            Err("Failed to add chardev 'b': cannot use stdio by multiple character devices".into())
        );
        table.remove("a").expect("removed");
        assert_eq!(
            add_stdio(&table, "c").await,
            Err(
                "Failed to add chardev 'c': Failed to set FD nonblocking: Bad file descriptor"
                    .into()
            )
        );
        let detached = ChardevTable::default();
        detached.set_daemonized();
        assert_eq!(
            add_stdio(&detached, "d").await,
            Err("Failed to add chardev 'd': cannot use stdio with -daemonize".into())
        );
    }
}

//! Every character device of the daemon as QMP sees it: those of the
//! command line (sockets and stdio carrying monitors, [`crate::chardev`])
//! and those `chardev-add` creates while the daemon runs: `ringbuf` (and
//! its alias `memory`), `null` and `file` (output only). storaged has no
//! device frontends, so a chardev added at run time is only written and
//! read through QMP (`ringbuf-write`, `ringbuf-read`), as in QSD.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::sync::{Mutex, MutexGuard};

use schema::char::{ChardevBackend, ChardevBackendKind, ChardevInfo, DataFormat};
use schema::QmpError;

use crate::chardev::ChardevRow;

/// QEMU's default and largest ring buffer.
const DEFAULT_RINGBUF_SIZE: i64 = 65536;
const MAX_RINGBUF_SIZE: i64 = 1 << 24;
/// The most chardevs `chardev-add` may create.
pub const MAX_ADDED_CHARDEVS: usize = 256;

/// A chardev created at run time.
enum Added {
    /// The newest `size` bytes written (`ringbuf`, or `memory`).
    Ringbuf {
        bytes: VecDeque<u8>,
        size: usize,
        memory: bool,
    },
    Null,
    /// The file it was opened on (created, or appended to); nothing in
    /// storaged writes to it.
    File {
        _open: File,
    },
}

enum Entry {
    /// Of the command line: fixed, maybe carrying a monitor.
    CommandLine(ChardevRow),
    Added(Added),
}

/// The chardevs, by id.
#[derive(Default)]
pub struct ChardevTable {
    by_id: Mutex<BTreeMap<String, Entry>>,
}

impl ChardevTable {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // Every change is one insert, remove or write: never half done.
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
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
                    Entry::CommandLine(row) => (row.filename.clone(), row.frontend_open),
                    Entry::Added(added) => (added.filename().to_owned(), false),
                };
                ChardevInfo {
                    label: id.clone(),
                    filename,
                    frontend_open,
                }
            })
            .collect()
    }

    /// Every chardev's id and QOM type, for the QOM tree.
    pub fn qom_types(&self) -> Vec<(String, &'static str)> {
        self.lock()
            .iter()
            .map(|(id, entry)| {
                let qom_type = match entry {
                    Entry::CommandLine(row) => row.qom_type,
                    Entry::Added(added) => added.qom_type(),
                };
                (id.clone(), qom_type)
            })
            .collect()
    }

    /// `chardev-add`.
    pub fn add(&self, id: &str, backend: &ChardevBackend) -> Result<(), QmpError> {
        if self.lock().contains_key(id) {
            return Err(QmpError::generic(format!(
                "Chardev with id '{id}' already exists"
            )));
        }
        let added = Added::open(backend)
            .map_err(|why| QmpError::generic(format!("Failed to add chardev '{id}': {why}")))?;
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

    /// `chardev-change`: a chardev added at run time takes another backend
    /// (a monitor's cannot: its user does not support the swap).
    pub fn change(&self, id: &str, backend: &ChardevBackend) -> Result<(), QmpError> {
        match self.lock().get(id) {
            None => return Err(QmpError::generic(format!("Chardev '{id}' does not exist"))),
            Some(Entry::CommandLine(row)) if row.frontend_open => {
                return Err(QmpError::generic(
                    "Chardev user does not support chardev hotswap",
                ))
            }
            Some(_) => {}
        }
        let added = Added::open(backend).map_err(QmpError::generic)?;
        self.lock().insert(id.to_owned(), Entry::Added(added));
        Ok(())
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
                table.remove(id);
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

impl Added {
    /// Opens `backend`; the error is QEMU's reason, without the id.
    fn open(backend: &ChardevBackend) -> Result<Added, String> {
        if backend.kind.logfile().is_some() {
            return Err("'logfile' is not supported by storaged".to_owned());
        }
        Ok(match &backend.kind {
            ChardevBackendKind::Ringbuf(ring) | ChardevBackendKind::Memory(ring) => {
                let size = ring.data.size.unwrap_or(DEFAULT_RINGBUF_SIZE);
                if size <= 0 || size & (size - 1) != 0 {
                    return Err("size of ringbuf chardev must be power of two".to_owned());
                }
                if size > MAX_RINGBUF_SIZE {
                    return Err(format!(
                        "size of ringbuf chardev must be at most {MAX_RINGBUF_SIZE}"
                    ));
                }
                Added::Ringbuf {
                    bytes: VecDeque::new(),
                    size: size as usize,
                    memory: matches!(backend.kind, ChardevBackendKind::Memory(_)),
                }
            }
            ChardevBackendKind::Null(_) => Added::Null,
            ChardevBackendKind::File(file) => {
                let file = &file.data;
                let out = File::options()
                    .create(true)
                    .write(true)
                    .append(file.append.unwrap_or(false))
                    .truncate(!file.append.unwrap_or(false))
                    .open(&file.out)
                    .map_err(|e| {
                        format!(
                            "Could not open '{}': {}",
                            file.out,
                            block::error::os_error_text(&e)
                        )
                    })?;
                Added::File { _open: out }
            }
        })
    }

    fn filename(&self) -> &'static str {
        match self {
            Added::Ringbuf { memory: true, .. } => "memory",
            Added::Ringbuf { .. } => "ringbuf",
            Added::Null => "null",
            Added::File { .. } => "file",
        }
    }

    fn qom_type(&self) -> &'static str {
        match self {
            Added::Ringbuf { memory: true, .. } => "chardev-memory",
            Added::Ringbuf { .. } => "chardev-ringbuf",
            Added::Null => "chardev-null",
            Added::File { .. } => "chardev-file",
        }
    }
}

//! A temporary qcow2 overlay over a node: what `qemu-nbd --snapshot`
//! exports, so that writes go to a throwaway file and the image stays
//! untouched.
//!
//! As QEMU's `bdrv_append_temp_snapshot`: a qcow2 file of the base's size
//! in `$TMPDIR` (default `/var/tmp`), named `vl.XXXXXX`, without a backing
//! file in its header (the base is attached as its `backing` child when
//! it is opened), gone when the daemon ends (it is unlinked as soon as it
//! is open).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::json;

use crate::state::Daemon;

/// How many names are tried before giving up.
const NAME_TRIES: u32 = 64;

/// The overlay to create (the value of its startup step).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TempOverlay {
    /// The node the overlay goes over.
    pub base: String,
    /// The overlay node's name.
    pub node_name: String,
}

/// Creates and opens the overlay; the file is unlinked once open.
pub async fn create(daemon: &Daemon, overlay: &TempOverlay) -> Result<(), String> {
    let base = daemon
        .graph
        .lookup(None, Some(&overlay.base))
        .map_err(|e| e.message)?;
    let path = unique_file().map_err(|e| {
        format!(
            "Could not create temporary overlay: {}",
            block::error::os_error_text(&e)
        )
    })?;
    let result = open_over(daemon, overlay, base.size(), &path).await;
    // Open or not, the file has no further use by name.
    let _ = std::fs::remove_file(&path);
    result
}

async fn open_over(
    daemon: &Daemon,
    overlay: &TempOverlay,
    size: u64,
    path: &std::path::Path,
) -> Result<(), String> {
    let file_node = format!("{}-file", overlay.node_name);
    let file = json!({"driver": "file", "node-name": file_node, "filename": path});
    add(daemon, file).await?;
    let create = json!({"driver": "qcow2", "file": file_node, "size": size});
    let create = schema::from_json(create).map_err(|e| e.desc)?;
    block::create::create_image(&daemon.graph, create)
        .await
        .map_err(|e| e.message)?;
    let qcow2 = json!({"driver": "qcow2", "node-name": overlay.node_name,
                       "file": file_node, "backing": overlay.base});
    add(daemon, qcow2).await
}

async fn add(daemon: &Daemon, options: serde_json::Value) -> Result<(), String> {
    let options = schema::from_json(options).map_err(|e| e.desc)?;
    crate::commands::blockdev_add(daemon, &options)
        .await
        .map_err(|e| e.desc)
}

/// A new empty file `vl.XXXXXX` in the temporary directory.
fn unique_file() -> std::io::Result<PathBuf> {
    let dir = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let mut last = None;
    for attempt in 0..NAME_TRIES {
        let suffix = seed.wrapping_mul(2_654_435_761).wrapping_add(attempt) % 0xff_ffff;
        let path = dir.join(format!("vl.{suffix:06x}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
}

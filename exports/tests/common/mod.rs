//! Shared harness of the NBD tests: a server in this process on a Unix
//! socket in a temporary directory, file-backed exports, and helpers to run
//! the real clients (`nbdinfo`, `nbdsh`, `qemu-img`, `qemu-io`, `nbdcopy`).

#![allow(dead_code)]

pub mod file_backend;
pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use exports::nbd::{ExportMeta, ListenAddress, NbdExportConfig, NbdServerConfig};
use exports::BlockExports;

pub use file_backend::FileBackend;

/// A running server with its exports and a record of deleted export ids.
pub struct Harness {
    pub exports: BlockExports,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub deleted: Arc<Mutex<Vec<String>>>,
}

/// Options of one test export.
#[derive(Clone)]
pub struct ExportSpec {
    pub id: String,
    pub name: String,
    pub writable: bool,
    pub allocation_depth: bool,
    pub description: Option<String>,
    /// Whether the backend can zero quickly (`NBD_CMD_FLAG_FAST_ZERO`).
    pub fast_zero: bool,
}

impl ExportSpec {
    pub fn new(name: &str) -> ExportSpec {
        ExportSpec {
            id: name.to_string(),
            name: name.to_string(),
            writable: true,
            allocation_depth: false,
            description: None,
            fast_zero: true,
        }
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(0, 10).await
    }

    pub async fn start_with(max_connections: u32, handshake_max_seconds: u32) -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("nbd.sock");
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&deleted);
        let exports = BlockExports::new(Arc::new(move |id: &str| {
            record.lock().unwrap().push(id.to_string())
        }));
        exports
            .nbd_server_start(NbdServerConfig {
                address: ListenAddress::Unix {
                    path: socket.clone(),
                    abstract_name: false,
                },
                max_connections,
                handshake_max_seconds,
                tls_creds: None,
                tls_authz: None,
            })
            .await
            .expect("server starts");
        Harness {
            exports,
            dir,
            socket,
            deleted,
        }
    }

    /// A sparse image file of `size` bytes in the test directory.
    pub fn image(&self, name: &str, size: u64) -> PathBuf {
        let path = self.dir.path().join(name);
        let file = std::fs::File::create(&path).expect("create image");
        file.set_len(size).expect("size image");
        path
    }

    /// Exports `file` as described by `spec`.
    pub fn export(&self, spec: &ExportSpec, file: &Path) {
        let backend = FileBackend::open(file, spec.writable, spec.fast_zero);
        let config = NbdExportConfig {
            name: spec.name.clone(),
            description: spec.description.clone(),
            writable: spec.writable,
            meta: ExportMeta {
                allocation_depth: spec.allocation_depth,
                bitmaps: Vec::new(),
            },
        };
        self.exports
            .add_nbd(&spec.id, "node0", backend, config)
            .expect("export added");
    }

    pub fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket.display())
    }

    pub fn connections(&self) -> usize {
        self.exports
            .nbd_server()
            .map_or(0, |s| s.connection_count())
    }

    /// Waits (briefly) until no client is connected.
    pub async fn wait_idle(&self) {
        for _ in 0..200 {
            if self.connections() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{} connections still open", self.connections());
    }
}

/// Output of a client run.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program` with `args`.
pub async fn run(program: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `program` and insists that it succeeds; returns its stdout.
pub async fn run_ok(program: &str, args: &[&str]) -> String {
    let r = run(program, args).await;
    assert!(
        r.ok,
        "{program} {args:?} failed:\n{}\n{}",
        r.stdout, r.stderr
    );
    r.stdout
}

/// Runs a Python script with the libnbd bindings (`h` is not predefined:
/// scripts open their own handles); the URI is `sys.argv[1]`.
pub async fn nbdsh(uri: &str, script: &str) -> String {
    run_ok("/usr/bin/python3", &["-c", script, uri]).await
}

/// Fills `path` at `offset` with `len` bytes of `byte`.
pub fn fill(path: &Path, offset: u64, len: usize, byte: u8) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    file.write_all_at(&vec![byte; len], offset)
        .expect("write image");
}

/// Reads `len` bytes of `path` at `offset`.
pub fn read(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).expect("open image");
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset).expect("read image");
    buf
}

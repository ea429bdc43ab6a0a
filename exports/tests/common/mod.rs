//! Shared harness of the NBD tests: the export registry with its NBD server
//! in this process, on a Unix socket in a temporary directory, exporting
//! file nodes of a block graph; and helpers to run the real clients
//! (`nbdinfo`, `nbdsh`, `qemu-img`, `qemu-io`, `nbdcopy`).

#![allow(dead_code)]

pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use block::BlockGraph;
use exports::BlockExports;
use serde_json::json;

/// A running server with its exports and a record of deleted export ids.
pub struct Harness {
    pub exports: BlockExports,
    pub graph: BlockGraph,
    pub dir: tempfile::TempDir,
    /// On tmpfs, whose files the server splices from.
    pub memory_dir: tempfile::TempDir,
    pub socket: PathBuf,
    deleted: Arc<Mutex<Vec<String>>>,
}

/// Options of one test export.
#[derive(Clone)]
pub struct ExportSpec {
    pub id: String,
    pub name: String,
    pub writable: bool,
    pub allocation_depth: bool,
    pub description: Option<String>,
}

impl ExportSpec {
    pub fn new(name: &str) -> ExportSpec {
        ExportSpec {
            id: name.to_string(),
            name: name.to_string(),
            writable: true,
            allocation_depth: false,
            description: None,
        }
    }
}

/// An export registry whose deletion events land in the returned list.
pub fn registry() -> (BlockExports, Arc<Mutex<Vec<String>>>) {
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&deleted);
    let exports = BlockExports::new(Arc::new(move |event: schema::event::Event| {
        assert_eq!(event.event, "BLOCK_EXPORT_DELETED");
        let id = event.data["id"].as_str().expect("id").to_string();
        record.lock().unwrap().push(id);
    }));
    (exports, deleted)
}

/// `nbd-server-start` options for a Unix socket.
pub fn server_options(
    socket: &Path,
    max_connections: u32,
    handshake_max_seconds: u32,
) -> schema::export::NbdServerOptions {
    schema::from_json(json!({
        "addr": {"type": "unix", "path": socket},
        "max-connections": max_connections,
        "handshake-max-seconds": handshake_max_seconds,
    }))
    .expect("server options")
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(0, 10).await
    }

    pub async fn start_with(max_connections: u32, handshake_max_seconds: u32) -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("nbd.sock");
        let (exports, deleted) = registry();
        exports
            .nbd_server_start(
                &server_options(&socket, max_connections, handshake_max_seconds),
                None,
            )
            .await
            .expect("server starts");
        Harness {
            exports,
            graph: BlockGraph::new(),
            dir,
            memory_dir: tempfile::tempdir_in("/dev/shm").expect("tmpfs directory"),
            socket,
            deleted,
        }
    }

    /// A sparse image file of `size` bytes in the test directory.
    pub fn image(&self, name: &str, size: u64) -> PathBuf {
        image_in(self.dir.path(), name, size)
    }

    /// A sparse image file of `size` bytes on tmpfs.
    pub fn memory_image(&self, name: &str, size: u64) -> PathBuf {
        image_in(self.memory_dir.path(), name, size)
    }

    /// Opens `file` as the file node `node`.
    pub async fn node(&self, node: &str, file: &Path) {
        let options =
            schema::from_json(json!({"driver": "file", "node-name": node, "filename": file}))
                .expect("blockdev options");
        self.graph.blockdev_add(&options).await.expect("node opens");
    }

    /// `block-export-add` of `node` as described by `spec`.
    pub fn export(&self, spec: &ExportSpec, node: &str) {
        let mut options = json!({
            "type": "nbd",
            "id": spec.id,
            "node-name": node,
            "name": spec.name,
            "writable": spec.writable,
            "allocation-depth": spec.allocation_depth,
        });
        if let Some(description) = &spec.description {
            options["description"] = json!(description);
        }
        let options = schema::from_json(options).expect("export options");
        self.exports
            .add(&self.graph, &options, None)
            .expect("export added");
    }

    /// A file node of `file` exported as `spec` (node named after the id).
    pub async fn export_file(&self, spec: &ExportSpec, file: &Path) {
        let node = format!("node-{}", spec.id);
        self.node(&node, file).await;
        self.export(spec, &node);
    }

    pub fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket.display())
    }

    /// Ids of the exports reported deleted so far.
    pub fn deleted(&self) -> Vec<String> {
        self.deleted.lock().unwrap().clone()
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

fn image_in(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create image");
    file.set_len(size).expect("size image");
    path
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

/// Runs a Python script with the libnbd bindings (which live only under
/// the system Python); the URI is `sys.argv[1]`.
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

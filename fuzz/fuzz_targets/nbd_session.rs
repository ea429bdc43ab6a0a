//! Whole NBD sessions against the real server: the fuzzer's bytes are
//! what a client sends after the greeting (its flags, options, then
//! requests and payloads), written to the NBD server of this process on a
//! Unix socket; it exports a writable 1 MiB `null-co` node as `n` and a
//! read-only 1 MiB file on tmpfs as `f`. The client then half-closes: the
//! server must end the session within 5 s whatever it was sent (a hang
//! fails the run), and must not panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use block::BlockGraph;
use exports::BlockExports;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The server, started once for the whole run.
struct Server {
    runtime: tokio::runtime::Runtime,
    socket: PathBuf,
    _graph: BlockGraph,
    _exports: BlockExports,
    _dir: tempfile::TempDir,
}

fn start() -> Server {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs directory");
    let socket = dir.path().join("nbd.sock");
    let image = dir.path().join("f.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).expect("image");
    let graph = BlockGraph::new();
    let exports = BlockExports::new(std::sync::Arc::new(|_| {}));
    runtime.block_on(async {
        let server = json!({"addr": {"type": "unix", "path": socket}, "max-connections": 0});
        exports
            .nbd_server_start(&schema::from_json(server).expect("server options"), None)
            .await
            .expect("server starts");
        for node in [
            json!({"driver": "null-co", "node-name": "n", "size": 1 << 20}),
            json!({"driver": "file", "node-name": "f", "filename": image, "read-only": true}),
        ] {
            let options = schema::from_json(node).expect("node options");
            graph.blockdev_add(&options).await.expect("node opens");
        }
        for (id, writable) in [("n", true), ("f", false)] {
            let options = json!({"type": "nbd", "id": id, "node-name": id, "writable": writable});
            let options = schema::from_json(options).expect("export options");
            exports.add(&graph, &options, None).expect("export added");
        }
    });
    Server {
        runtime,
        socket,
        _graph: graph,
        _exports: exports,
        _dir: dir,
    }
}

fuzz_target!(|data: &[u8]| {
    let server = SERVER.get_or_init(start);
    server.runtime.block_on(async {
        let mut client = UnixStream::connect(&server.socket)
            .await
            .expect("the server accepts");
        let mut greeting = [0u8; 18];
        client.read_exact(&mut greeting).await.expect("greeting");
        // The server may close before it has read everything.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "the server kept a session whose client had sent everything and closed"
        );
    });
});

static SERVER: OnceLock<Server> = OnceLock::new();

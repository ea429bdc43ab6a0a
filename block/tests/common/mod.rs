//! Helpers shared by the block integration tests: build nodes from JSON
//! options as QMP would, and make image files in a temporary directory.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::Arc;

use block::{BlockGraph, Node};
use schema::block::BlockdevOptions;
use serde_json::Value;

/// `blockdev-add` with JSON arguments; panics on failure.
pub async fn add(graph: &BlockGraph, options: Value) -> Arc<Node> {
    let text = options.to_string();
    graph
        .blockdev_add(&parse(options))
        .await
        .unwrap_or_else(|e| panic!("blockdev-add {text}: {e}"))
}

/// `blockdev-add` that must fail; returns the message.
pub async fn add_err(graph: &BlockGraph, options: Value) -> String {
    match graph.blockdev_add(&parse(options)).await {
        Ok(node) => panic!("blockdev-add unexpectedly created {}", node.name()),
        Err(e) => e.message,
    }
}

/// Options as QMP's `blockdev-add` deserializes them.
pub fn parse(options: Value) -> BlockdevOptions {
    schema::from_json(options).expect("valid blockdev options")
}

/// A file of `size` bytes in `dir`, filled with `pattern(offset)`.
pub fn image(dir: &Path, name: &str, size: usize, pattern: impl Fn(usize) -> u8) -> PathBuf {
    let path = dir.join(name);
    let data: Vec<u8> = (0..size).map(pattern).collect();
    std::fs::write(&path, data).expect("write image");
    path
}

/// A sparse file of `size` bytes (all holes).
pub fn sparse_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create image");
    file.set_len(size).expect("set image size");
    path
}

/// A recognisable byte for each offset.
pub fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// The JSON of a `file` node on `path`.
pub fn file_node(name: &str, path: &Path) -> Value {
    serde_json::json!({"driver": "file", "node-name": name, "filename": path})
}

/// Allocated bytes of a file (as `du` counts them).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

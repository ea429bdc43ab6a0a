//! Helpers of the qcow2 integration tests: running `qemu-img` and
//! `qemu-io`, opening images (and their backing chains) with the block
//! crate's file driver, reading whole images, seeded randomness.

#![allow(dead_code)] // each test binary uses a different subset

use crate::bytes_io::BytesIo;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use block::file::FileDriver;
use block::qcow2::{BlockChild, DriverChild, Qcow2, Qcow2Options};
use block::{BlockDriver, NodeSettings};
use schema::block::BlockdevOptionsFile;

/// Runs `qemu-img` and returns its standard output; panics on failure.
pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// `qemu-img create -q -f qcow2 OPTIONS... IMAGE SIZE`; panics on failure.
pub fn create_qcow2(image: &Path, options: &[&str], size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(options);
    args.extend([arg(image), size]);
    qemu_img(&args);
}

/// Runs `qemu-io` on an image; panics on failure.
pub fn qemu_io(image: &Path, format: &str, commands: &[&str]) {
    let mut args = vec!["-f", format];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    let image = image.to_str().expect("utf-8 path");
    args.push(image);
    let out = run("qemu-io", &args);
    assert!(
        !out.contains("error") && !out.contains("failed"),
        "qemu-io {args:?}: {out}"
    );
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `qemu-img check` must find neither corruption nor leaks.
pub fn assert_check_clean(image: &Path) {
    let path = image.to_str().expect("utf-8 path");
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", path])
        .output()
        .expect("run qemu-img check");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "qemu-img check {path}: {e}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    for key in ["corruptions", "leaks", "check-errors"] {
        let n = report.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        assert_eq!(n, 0, "qemu-img check {path}: {key}: {report}");
    }
    assert!(out.status.success(), "qemu-img check {path}: {report}");
}

/// The image as raw bytes, as `qemu-img convert -O raw` reads it.
pub fn raw_contents(image: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("converted.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().expect("utf-8 path"),
        raw.to_str().expect("utf-8 path"),
    ]);
    let data = std::fs::read(&raw).expect("read converted image");
    std::fs::remove_file(&raw).expect("remove converted image");
    data
}

/// Closes and drops `qcow2` (a `Qcow2` or the last `Arc` of one), then checks that QEMU reads `image` as `expected` and
/// that `qemu-img check` finds it clean.
pub async fn close_and_compare<Q: std::borrow::Borrow<Qcow2>>(
    qcow2: Q,
    image: &Path,
    dir: &Path,
    expected: &[u8],
    what: &str,
) {
    qcow2.borrow().close().await.unwrap();
    drop(qcow2);
    assert_same(&raw_contents(image, dir), expected, what);
    assert_check_clean(image);
}

/// A `file` driver on `path`, as a child.
pub fn file_child(path: &Path, writable: bool) -> Arc<dyn BlockChild> {
    let options: BlockdevOptionsFile = schema::from_json(serde_json::json!({
        "filename": path,
        "locking": "off",
    }))
    .expect("file options");
    let settings = NodeSettings {
        read_only: !writable,
        ..NodeSettings::default()
    };
    let driver = FileDriver::new(&options, &settings)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    DriverChild::shared(driver)
}

/// Options for opening an image read-write or read-only.
pub fn options(writable: bool) -> Qcow2Options {
    Qcow2Options {
        writable,
        ..Qcow2Options::default()
    }
}

/// Opens `path` with its whole backing chain (read-only below the top),
/// as the headers name it, relative to each image's directory.
pub async fn open_chain(path: &Path, options: Qcow2Options) -> Qcow2 {
    // The chain from the top down: (path, is raw).
    let mut chain: Vec<(PathBuf, bool)> = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        let file = file_child(&current, false);
        let info = Qcow2::backing_info(file.as_ref())
            .await
            .expect("read header");
        let Some(name) = info.file else { break };
        let next = current.parent().unwrap_or(Path::new(".")).join(name);
        let raw = info.format.as_deref() == Some("raw");
        chain.push((next.clone(), raw));
        if raw {
            break;
        }
        current = next;
    }
    let mut below: Option<Arc<dyn BlockChild>> = None;
    for (image, raw) in chain.iter().rev() {
        let file = file_child(image, false);
        below = Some(if *raw {
            file
        } else {
            let opened = Qcow2::open(file, below.take(), self::options(false))
                .await
                .unwrap_or_else(|e| panic!("open backing {}: {e}", image.display()));
            DriverChild::shared(opened)
        });
    }
    Qcow2::open(file_child(path, options.writable), below, options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Reads the whole image in pieces of `chunk` bytes.
pub async fn read_all(image: &dyn BlockDriver, chunk: usize) -> Vec<u8> {
    let size = image.size() as usize;
    let mut data = vec![0u8; size];
    let mut done = 0;
    while done < size {
        let n = chunk.min(size - done);
        image
            .read_into(done as u64, &mut data[done..done + n])
            .await
            .unwrap_or_else(|e| panic!("read at {done}: {e}"));
        done += n;
    }
    data
}

/// The first offset where two images differ, for a readable assertion.
pub fn assert_same(ours: &[u8], theirs: &[u8], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: sizes differ");
    if let Some(pos) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {pos} (ours {:#04x}, expected {:#04x})",
            ours[pos], theirs[pos]
        );
    }
}

/// A small deterministic generator (xorshift64*), seeded from
/// `QCOW2_TEST_SEED` when set so that a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    /// A generator for test `name`; prints the seed.
    pub fn for_test(name: &str) -> Rng {
        let seed = std::env::var("QCOW2_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{name}: seed {seed} (replay with QCOW2_TEST_SEED={seed})");
        Rng(seed.max(1))
    }

    /// A generator with a given seed (for tasks split off a test's one).
    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A path in `dir` as a `&str` argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

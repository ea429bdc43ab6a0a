//! The `copy-on-read` filter through the real binary, compared with
//! qemu-storage-daemon: the same images, the same command line, the same
//! reads by `qemu-io` over NBD; once each daemon has exited, `qemu-img
//! map` of every overlay is the same, and says what was copied: data read
//! from a backing layer (a raw base, a qcow2 two layers down) lands in the
//! top image in whole clusters, data that reads as zeroes lands as a zero
//! cluster, holes and zero clusters below and what no layer has are left
//! alone, and with `bottom` nothing below the bottom node is copied.

mod common;

use std::path::Path;
use std::process::Command;

use common::{storaged, tool, TestDaemon};
use serde_json::Value;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 * KIB;

/// Runs `qemu-io` commands on `image` (read-only for NBD exports).
fn qemu_io(format: &str, image: &str, commands: &[&str]) {
    let mut args = vec!["-f", format];
    if image.starts_with("nbd") {
        args.push("-r");
    }
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(image);
    tool("qemu-io", &args);
}

/// The images, made afresh in `dir`:
/// - `base.raw`: zeroes written as data at 0, 0x3c at 1 MiB (64 KiB
///   each), a hole elsewhere; `top.qcow2` over it has 0x77 at 2 MiB.
/// - `b3.qcow2`: 0x11 at 0, zeroes written as data at 2 MiB, a zero
///   cluster at 3 MiB; `m3.qcow2` over it: 0x22 at 1 MiB; `t2.qcow2` and
///   `t3.qcow2` over `m3.qcow2`, empty.
fn make_images(dir: &Path) {
    let path = |name: &str| dir.join(name).display().to_string();
    let create = |name: &str, backing: Option<(&str, &str)>| {
        let image = path(name);
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if let Some((file, format)) = backing {
            args.extend(["-b", file, "-F", format]);
        }
        args.extend([image.as_str(), "4M"]);
        tool("qemu-img", &args);
    };
    tool(
        "qemu-img",
        &["create", "-q", "-f", "raw", &path("base.raw"), "4M"],
    );
    qemu_io(
        "raw",
        &path("base.raw"),
        &["write -P 0 0 64k", "write -P 0x3c 1M 64k"],
    );
    create("top.qcow2", Some(("base.raw", "raw")));
    qemu_io("qcow2", &path("top.qcow2"), &["write -P 0x77 2M 64k"]);
    create("b3.qcow2", None);
    qemu_io(
        "qcow2",
        &path("b3.qcow2"),
        &[
            "write -P 0x11 0 64k",
            "write -P 0 2M 64k",
            "write -z 3M 64k",
        ],
    );
    create("m3.qcow2", Some(("b3.qcow2", "qcow2")));
    qemu_io("qcow2", &path("m3.qcow2"), &["write -P 0x22 1M 64k"]);
    create("t2.qcow2", Some(("m3.qcow2", "qcow2")));
    create("t3.qcow2", Some(("m3.qcow2", "qcow2")));
}

/// The daemon's options: the chains as named nodes, a copy-on-read node
/// over each overlay (`cor3` stops at `m3`), each exported.
fn options(dir: &Path) -> Vec<String> {
    make_images(dir);
    let file = |node: &str, image: &str| {
        format!(
            "file,node-name={node},filename={}",
            dir.join(image).display()
        )
    };
    let mut args = Vec::new();
    for blockdev in [
        file("rbf", "base.raw"),
        "raw,node-name=rb,file=rbf,read-only=on".to_string(),
        file("tf", "top.qcow2"),
        "qcow2,node-name=top,file=tf,backing=rb".to_string(),
        "copy-on-read,node-name=cor,file=top".to_string(),
        file("b3f", "b3.qcow2"),
        "qcow2,node-name=b3,file=b3f,read-only=on".to_string(),
        file("m3f", "m3.qcow2"),
        "qcow2,node-name=m3,file=m3f,backing=b3,read-only=on".to_string(),
        file("t2f", "t2.qcow2"),
        "qcow2,node-name=t2,file=t2f,backing=m3".to_string(),
        "copy-on-read,node-name=cor2,file=t2".to_string(),
        file("t3f", "t3.qcow2"),
        "qcow2,node-name=t3,file=t3f,backing=m3".to_string(),
        "copy-on-read,node-name=cor3,file=t3,bottom=m3".to_string(),
    ] {
        args.extend(["--blockdev".to_string(), blockdev]);
    }
    args.extend([
        "--nbd-server".to_string(),
        format!(
            "addr.type=unix,addr.path={}",
            dir.join("nbd.sock").display()
        ),
    ]);
    for node in ["cor", "cor2", "cor3"] {
        args.extend([
            "--export".to_string(),
            format!("nbd,id={node},node-name={node}"),
        ]);
    }
    args
}

/// `qemu-img map --output=json` as (start, length, depth, zero, data).
type Map = Vec<(u64, u64, u64, bool, bool)>;

fn map(image: &Path) -> Map {
    let out = tool(
        "qemu-img",
        &["map", "--output=json", image.to_str().expect("UTF-8 path")],
    );
    let entries: Vec<Value> = serde_json::from_str(&out).expect("map JSON");
    entries
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().expect("start"),
                e["length"].as_u64().expect("length"),
                e["depth"].as_u64().expect("depth"),
                e["zero"].as_bool().expect("zero"),
                e["data"].as_bool().expect("data"),
            )
        })
        .collect()
}

/// Starts `program` on fresh images, reads through the three filters
/// (checking the bytes), stops it with SIGTERM and maps the overlays.
fn copied_by(program: Command) -> [Map; 3] {
    let mut daemon = TestDaemon::spawn(program, tempfile::tempdir().expect("dir"), options);
    let socket = daemon.path("nbd.sock").display().to_string();
    let uri = |export: &str| format!("nbd+unix:///{export}?socket={socket}");
    qemu_io(
        "raw",
        &uri("cor"),
        &[
            "read -P 0 0 4k",
            "read -P 0x3c 1028k 4k",
            "read -P 0 1536k 4k",
            "read -P 0x77 2M 4k",
            "read -P 0 3145828 1000",
        ],
    );
    let chain_reads = [
        "read -P 0x11 0 4k",
        "read -P 0x22 1M 4k",
        "read -P 0 2M 4k",
        "read -P 0 3M 4k",
        "read -P 0 3584k 4k",
    ];
    qemu_io("raw", &uri("cor2"), &chain_reads);
    qemu_io("raw", &uri("cor3"), &chain_reads);
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().success(), "{}", daemon.stderr());
    ["top.qcow2", "t2.qcow2", "t3.qcow2"].map(|image| {
        tool(
            "qemu-img",
            &["check", "-q", daemon.path(image).to_str().expect("path")],
        );
        map(&daemon.path(image))
    })
}

/// The clusters the top image holds, as (start, data) pairs, from a map
/// (each is one 64 KiB cluster here).
fn top_clusters(map: &Map) -> Vec<(u64, bool)> {
    map.iter()
        .filter(|&&(_, _, depth, _, _)| depth == 0)
        .map(|&(start, length, _, _, data)| {
            assert_eq!(length, CLUSTER, "{map:?}");
            (start, data)
        })
        .collect()
}

#[test]
fn reads_populate_the_overlay_as_qemu_storage_daemon_does() {
    let expected = copied_by(Command::new("qemu-storage-daemon"));
    let got = copied_by(storaged());
    assert_eq!(got, expected);

    let [raw_base, chain, bottom] = &got;
    // Over the raw base: the zeroes read at 0 became a zero cluster, the
    // data at 1 MiB a data cluster; the holes read stayed holes; the top
    // image's own cluster at 2 MiB is as it was.
    assert_eq!(
        top_clusters(raw_base),
        [(0, false), (MIB, true), (2 * MIB, true)]
    );
    // Without bottom, data two layers down is copied too; the zero
    // cluster at 3 MiB and what no layer has (3.5 MiB) are not.
    assert_eq!(
        top_clusters(chain),
        [(0, true), (MIB, true), (2 * MIB, false)]
    );
    // With bottom=m3, only m3's cluster is.
    assert_eq!(top_clusters(bottom), [(MIB, true)]);
}

//! The `preallocate` filter through the real binary, compared with
//! qemu-storage-daemon: a qcow2 image over `preallocate` over its file,
//! written by `qemu-io` over NBD. While the image is open for writing its
//! file is larger than the data (128 MiB ahead); when the qcow2 node is
//! deleted the file is cut back to the data and the filter lets go of it;
//! opened and written again it grows again, and at exit it is cut back.
//! At each step the file has the same length under both daemons, and at
//! the end `qemu-img check` is clean and the data is what was written.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok, storaged, tool, TestDaemon};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn qemu_io(image: &str, format: &str, commands: &[&str]) {
    let mut args = vec!["-f", format];
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(image);
    tool("qemu-io", &args);
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// The file's length once it is below `limit` (the preallocation is
/// dropped after the permissions change, in the background).
async fn len_below(path: &Path, limit: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let len = file_len(path);
        if len < limit {
            return len;
        }
        assert!(
            Instant::now() < deadline,
            "{} stays {len} bytes",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn options(dir: &Path) -> Vec<String> {
    let image = dir.join("disk.qcow2");
    common::create_qcow2(image.to_str().expect("path"), "64M");
    [
        "--blockdev".to_string(),
        format!("file,node-name=f,filename={}", image.display()),
        "--blockdev".to_string(),
        "preallocate,node-name=p,file=f".to_string(),
        "--blockdev".to_string(),
        "qcow2,node-name=q,file=p".to_string(),
        "--nbd-server".to_string(),
        format!(
            "addr.type=unix,addr.path={}",
            dir.join("nbd.sock").display()
        ),
        "--export".to_string(),
        "nbd,id=e,node-name=q,writable=on".to_string(),
    ]
    .to_vec()
}

/// What one daemon does to the file: its lengths after writing, after the
/// qcow2 node went, after writing again and after exit; the graph once
/// the qcow2 node went.
async fn lengths_under(program: Command) -> (Vec<u64>, Value) {
    let mut daemon = TestDaemon::spawn(program, tempfile::tempdir().expect("dir"), options);
    let image = daemon.path("disk.qcow2");
    let uri = format!("nbd+unix:///q?socket={}", daemon.path("nbd.sock").display());
    let mut lengths = vec![file_len(&image)];
    qemu_io(
        &uri,
        "raw",
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 10M 64k",
            "write -z 20M 64k",
            "flush",
        ],
    );
    lengths.push(file_len(&image));

    let mut qmp = daemon.connect().await;
    common::delete_export(&mut qmp, "e").await;
    ok(&mut qmp, "blockdev-del", json!({"node-name": "q"})).await;
    lengths.push(len_below(&image, 64 * MIB).await);
    // Once dropped, the filter takes nothing on its file (its wait for the
    // permissions to be applied again is short, but not zero).
    let graph = loop {
        let graph = ok(&mut qmp, "x-debug-query-block-graph", json!({})).await;
        if graph["edges"][0]["perm"] == json!([]) {
            break graph;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    ok(
        &mut qmp,
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "q", "file": "p"}),
    )
    .await;
    ok(
        &mut qmp,
        "block-export-add",
        json!({"type": "nbd", "id": "e", "node-name": "q", "writable": true}),
    )
    .await;
    qemu_io(&uri, "raw", &["write -P 0x33 30M 64k"]);
    lengths.push(file_len(&image));
    drop(qmp);
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().success(), "{}", daemon.stderr());
    lengths.push(file_len(&image));

    let path = image.to_str().expect("path");
    tool("qemu-img", &["check", "-q", path]);
    qemu_io(
        path,
        "qcow2",
        &[
            "read -P 0x11 0 1M",
            "read -P 0x22 10M 64k",
            "read -P 0 20M 64k",
            "read -P 0x33 30M 64k",
            "read -P 0 31M 33M",
        ],
    );
    let check = tool("qemu-img", &["check", "--output=json", path]);
    let check: Value = serde_json::from_str(&check).expect("check JSON");
    assert_eq!(
        lengths.last().copied(),
        check["image-end-offset"].as_u64(),
        "cut back to the image's end"
    );
    (lengths, graph)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_preallocated_while_written_and_cut_back_as_qemu_storage_daemon_does() {
    let expected = lengths_under(Command::new("qemu-storage-daemon")).await;
    let got = lengths_under(storaged()).await;
    assert_eq!(got, expected);

    let (lengths, _) = got;
    let [created, written, dropped, rewritten, exited] = lengths[..] else {
        panic!("{lengths:?}");
    };
    // Written: 128 MiB past the first write past the end, 1 MiB aligned.
    assert!(created < MIB, "{lengths:?}");
    assert!(written > 128 * MIB && written % MIB == 0, "{lengths:?}");
    assert!(dropped < 2 * MIB, "{lengths:?}");
    assert!(rewritten > 128 * MIB, "{lengths:?}");
    assert!(dropped < exited && exited < 2 * MIB, "{lengths:?}");
}

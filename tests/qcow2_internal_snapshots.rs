//! Internal qcow2 snapshots taken and deleted over QMP while a client
//! writes over NBD: each snapshot keeps the disk as it was at its
//! instant (read back by `qemu-img convert -l`), QEMU's tools see and
//! delete them, and the image stays consistent (`qemu-img check`).

mod common;

use std::path::Path;

use common::{error, ok, tool, TestDaemon};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// Writes `pattern` over the first 2 MiB and a cluster at 3 MiB through
/// the NBD export.
fn write_over_nbd(uri: &str, pattern: u8) {
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P {pattern} 0 2M"),
            "-c",
            &format!("write -P {pattern} 3M 64k"),
            uri,
        ],
    );
}

/// Checks that `image`'s snapshot `name` (or the active image) holds
/// `pattern` where it was written, and zeroes elsewhere.
fn expect_contents(image: &Path, snapshot: Option<&str>, pattern: u8) {
    let out = image.with_extension(format!("{}.raw", snapshot.unwrap_or("active")));
    let mut args = vec!["convert", "-U", "-f", "qcow2", "-O", "raw"];
    let option;
    if let Some(name) = snapshot {
        option = format!("snapshot.name={name}");
        args.extend(["-l", &option]);
    }
    let image_arg = image.to_str().expect("UTF-8");
    let out_arg = out.to_str().expect("UTF-8");
    args.extend([image_arg, out_arg]);
    tool("qemu-img", &args);
    let data = std::fs::read(&out).expect("converted image");
    let expected = |offset: usize| {
        let written = offset < (2 * MIB) as usize
            || ((3 * MIB) as usize..(3 * MIB + 65536) as usize).contains(&offset);
        if written {
            pattern
        } else {
            0
        }
    };
    for offset in (0..data.len()).step_by(4096) {
        assert_eq!(
            data[offset],
            expected(offset),
            "{snapshot:?} at {offset:#x}"
        );
    }
}

#[tokio::test]
async fn snapshots_keep_the_disk_of_their_instant_while_a_client_writes() {
    let images = tempfile::tempdir().expect("temp dir");
    let image = images.path().join("disk.qcow2");
    let image_arg = image.to_str().expect("UTF-8").to_owned();
    common::create_qcow2(&image_arg, "4M");
    let mut daemon = TestDaemon::start_in(tempfile::tempdir().expect("temp dir"), |dir| {
        vec![
            "--blockdev".into(),
            format!("driver=qcow2,node-name=q0,file.driver=file,file.filename={image_arg}"),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "nbd,id=e0,node-name=q0,writable=on".into(),
        ]
    });
    let uri = format!(
        "nbd+unix:///q0?socket={}",
        daemon.path("nbd.sock").display()
    );
    let mut client = daemon.connect().await;

    write_over_nbd(&uri, 1);
    ok(
        &mut client,
        "blockdev-snapshot-internal-sync",
        json!({"device": "q0", "name": "s1"}),
    )
    .await;
    write_over_nbd(&uri, 2);
    ok(
        &mut client,
        "transaction",
        json!({"actions": [{"type": "blockdev-snapshot-internal-sync", "data": {"device": "q0", "name": "s2"}}]}),
    )
    .await;
    write_over_nbd(&uri, 3);
    let nodes = ok(
        &mut client,
        "query-named-block-nodes",
        json!({"flat": true}),
    )
    .await;
    let q0 = nodes
        .as_array()
        .expect("a list")
        .iter()
        .find(|node| node["node-name"] == "q0")
        .expect("q0");
    let names: Vec<&str> = q0["image"]["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    assert_eq!(
        error(
            &mut client,
            "blockdev-snapshot-internal-sync",
            json!({"device": "q0", "name": "s1"})
        )
        .await
        .1,
        "Snapshot with name 's1' already exists on device 'q0'"
    );

    // QEMU's tools read the snapshots as storaged left them.
    let check = tool("qemu-img", &["check", "-U", &image_arg]);
    assert!(check.contains("No errors were found"), "{check}");
    let list = tool("qemu-img", &["snapshot", "-U", "-l", &image_arg]);
    assert!(list.contains(" s1 ") && list.contains(" s2 "), "{list}");
    expect_contents(&image, Some("s1"), 1);
    expect_contents(&image, Some("s2"), 2);

    // Deleting s1 gives its clusters back; s2 and the disk stay whole.
    let deleted = ok(
        &mut client,
        "blockdev-snapshot-delete-internal-sync",
        json!({"device": "q0", "name": "s1"}),
    )
    .await;
    assert_eq!(deleted["id"], "1");
    write_over_nbd(&uri, 4);
    ok(&mut client, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());

    let check = tool("qemu-img", &["check", &image_arg]);
    assert!(check.contains("No errors were found"), "{check}");
    assert!(!check.contains("leaked"), "{check}");
    expect_contents(&image, Some("s2"), 2);
    expect_contents(&image, None, 4);
    // A snapshot storaged took, deleted by QEMU's tool.
    tool("qemu-img", &["snapshot", "-d", "s2", &image_arg]);
    let check = tool("qemu-img", &["check", &image_arg]);
    assert!(
        check.contains("No errors were found") && !check.contains("leaked"),
        "{check}"
    );
}

#[tokio::test]
async fn a_snapshot_qemu_img_took_is_deleted_by_storaged() {
    let images = tempfile::tempdir().expect("temp dir");
    let image = images.path().join("disk.qcow2");
    let image_arg = image.to_str().expect("UTF-8").to_owned();
    common::create_qcow2(&image_arg, "4M");
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 5 0 2M",
            "-c",
            "write -P 5 3M 64k",
            &image_arg,
        ],
    );
    tool("qemu-img", &["snapshot", "-c", "old", &image_arg]);
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 6 0 2M",
            "-c",
            "write -P 6 3M 64k",
            &image_arg,
        ],
    );
    let mut daemon = TestDaemon::start_in(tempfile::tempdir().expect("temp dir"), |_| {
        vec![
            "--blockdev".into(),
            format!("driver=qcow2,node-name=q0,file.driver=file,file.filename={image_arg}"),
        ]
    });
    let mut client = daemon.connect().await;
    let deleted = ok(
        &mut client,
        "blockdev-snapshot-delete-internal-sync",
        json!({"device": "q0", "id": "1"}),
    )
    .await;
    assert_eq!(deleted["name"], "old");
    assert_eq!(
        error(
            &mut client,
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": "q0", "name": "old"})
        )
        .await
        .1,
        "Snapshot with id 'null' and name 'old' does not exist on device 'q0'"
    );
    ok(&mut client, "quit", json!({})).await;
    assert!(daemon.wait_exit().success());
    let check = tool("qemu-img", &["check", &image_arg]);
    assert!(
        check.contains("No errors were found") && !check.contains("leaked"),
        "{check}"
    );
    expect_contents(&image, None, 6);
}

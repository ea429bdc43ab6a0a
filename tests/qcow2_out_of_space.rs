//! A qcow2 image on a full file system (a 2 MiB tmpfs): writes that find
//! no room fail, and the clusters allocated for them are given back, so
//! `qemu-img check` finds no leak, as with QSD (issue 15: one cluster
//! leaked per failed write).

mod common;

use std::path::Path;
use std::process::Command;

use common::{ok, TestDaemon};
use serde_json::json;

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct SmallFs<'a>(&'a Path);

impl<'a> SmallFs<'a> {
    fn mount(dir: &'a Path, size: &str) -> SmallFs<'a> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallFs(dir)
    }
}

impl Drop for SmallFs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// Writes 41 clusters of 64 KiB one at a time through NBD; returns how
/// many failed.
fn fill(socket: &Path) -> usize {
    let uri = format!("nbd+unix:///disk?socket={}", socket.display());
    let mut args = vec!["-f".to_string(), "raw".to_string()];
    for i in 0..41u64 {
        args.push("-c".into());
        args.push(format!("write -P 0x22 {} 64k", i * 65536));
    }
    args.push(uri);
    let out = Command::new("qemu-io")
        .args(&args)
        .output()
        .expect("qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.matches("failed").count()
}

#[tokio::test]
async fn writes_that_find_no_room_leak_no_clusters() {
    let dir = tempfile::tempdir().expect("dir");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mountpoint");
    let _fs = SmallFs::mount(&small, "2M");
    let image = small.join("disk.qcow2");
    common::create_qcow2(image.to_str().unwrap(), "64M");
    let path = image.clone();
    let mut daemon = TestDaemon::start_in(tempfile::tempdir().expect("dir"), move |dir| {
        vec![
            "--blockdev".into(),
            format!("driver=file,node-name=file0,filename={}", path.display()),
            "--blockdev".into(),
            "driver=qcow2,node-name=disk,file=file0".into(),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "type=nbd,id=e0,node-name=disk,name=disk,writable=on".into(),
        ]
    });
    let failed = fill(&daemon.path("nbd.sock"));
    assert!(failed > 0, "the file system must fill up");
    let mut qmp = daemon.connect().await;
    ok(&mut qmp, "quit", json!({})).await;
    daemon.wait_exit();
    let check = Command::new("qemu-img")
        .args(["check", image.to_str().unwrap()])
        .output()
        .expect("qemu-img check");
    let report = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        check.status.success() && report.contains("No errors were found"),
        "{report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

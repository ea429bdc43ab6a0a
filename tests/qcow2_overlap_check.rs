//! qcow2's metadata overlap checks (issue 15 item 5): an image whose L2
//! entry for guest cluster 0 was damaged to point at metadata (the
//! refcount table, the L2 table itself, a refcount block). A guest write
//! there must not become a write of the metadata: it fails, the image is
//! marked corrupt and `BLOCK_IMAGE_CORRUPTED` says why, as QSD does; with
//! `overlap-check=none` the write lands on the refcount table, which is
//! what the checks prevent.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{ok, TestDaemon};
use serde_json::{json, Value};

const CLUSTER: u64 = 64 << 10;

fn be64(file: &std::fs::File, at: u64) -> u64 {
    let mut bytes = [0; 8];
    file.read_exact_at(&mut bytes, at).expect("read image");
    u64::from_be_bytes(bytes)
}

/// The metadata cluster a damaged L2 entry points at.
#[derive(Clone, Copy)]
enum Target {
    RefcountTable,
    /// The L2 table that holds the damaged entry.
    ActiveL2,
    /// The first refcount block.
    RefcountBlock,
}

impl Target {
    /// Its offset in the image `file`.
    fn locate(self, file: &std::fs::File) -> u64 {
        let mask = 0x00ff_ffff_ffff_fe00;
        let reftable = be64(file, 48);
        match self {
            Target::RefcountTable => reftable,
            Target::ActiveL2 => be64(file, be64(file, 40)) & mask,
            Target::RefcountBlock => be64(file, reftable) & mask,
        }
    }
}

/// A 64 MiB qcow2 image with data in guest cluster 0 whose L2 entry
/// then points at `target`.
fn damaged_image(path: &Path, target: Target) {
    common::create_qcow2(path.to_str().unwrap(), "64M");
    common::tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 64k",
            path.to_str().unwrap(),
        ],
    );
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("image");
    let l2 = Target::ActiveL2.locate(&file);
    let copied = 1u64 << 63;
    file.write_all_at(&(target.locate(&file) | copied).to_be_bytes(), l2)
        .expect("damage the L2 entry");
}

/// Runs `program` on an image damaged to point at `target` with
/// `overlap_check` (if any), writes 4 KiB at guest offset 0 through NBD,
/// and returns whether the write succeeded, the corruption event (if
/// any), whether the target kept its bytes and whether the header's
/// corrupt bit is set.
async fn write_over_metadata(
    program: Command,
    target: Target,
    overlap_check: &str,
) -> (bool, Option<Value>, bool, bool) {
    let option = overlap_check.to_string();
    let mut daemon = TestDaemon::spawn(program, tempfile::tempdir().unwrap(), move |dir| {
        damaged_image(&dir.join("disk.qcow2"), target);
        vec![
            "--blockdev".into(),
            format!(
                "driver=file,node-name=file0,filename={}",
                dir.join("disk.qcow2").display()
            ),
            "--blockdev".into(),
            format!("driver=qcow2,node-name=disk,file=file0{option}"),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            "type=nbd,id=e0,node-name=disk,name=disk,writable=on".into(),
        ]
    });
    let image = daemon.path("disk.qcow2");
    let file = std::fs::File::open(&image).unwrap();
    let metadata = target.locate(&file);
    let mut before = vec![0; CLUSTER as usize];
    file.read_exact_at(&mut before, metadata).unwrap();
    let mut qmp = daemon.connect().await;
    let uri = format!(
        "nbd+unix:///disk?socket={}",
        daemon.path("nbd.sock").display()
    );
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x77 0 4k", &uri])
        .output()
        .expect("qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let written = text.contains("wrote 4096/4096") && !text.contains("failed");
    let event = qmp
        .next_event(Duration::from_secs(2))
        .await
        .expect("monitor");
    ok(&mut qmp, "quit", json!({})).await;
    daemon.wait_exit();
    let mut after = vec![0; CLUSTER as usize];
    file.read_exact_at(&mut after, metadata).unwrap();
    let corrupt_bit = be64(&file, 72) & 2 != 0;
    (written, event, before == after, corrupt_bit)
}

/// A write to `target` is refused, and reported, as QSD refuses it.
async fn refused_as_qsd_refuses(target: Target) {
    let (written, event, kept, corrupt) = write_over_metadata(common::storaged(), target, "").await;
    assert!(!written, "the write must fail");
    assert!(kept, "the metadata must keep its bytes");
    assert!(corrupt, "the image is marked corrupt");
    let event = event.expect("BLOCK_IMAGE_CORRUPTED");
    let (_, qsd_event, qsd_kept, qsd_corrupt) =
        write_over_metadata(Command::new("qemu-storage-daemon"), target, "").await;
    assert!(qsd_kept && qsd_corrupt);
    let qsd_event = qsd_event.expect("QSD's BLOCK_IMAGE_CORRUPTED");
    assert_eq!(event["event"], qsd_event["event"]);
    assert_eq!(
        event["data"], qsd_event["data"],
        "{event} against QSD's {qsd_event}"
    );
}

#[tokio::test]
async fn a_write_that_would_land_on_the_refcount_table_is_refused_as_qsd_refuses_it() {
    refused_as_qsd_refuses(Target::RefcountTable).await;
}

#[tokio::test]
async fn a_write_that_would_land_on_an_l2_table_is_refused_as_qsd_refuses_it() {
    refused_as_qsd_refuses(Target::ActiveL2).await;
}

#[tokio::test]
async fn a_write_that_would_land_on_a_refcount_block_is_refused_as_qsd_refuses_it() {
    refused_as_qsd_refuses(Target::RefcountBlock).await;
}

#[tokio::test]
async fn without_overlap_checks_the_write_lands_on_the_refcount_table() {
    let (written, event, table_kept, _) = write_over_metadata(
        common::storaged(),
        Target::RefcountTable,
        ",overlap-check=none",
    )
    .await;
    assert!(written, "nothing refuses the write");
    assert!(!table_kept, "the refcount table was overwritten");
    assert!(event.is_none(), "{event:?}");
}

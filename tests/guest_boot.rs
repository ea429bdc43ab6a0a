//! The guest harness (`common::guest`) itself: a guest runs its script and
//! reports its status and output, takes turns with the host through the
//! scratch folder while QEMU answers QMP, runs host programs in `chroot
//! /host`, and reads and writes a vhost-user-blk disk served by
//! qemu-storage-daemon, checked against the image on the host.

mod common;

use std::process::Command;
use std::time::Duration;

use common::guest::GuestConfig;
use common::{md5sum, ok, pseudo_random, TestDaemon};
use serde_json::json;

#[test]
fn a_guest_reports_its_script_output_and_status() {
    let guest = GuestConfig::new("echo hi\nexit 3\n").run();
    assert_eq!(guest.status, 3, "{}", guest.console);
    assert!(
        guest.output().lines().any(|line| line == "hi"),
        "{}",
        guest.console
    );
}

#[test]
fn a_failing_command_ends_the_script_with_its_status() {
    let guest = GuestConfig::new("echo before\nsh -c 'exit 7'\necho after\n").run();
    assert_eq!(guest.status, 7, "{}", guest.console);
    assert!(guest.output().contains("before"), "{}", guest.console);
    assert!(!guest.output().contains("after"), "{}", guest.console);
}

#[test]
fn a_guest_loads_extra_modules_with_their_dependencies() {
    // vduse needs vdpa and vhost_iotlb; nbd needs none.
    let guest = GuestConfig::new("test -c /dev/vduse/control\ntest -b /dev/nbd0\nlsmod\n")
        .modules(&["vduse", "nbd"])
        .run();
    assert_eq!(guest.status, 0, "{}", guest.console);
    let loaded: Vec<&str> = guest
        .output()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for module in ["vduse", "vdpa", "vhost_iotlb", "nbd", "virtio_blk", "9p"] {
        assert!(loaded.contains(&module), "{module}: {}", guest.console);
    }
}

#[test]
#[should_panic(expected = "timed out after 3s waiting for the guest to power off")]
fn a_guest_that_outlives_its_timeout_fails_the_test() {
    GuestConfig::new("sleep 100\n")
        .timeout(Duration::from_secs(3))
        .run();
}

#[test]
#[should_panic(expected = "the guest's script did not finish")]
fn a_guest_whose_qemu_does_not_start_fails_the_test() {
    GuestConfig::new("true\n")
        .qemu_args(["-device", "no-such-device"])
        .run();
}

#[tokio::test]
async fn the_host_and_the_guest_take_turns_through_the_scratch_folder() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    // The guest announces itself, waits for the host's answer, and reads
    // it again with the host's own `cat` at the folder's host path.
    let script = format!(
        "echo up > /scratch/ready.tmp\n\
         mv /scratch/ready.tmp /scratch/ready\n\
         while [ ! -e /scratch/answer ]; do sleep 0.1; done\n\
         cat /scratch/answer\n\
         chroot /host /usr/bin/cat {}/answer\n",
        scratch.path().display()
    );
    let mut guest = GuestConfig::new(&script).scratch(scratch.path()).boot();

    let ready = guest.wait_for_file("ready");
    assert_eq!(std::fs::read_to_string(ready).expect("ready"), "up\n");
    let mut qmp = qmp::client::Client::connect_unix(guest.qmp_socket())
        .await
        .expect("connect to QEMU's QMP");
    qmp.negotiate().await.expect("negotiate");
    let status = ok(&mut qmp, "query-status", json!({})).await;
    assert_eq!(status["status"], "running", "{status}");
    std::fs::write(scratch.path().join("answer.tmp"), "from the host\n").expect("answer");
    std::fs::rename(
        scratch.path().join("answer.tmp"),
        scratch.path().join("answer"),
    )
    .expect("rename");

    let guest = guest.wait();
    assert_eq!(guest.status, 0, "{}", guest.console);
    let answers = guest
        .output()
        .lines()
        .filter(|line| *line == "from the host")
        .count();
    assert_eq!(answers, 2, "{}", guest.console);
}

/// The image's size: 32 MiB.
const IMAGE_SIZE: usize = 32 << 20;

/// The disk's virtqueues (the export's and the guest device's).
const QUEUES: u32 = 2;

/// Where the guest writes its pattern: 1 MiB at 5 MiB.
const PATTERN_MIB: usize = 5;

/// Starts `program` (qemu-storage-daemon, or storaged: they take the same
/// options) exporting a raw image holding `image` as a writable
/// vhost-user-blk device with [`QUEUES`] queues; the image is `disk.img` and the socket
/// `vhost.sock` in the daemon's directory.
fn vhost_user_blk_export(program: Command, image: &[u8]) -> TestDaemon {
    let dir = tempfile::tempdir().expect("export dir");
    TestDaemon::spawn(program, dir, |dir| {
        let path = dir.join("disk.img");
        std::fs::write(&path, image).expect("write the image");
        vec![
            "--blockdev".to_owned(),
            format!("driver=file,node-name=disk,filename={}", path.display()),
            "--export".to_owned(),
            format!(
                "type=vhost-user-blk,id=vhost0,node-name=disk,writable=on,\
                 num-queues={QUEUES},addr.type=unix,addr.path={}",
                dir.join("vhost.sock").display()
            ),
        ]
    })
}

/// The guest reads the whole disk with O_DIRECT and prints its MD5 sum,
/// then writes a pattern with O_DIRECT and reads it back.
fn read_write_verify(program: Command) {
    let image = pseudo_random(0x5eed, IMAGE_SIZE);
    let export = vhost_user_blk_export(program, &image);
    let image_path = export.path("disk.img");
    let image_sum = md5sum(&image_path);
    let scratch = tempfile::tempdir().expect("scratch dir");
    let pattern = pseudo_random(0xfeed, 1 << 20);
    std::fs::write(scratch.path().join("pattern"), &pattern).expect("pattern");

    let script = format!(
        "dd if=/dev/vda bs=1M iflag=direct | md5sum\n\
         dd if=/scratch/pattern of=/dev/vda bs=1M seek={PATTERN_MIB} oflag=direct conv=fsync\n\
         dd if=/dev/vda bs=1M skip={PATTERN_MIB} count=1 iflag=direct | cmp - /scratch/pattern\n\
         echo pattern read back\n"
    );
    let guest = GuestConfig::new(&script)
        .scratch(scratch.path())
        .vhost_user_blk(&export.path("vhost.sock"), QUEUES)
        .run();
    assert_eq!(guest.status, 0, "{}", guest.console);
    let guest_sum = guest
        .output()
        .lines()
        .find_map(|line| line.strip_suffix("  -"))
        .unwrap_or_else(|| panic!("no checksum: {}", guest.console));
    assert_eq!(guest_sum, image_sum, "{}", guest.console);
    assert!(
        guest.output().contains("pattern read back"),
        "{}",
        guest.console
    );

    let mut expected = image;
    expected[PATTERN_MIB << 20..(PATTERN_MIB + 1) << 20].copy_from_slice(&pattern);
    let written = std::fs::read(&image_path).expect("read the image");
    assert!(
        written == expected,
        "the image on the host is not the original with the pattern at {PATTERN_MIB} MiB"
    );
}

#[test]
fn a_guest_reads_and_writes_a_qsd_vhost_user_blk_export() {
    read_write_verify(Command::new("qemu-storage-daemon"));
}

#[test]
fn a_guest_reads_and_writes_a_storaged_vhost_user_blk_export() {
    read_write_verify(common::storaged());
}

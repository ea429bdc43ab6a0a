//! storaged's vhost-user-blk export under a real Linux guest (QEMU 10,
//! `vhost-user-blk-pci` with two queues, the guest's own virtio-blk
//! driver): the guest reads the disk and writes to it with O_DIRECT,
//! discards a range, sees a resize done over QMP while it runs, and the
//! daemon quits cleanly with the guest still attached (the guest's I/O
//! then waits for a back end to come back, as QEMU's device does).

use std::os::unix::fs::FileExt;

use serde_json::json;

use crate::common::guest::GuestConfig;
use crate::common::{md5sum, ok, pseudo_random, TestDaemon};

const MIB: u64 = 1 << 20;
/// The image before and after the resize.
const SIZE: u64 = 64 * MIB;
const GROWN: u64 = 128 * MIB;
/// Where the guest writes its patterns, discards, and writes after the
/// resize.
const PATTERN_AT: u64 = 5 * MIB;
const DISCARD_AT: u64 = 8 * MIB;
const GROWN_PATTERN_AT: u64 = 96 * MIB;

/// The guest's side, step by step; `/scratch` is shared with the host.
fn script() -> String {
    let (pattern_mib, discard_mib, grown_mib) =
        (PATTERN_AT / MIB, DISCARD_AT / MIB, GROWN_PATTERN_AT / MIB);
    format!(
        "echo size $(cat /sys/block/vda/size)\n\
         echo queues $(ls /sys/block/vda/mq | wc -l)\n\
         dd if=/dev/vda bs=1M iflag=direct | md5sum\n\
         dd if=/scratch/pattern of=/dev/vda bs=1M seek={pattern_mib} oflag=direct conv=fsync\n\
         dd if=/dev/vda bs=1M skip={discard_mib} count=1 iflag=direct | cmp -s - /scratch/zeroes && exit 10\n\
         chroot /host blkdiscard -o {DISCARD_AT} -l {MIB} /dev/vda\n\
         dd if=/dev/vda bs=1M skip={discard_mib} count=1 iflag=direct | cmp - /scratch/zeroes\n\
         echo discarded\n\
         touch /scratch/resize-now\n\
         for i in $(seq 300); do [ $(cat /sys/block/vda/size) != {old} ] && break; sleep 0.1; done\n\
         echo resized $(cat /sys/block/vda/size)\n\
         dd if=/scratch/pattern of=/dev/vda bs=1M seek={grown_mib} oflag=direct conv=fsync\n\
         touch /scratch/quit-now\n\
         while [ ! -e /scratch/quit-done ]; do sleep 0.1; done\n",
        old = SIZE / 512,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linux_guest_uses_the_disk_and_the_daemon_quits_under_it() {
    let image = pseudo_random(0x5eed, SIZE as usize);
    let mut daemon = TestDaemon::start_in(tempfile::tempdir().expect("dir"), |dir| {
        std::fs::write(dir.join("disk.img"), &image).expect("image");
        vec![
            "--blockdev".into(),
            format!(
                "driver=file,node-name=disk,discard=unmap,filename={}",
                dir.join("disk.img").display()
            ),
            "--export".into(),
            format!(
                "type=vhost-user-blk,id=vu0,node-name=disk,writable=on,num-queues=2,\
                 addr.type=unix,addr.path={}",
                dir.join("vhost.sock").display()
            ),
        ]
    });
    let image_path = daemon.path("disk.img");
    let image_sum = md5sum(&image_path);
    let scratch = tempfile::tempdir().expect("scratch");
    let pattern = pseudo_random(0xfeed, MIB as usize);
    std::fs::write(scratch.path().join("pattern"), &pattern).expect("pattern");
    std::fs::write(scratch.path().join("zeroes"), vec![0u8; MIB as usize]).expect("zeroes");

    let mut guest = GuestConfig::new(&script())
        .scratch(scratch.path())
        .vhost_user_blk(&daemon.path("vhost.sock"), 2)
        .cpus(2)
        .boot();
    let mut qmp = daemon.connect().await;
    tokio::task::block_in_place(|| guest.wait_for_file("resize-now"));
    ok(
        &mut qmp,
        "block_resize",
        json!({"node-name": "disk", "size": GROWN}),
    )
    .await;
    tokio::task::block_in_place(|| guest.wait_for_file("quit-now"));
    ok(&mut qmp, "quit", json!({})).await;
    let status = tokio::task::block_in_place(|| daemon.wait_exit());
    std::fs::write(scratch.path().join("quit-done"), "").expect("quit-done");
    let guest = tokio::task::block_in_place(|| guest.wait());
    assert!(status.success(), "{status}: {}", daemon.stderr());
    assert_eq!(guest.status, 0, "{}", guest.console);

    let out = guest.output();
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}' line: {}", guest.console))
            .trim()
            .to_owned()
    };
    assert_eq!(line("size "), (SIZE / 512).to_string());
    assert_eq!(
        line("queues "),
        "2",
        "a hardware queue per virtqueue (and vCPU)"
    );
    let guest_sum = out
        .lines()
        .find_map(|l| l.strip_suffix("  -"))
        .unwrap_or_else(|| panic!("no checksum: {}", guest.console));
    assert_eq!(guest_sum, image_sum);
    assert!(out.contains("discarded"), "{}", guest.console);
    assert_eq!(line("resized "), (GROWN / 512).to_string());

    let file = std::fs::File::open(&image_path).expect("image");
    assert_eq!(file.metadata().expect("stat").len(), GROWN);
    let read = |at: u64| {
        let mut bytes = vec![0; MIB as usize];
        file.read_exact_at(&mut bytes, at).expect("read image");
        bytes
    };
    assert!(read(PATTERN_AT) == pattern, "pattern at {PATTERN_AT}");
    assert!(
        read(GROWN_PATTERN_AT) == pattern,
        "pattern after the resize"
    );
    assert!(read(DISCARD_AT).iter().all(|&b| b == 0), "discarded range");
    let untouched = (SIZE - MIB) as usize;
    assert!(
        read(SIZE - MIB) == image[untouched..],
        "the end of the original image"
    );
}

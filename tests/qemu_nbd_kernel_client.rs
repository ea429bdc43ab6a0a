//! storaged as `qemu-nbd -c /dev/nbd0` inside a guest (the host has no
//! `nbd` module): the kernel's NBD client gets a qcow2 image, `mkfs.ext4`
//! makes a file system on `/dev/nbd0`, a file is written, `-d` detaches
//! the device and the server stops; attached again read-only, the file
//! reads back; on the host, the image passes `qemu-img check`.

mod common;

use common::guest::GuestConfig;
use common::tool;

#[test]
fn the_kernel_client_writes_a_file_system_into_a_qcow2_image() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let image = scratch.path().join("disk.qcow2");
    let image_str = image.to_str().expect("UTF-8");
    common::create_qcow2(image_str, "64M");
    let pid_file = scratch.path().join("server.pid");
    // The host's /tmp (where a build may live) is hidden in the guest;
    // the scratch folder is shared at its host path.
    let binary = scratch.path().join("storaged");
    std::fs::copy(env!("CARGO_BIN_EXE_storaged"), &binary).expect("copy storaged");
    let storaged = binary.display();
    // The server forks once the device is attached and stops when it is
    // detached; its pid file goes away when it has closed the image.
    let attach = |extra: &str| {
        format!(
            "chroot /host {storaged} nbd {extra} -c /dev/nbd0 --pid-file={} -f qcow2 {image_str}\n\
             test -e /scratch/server.pid\n",
            pid_file.display()
        )
    };
    let detach = format!(
        "chroot /host {storaged} nbd -d /dev/nbd0\n\
         while [ -e /scratch/server.pid ]; do sleep 0.1; done\n"
    );
    let script = format!(
        "{attach_rw}\
         chroot /host /usr/sbin/mkfs.ext4 -q /dev/nbd0\n\
         mkdir -p /mnt\n\
         mount -t ext4 /dev/nbd0 /mnt\n\
         echo 'written through /dev/nbd0' > /mnt/hello\n\
         umount /mnt\n\
         {detach}\
         {attach_ro}\
         cat /sys/block/nbd0/ro\n\
         mount -t ext4 -o ro,noload /dev/nbd0 /mnt\n\
         cat /mnt/hello\n\
         umount /mnt\n\
         {detach}",
        attach_rw = attach(""),
        attach_ro = attach("-r"),
    );
    let guest = GuestConfig::new(&script)
        .modules(&["nbd", "ext4", "crc32c_generic"])
        .scratch(scratch.path())
        .run();
    assert_eq!(guest.status, 0, "{}", guest.console);
    let output: Vec<&str> = guest.output().lines().collect();
    assert!(output.contains(&"1"), "read-only device: {}", guest.console);
    assert!(
        output.contains(&"written through /dev/nbd0"),
        "{}",
        guest.console
    );
    let check = tool("qemu-img", &["check", image_str]);
    assert!(check.contains("No errors were found"), "{check}");
}

#!/bin/busybox sh
# /init of the test guests, run by busybox from the initramfs that
# tests/common/guest.rs builds: loads the modules listed in /modules, mounts
# the host's root (read-only) at /host and the scratch folder at /scratch,
# runs /guest/script with `sh -e`, prints its exit status on the console
# and powers off. A failure here ends init, the kernel panics, QEMU exits
# without a status line, and the test fails with the console.
set -e
/bin/busybox --install -s /bin
# busybox's applets here; the host's programs in `chroot /host`.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r module; do
    insmod "$module"
done </modules

mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro hostroot /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 scratch /scratch

# `chroot /host` runs the host's programs with the guest's /dev, /proc and
# /sys, an empty /tmp, and the scratch folder at its path on the host.
for fs in dev proc sys; do
    mount --bind "/$fs" "/host/$fs"
done
mount -t tmpfs tmpfs /host/tmp
scratch_on_host=$(cat /guest/scratch-path)
mkdir -p "/host$scratch_on_host"
mount --bind /scratch "/host$scratch_on_host"

echo "storaged-guest: script start"
status=0
sh -e /guest/script </dev/null || status=$?
sync
echo "storaged-guest: exit status $status"
poweroff -f

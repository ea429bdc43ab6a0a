#!/usr/bin/env bash
# Builds storaged and serves a disk from the current directory: DISK
# (default disk.img, created as a 1 GiB sparse file if missing) as the raw
# node `disk0`, exported writable over NBD on nbd.sock (export name
# `disk0`), with a QMP monitor on qmp.sock. Ctrl-C (or `quit` on the
# monitor) stops it after flushing. Then, from the same directory:
#
#   nbdinfo 'nbd+unix:///disk0?socket=nbd.sock'
#   qemu-io -f raw -c 'write -P 0xab 0 1M' 'nbd+unix:///disk0?socket=nbd.sock'
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
disk=${1:-disk.img}
if [ ! -e "$disk" ]; then
    truncate -s 1G "$disk"
fi
cargo build --release --manifest-path "$repo/Cargo.toml" -p storaged
echo "storaged: serving $disk as NBD export 'disk0' on nbd.sock, QMP on qmp.sock"
exec "${CARGO_TARGET_DIR:-$repo/target}/release/storaged" \
    --blockdev "driver=file,node-name=file0,filename=${disk//,/,,}" \
    --blockdev driver=raw,node-name=disk0,file=file0 \
    --nbd-server addr.type=unix,addr.path=nbd.sock \
    --export type=nbd,id=export0,node-name=disk0,writable=on \
    --chardev socket,id=qmp0,path=qmp.sock,server=on,wait=off \
    --monitor chardev=qmp0

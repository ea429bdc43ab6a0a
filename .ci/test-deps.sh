#!/usr/bin/env bash
# Installs what storaged's tests need on Debian 12 (bookworm), and nothing
# already there: QEMU 10 (qemu-utils, for qemu-storage-daemon, qemu-img,
# qemu-io, qemu-nbd) from bookworm-backports, the NBD clients (libnbd-bin,
# python3-libnbd), nbdkit, fio, fuse3, and QEMU's Python QMP client
# (qemu.qmp from PyPI) for the `python3` on PATH. Idempotent: a second run
# installs nothing and does not touch apt. Needs root (or sudo) only when
# something is missing. Rust (cargo >= 1.80) must already be installed.
set -euo pipefail

APT_PACKAGES=(libnbd-bin python3-libnbd nbdkit fio fuse3)
QEMU_PACKAGES=(qemu-utils)
QEMU_MAJOR=10
SOURCES=/etc/apt/sources.list.d/debian.sources

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

apt_updated=no
apt_update() {
    if [ "$apt_updated" = no ]; then
        as_root apt-get update -q
        apt_updated=yes
    fi
}

# QEMU packages come from bookworm-backports (QEMU 10); bookworm's own are
# 7.2 and would replace qemu-img & co. The suite must be in apt's sources.
ensure_backports() {
    if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    if [ -f "$SOURCES" ] && grep -q '^Suites: bookworm bookworm-updates$' "$SOURCES"; then
        as_root sed -i 's/^Suites: bookworm bookworm-updates$/& bookworm-backports/' "$SOURCES"
    else
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
            as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    fi
    apt_updated=no
}

if ! command -v cargo >/dev/null; then
    echo "test-deps: cargo not found; install Rust >= 1.80 (https://rustup.rs) first" >&2
    exit 1
fi

if ! qemu-storage-daemon --version 2>/dev/null | grep -q "version ${QEMU_MAJOR}\."; then
    ensure_backports
    apt_update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -t bookworm-backports "${QEMU_PACKAGES[@]}"
fi

missing=()
for package in "${APT_PACKAGES[@]}"; do
    installed "$package" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if ! python3 -c 'import qemu.qmp' 2>/dev/null; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip
    fi
    # Debian's own python3 refuses pip installs without this flag (PEP 668).
    python3 -m pip install -q qemu.qmp ||
        python3 -m pip install -q --break-system-packages qemu.qmp
fi

echo "test-deps: qemu-storage-daemon $(qemu-storage-daemon --version | head -1 | awk '{print $3}'), ${APT_PACKAGES[*]}, qemu.qmp: ready"

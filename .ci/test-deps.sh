#!/usr/bin/env bash
# Installs what storaged's tests need on Debian 12 (bookworm), and nothing
# already there: QEMU 10 (qemu-utils, for qemu-storage-daemon, qemu-img,
# qemu-io, qemu-nbd; qemu-system-x86, for the test guests) from
# bookworm-backports, the NBD clients (libnbd-bin, python3-libnbd), nbdkit,
# fio, fuse3, busybox-static, kmod, zstd and xz-utils (the guests' kernel
# and initramfs), libssl-dev and pkg-config (the openssl crate builds
# against OpenSSL 3 for NBD over TLS), systemd (systemd-socket-activate, for
# tests/systemd.rs; it runs without systemd as PID 1), and QEMU's Python QMP
# client (qemu.qmp from PyPI) and the Prometheus text-format parser
# (prometheus-client from PyPI, tests/metrics.rs) for the `python3` on PATH.
# The guests' kernel: Debian 12's newest 6.12 kernel from bookworm-security
# (the 6.1 default kernel lacks VDUSE and ublk), downloaded with
# `apt-get download` and unpacked, never installed, into $GUEST_CACHE
# (/var/cache/storaged-guest/<version>, with `kernel` a link to it): the
# uncompressed vmlinux, the modules and their modules.dep; shared by every
# clone and test run (tests/common/guest.rs reads it).
# Idempotent: a second run installs and downloads nothing and does not touch
# apt. Needs root (or sudo) only when something is missing. Rust
# (cargo >= 1.80) must already be installed.
set -euo pipefail

APT_PACKAGES=(libnbd-bin python3-libnbd nbdkit fio fuse3 busybox-static kmod zstd xz-utils libssl-dev pkg-config systemd)
QEMU_PACKAGES=(qemu-utils)
# Without its recommends (a GUI, SPICE, OpenGL, UEFI firmware: 150 packages).
GUEST_QEMU_PACKAGES=(qemu-system-x86)
QEMU_MAJOR=10
SOURCES=/etc/apt/sources.list.d/debian.sources
GUEST_CACHE=/var/cache/storaged-guest
# The guest kernel's packages are linux-image-6.12.<n>+deb12-amd64-unsigned.
GUEST_KERNEL_PATTERN='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$'

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

# The guest kernel (6.12) comes from bookworm-security, which a Debian 12
# install lists by default; added here if it is not.
ensure_security() {
    if grep -rqs 'bookworm-security' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    printf 'Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
        as_root tee /etc/apt/sources.list.d/bookworm-security.sources >/dev/null
    apt_updated=no
}

# Writes to $2 the ELF kernel compressed inside the bzImage $1: the first
# zstd or xz stream that decompresses to an ELF file (as the kernel's
# scripts/extract-vmlinux does). The decompressors stop with an error at the
# bzImage's bytes after the stream; the ELF header is what is checked.
extract_vmlinux() {
    local bzimage=$1 out=$2 magic decompress offset
    for magic in '\x28\xb5\x2f\xfd:zstd' '\xfd7zXZ\x00:xz'; do
        decompress=${magic#*:}
        for offset in $(LC_ALL=C grep -obUaP "${magic%:*}" "$bzimage" | cut -d: -f1); do
            { tail -c +$((offset + 1)) "$bzimage" | "$decompress" -dc 2>/dev/null >"$out"; } || true
            if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
                return
            fi
        done
    done
    echo "test-deps: no zstd or xz stream holding an ELF kernel in $bzimage" >&2
    exit 1
}

# Downloads and unpacks the newest 6.12 kernel into $GUEST_CACHE/<version>,
# extracts the uncompressed vmlinux from its bzImage (booted by QEMU through
# PVH, which saves the in-guest decompression), runs depmod on the tree, and
# points $GUEST_CACHE/kernel at it once it is complete.
ensure_guest_kernel() {
    if [ -f "$GUEST_CACHE/kernel/vmlinux" ]; then
        return
    fi
    ensure_security
    apt_update
    local package version staging vmlinux
    package=$(apt-cache pkgnames linux-image-6.12. | grep -E "$GUEST_KERNEL_PATTERN" | sort -V | tail -1)
    if [ -z "$package" ]; then
        echo "test-deps: no linux-image-6.12.*+deb12-amd64-unsigned in apt's sources (bookworm-security)" >&2
        exit 1
    fi
    version=${package#linux-image-}
    version=${version%-unsigned}
    as_root mkdir -p "$GUEST_CACHE"
    staging=$(as_root mktemp -d "$GUEST_CACHE/.staging.XXXXXX")
    as_root chmod 755 "$staging"
    # _apt cannot write into a root-only folder; the download is unsandboxed.
    (cd "$staging" && as_root apt-get download -q -o APT::Sandbox::User=root "$package")
    as_root dpkg-deb -x "$staging"/*.deb "$staging/tree"
    as_root rm -rf "$staging"/*.deb "$staging/tree/usr/share/doc"
    as_root depmod -b "$staging/tree" "$version"
    vmlinux=$(mktemp)
    extract_vmlinux "$staging/tree/boot/vmlinuz-$version" "$vmlinux"
    chmod 644 "$vmlinux"
    as_root mv "$vmlinux" "$staging/tree/vmlinux"
    echo "$version" | as_root tee "$staging/tree/version" >/dev/null
    as_root chmod 755 "$staging/tree"
    as_root rm -rf "${GUEST_CACHE:?}/$version"
    as_root mv "$staging/tree" "$GUEST_CACHE/$version"
    as_root rmdir "$staging"
    as_root ln -sfn "$version" "$GUEST_CACHE/kernel"
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

if ! qemu-system-x86_64 --version 2>/dev/null | grep -q "version ${QEMU_MAJOR}\."; then
    ensure_backports
    apt_update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -t bookworm-backports "${GUEST_QEMU_PACKAGES[@]}"
fi

missing=()
for package in "${APT_PACKAGES[@]}"; do
    installed "$package" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# PyPI packages, as module:package.
PIP_PACKAGES=(qemu.qmp:qemu.qmp prometheus_client:prometheus-client)
for entry in "${PIP_PACKAGES[@]}"; do
    module=${entry%%:*} package=${entry#*:}
    if python3 -c "import $module" 2>/dev/null; then
        continue
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip
    fi
    # Debian's own python3 refuses pip installs without this flag (PEP 668).
    python3 -m pip install -q "$package" ||
        python3 -m pip install -q --break-system-packages "$package"
done

ensure_guest_kernel

echo "test-deps: qemu-storage-daemon $(qemu-storage-daemon --version | head -1 | awk '{print $3}'), ${APT_PACKAGES[*]}, qemu.qmp, prometheus-client, guest kernel $(cat "$GUEST_CACHE/kernel/version"): ready"

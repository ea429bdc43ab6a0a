#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test
# of every crate (unit tests, integration tests against the real binary,
# comparisons with qemu-storage-daemon, the qemu.qmp Python client).
set -euo pipefail
cd "$(dirname "$0")/.."
./.ci/test-deps.sh
cargo test --workspace --no-fail-fast

#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz with libFuzzer on nightly Rust)
# for a short, bounded time, starting from its committed corpus (copied:
# the repository's corpus only changes by hand). A crash fails the run and
# leaves its input in fuzz/artifacts/TARGET/ to be made a regression seed.
# Installs the nightly toolchain and cargo-fuzz when missing.
#   FUZZ_SECONDS   seconds per target (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked cargo-fuzz
fi

cargo +nightly fuzz build -O
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$work/$target"
    cp fuzz/corpus/"$target"/* "$work/$target/"
    echo "fuzz: $target for ${seconds}s"
    cargo +nightly fuzz run -O "$target" "$work/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 |
        grep -E '^(Done|stat::number_of_executed_units|#[0-9]+ +DONE)|ERROR|panicked' || true
    if [ -n "$(ls -A fuzz/artifacts/"$target" 2>/dev/null)" ]; then
        echo "fuzz: $target found a crash: fuzz/artifacts/$target/" >&2
        exit 1
    fi
done

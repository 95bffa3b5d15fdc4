#!/usr/bin/env bash
# Every test that needs no GPU, as CI runs it (.ci/run calls this). Installs what it needs.
#   VGPU_SKIP_VM=1     skip the QEMU/libvirt guest tests (they need root, apt and ~5 minutes)
#   VGPU_FUZZ_SECS=N   seconds per fuzz target (default 30; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "toolchain checks"
command -v cc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc; }
cargo fmt --all -- --check

step "build"
cargo build --workspace --all-targets

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "unit and integration tests (sim GPU)"
cargo test --workspace

fuzz_secs=${VGPU_FUZZ_SECS:-30}
if [ "$fuzz_secs" -gt 0 ]; then
    step "fuzzing, ${fuzz_secs}s per target"
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
    # cargo fuzz needs nightly flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
    for target in decode_message descriptor_chain; do
        (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$fuzz_secs" -print_final_stats=1 2>&1 | tail -3)
    done
fi

if [ "${VGPU_SKIP_VM:-0}" != 1 ]; then
    step "guest VM tests (QEMU under TCG, libvirt)"
    VGPU_DAEMON=target/debug/vhost-gpu VGPU_LIBCUDA=target/debug/libcuda.so VGPU_REQUIRE_DAEMON=1 tests/vm/run.sh
fi
step "all tests passed"

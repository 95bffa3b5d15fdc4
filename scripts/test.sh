#!/usr/bin/env bash
# Every test that needs no GPU, as CI runs it (.ci/run calls this). Installs what it needs.
#   VGPU_SKIP_VM=1     skip the QEMU/libvirt guest tests (they need root, apt and ~5 minutes)
#   VGPU_FUZZ_SECS=N   seconds per fuzz target (default 30; 0 skips fuzzing)
#   VGPU_SOAK_SECS=N   seconds of the pool soak, vgpu-soak (default 180; 0 skips it)
#   VGPU_SKIP_PACKAGING=1  skip the .deb install test (it needs root and debootstrap's mirror)
set -euo pipefail
export CARGO_TERM_COLOR=never
# A one-shot build gains nothing from incremental caches, and they double the target on a small disk.
export CARGO_INCREMENTAL=0
cd "$(dirname "$0")/.."
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "toolchain checks"
command -v cc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc; }
# protoc builds etcd-client's gRPC code; etcd runs the controller's HA tests (controller/tests/ha.rs).
if ! command -v protoc >/dev/null || ! command -v etcd >/dev/null; then
    apt-get update -qq
    command -v protoc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
    command -v etcd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client
fi
cargo fmt --all -- --check

step "build"
cargo build --workspace --all-targets

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "unit and integration tests (sim GPU)"
log=$(mktemp)
cargo test --workspace 2>&1 | tee "$log"
passed=$(awk '/^test result: ok\./ {n += $4} END {print n+0}' "$log")
rm -f "$log"

step "telemetry: a real Prometheus, the alert rules, the dashboard's queries"
tests/telemetry/run.sh target/debug

step "console in headless Chromium (tests/console/run.sh)"
clog=$(mktemp)
tests/console/run.sh 2>&1 | tee "$clog"
passed=$((passed + $(grep -c '^PASS: ' "$clog")))
rm -f "$clog"

soak_secs=${VGPU_SOAK_SECS:-180}
if [ "$soak_secs" -gt 0 ]; then
    step "soak, ${soak_secs} s"
    slog=$(mktemp)
    cargo run -q -p vgpu-tests --bin vgpu-soak -- --duration "$soak_secs" 2>&1 | tee "$slog"
    soak_passed=$(sed -n 's/^soak: \([0-9]*\) passed, 0 failed$/\1/p' "$slog" | tail -1)
    rm -f "$slog"
    passed=$((passed + ${soak_passed:-0}))
fi

fuzz_secs=${VGPU_FUZZ_SECS:-30}
if [ "$fuzz_secs" -gt 0 ]; then
    step "fuzzing, ${fuzz_secs}s per target"
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
    # cargo fuzz needs nightly flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
    for target in decode_message descriptor_chain remote_frame image; do
        flog=$(mktemp)
        if (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$fuzz_secs") >"$flog" 2>&1; then
            grep -E "^Done|stat::number_of_executed_units" "$flog" | tail -2
        else
            grep -v "^#" "$flog" | tail -60
            echo "fuzzing $target failed"
            exit 1
        fi
        rm -f "$flog"
    done
fi

if [ "${VGPU_SKIP_VM:-0}" != 1 ]; then
    step "guest VM tests (QEMU under TCG, libvirt)"
    vmlog=$(mktemp)
    VGPU_DAEMON=target/debug/vhost-gpu VGPU_LIBCUDA=target/debug/libcuda.so VGPU_REQUIRE_DAEMON=1 tests/vm/run.sh 2>&1 | tee "$vmlog"
    vm_passed=$(sed -n 's/.* \([0-9]*\) passed, 0 failed$/\1/p' "$vmlog" | tail -1)
    rm -f "$vmlog"
    passed=$((passed + ${vm_passed:-0}))

    step "OpenStack: real Placement (PyPI), libvirtd, a nova-compute stand-in (tests/openstack)"
    oslog=$(mktemp)
    VGPU_BIN_DIR=target/debug tests/openstack/run.sh 2>&1 | tee "$oslog"
    os_passed=$(sed -n 's/.* \([0-9]*\) passed, 0 failed$/\1/p' "$oslog" | tail -1)
    rm -f "$oslog"
    passed=$((passed + ${os_passed:-0}))
fi
if [ "${VGPU_SKIP_PACKAGING:-0}" != 1 ]; then
    step "packaging: the .deb packages in a clean bookworm root, the services run as their units say"
    plog=$(mktemp)
    VGPU_BIN_DIR=target/debug tests/packaging/run.sh 2>&1 | tee "$plog"
    pkg_passed=$(sed -n 's/^packaging: \([0-9]*\) passed, 0 failed.*/\1/p' "$plog" | tail -1)
    rm -f "$plog"
    passed=$((passed + ${pkg_passed:-0}))
fi
step "all tests passed"
echo "tests: $passed passed, 0 failed"

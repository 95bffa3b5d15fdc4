#!/usr/bin/env bash
# Runs one command natively and then sealed through our stack (vhost-gpu --gpu 0 + our
# libcuda.so.1), with the shim's debug log: the quick loop for bringing up one program on the
# GPU machine before the whole suite (tests/gpu/run.sh).
#
# usage: tests/gpu/pair.sh BIN_DIR CMD...   (BIN_DIR holds vhost-gpu and libcuda.so)
# Output: CMD's stdout/stderr of both runs, then the daemon's log; files under $OUT if set.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$1" && pwd); shift
out=${OUT:-/tmp/vgpu-pair-out}
work=/tmp/vgpu-pair
mkdir -p "$out" "$work/shim"
cp "$bin/libcuda.so" "$work/shim/libcuda.so.1"
ln -sf libcuda.so.1 "$work/shim/libcuda.so"
source "$here/seal.sh"
sock="$work/vgpu.sock"; rm -f "$sock"
RUST_LOG=${RUST_LOG:-info} "$bin/vhost-gpu" --socket "$sock" --gpu 0 >"$out/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
sleep 1
echo "== native: $*"
t0=$(date +%s.%N); timeout 300 "$@"; rc=$?; t1=$(date +%s.%N)
echo "== native rc=$rc ($(awk "BEGIN{print $t1 - $t0}") s)"
echo "== vgpu (sealed): $*"
t0=$(date +%s.%N)
VGPU_DEBUG=${VGPU_DEBUG-1} LD_LIBRARY_PATH="$work/shim" TRITON_LIBCUDA_PATH="$work/shim" \
    VGPU_DEVICE="vhost-user:$sock" sealed "$@"
rc=$?; t1=$(date +%s.%N)
echo "== vgpu rc=$rc ($(awk "BEGIN{print $t1 - $t0}") s)"
kill $daemon 2>/dev/null; wait $daemon 2>/dev/null
echo "== daemon log (tail)"; tail -20 "$out/daemon.log"

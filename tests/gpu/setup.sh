# Sourced first by the GPU suites (run.sh, slices.sh, isolation.sh):
#   source "$(dirname "$0")/setup.sh" OUT_DEFAULT WORK_DIR [BIN_DIR]
# Sets `here` (tests/gpu), `repo`, `bin` (BIN_DIR, default target/release: vhost-gpu and
# libcuda.so), `out` ($OUT, else OUT_DEFAULT) and `work` (WORK_DIR); makes both directories,
# puts our libcuda.so.1 in $work/shim, defines `log`, and sources seal.sh (`sealed CMD...`).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$(cd "${3:-$repo/target/release}" && pwd)
out=${OUT:-$1}
work=$2
mkdir -p "$out" "$work/shim"
cp "$bin/libcuda.so" "$work/shim/libcuda.so.1"
log() { echo "== $*" >&2; }
source "$here/seal.sh"

#!/usr/bin/env bash
# The GPU suite, run on the H200 machine: builds the CUDA test programs with nvcc, runs each
# natively and through our stack (libcuda.so.1 shim -> virtio-user -> vhost-gpu --gpu 0), the
# vGPU side sealed like a guest (private mount namespace, NVIDIA's libraries and /dev/nvidia*
# hidden), checks the results are identical, and prints a comparison table last.
#
# usage: tests/gpu/run.sh [BIN_DIR]   (BIN_DIR holds vhost-gpu and libcuda.so; default
#        target/release). Results and logs go to $OUT (or /tmp/vgpu-gpu-out).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$(cd "${1:-$repo/target/release}" && pwd)
out=${OUT:-/tmp/vgpu-gpu-out}
work=/tmp/vgpu-gpu
mkdir -p "$out" "$work/shim"
rm -f "$work"/*.out
cp "$bin/libcuda.so" "$work/shim/libcuda.so.1"
log() { echo "== $*" >&2; }

driver=$(nvidia-smi --query-gpu=driver_version,name --format=csv,noheader 2>/dev/null | head -1)
log "GPU: ${driver:-unknown}; $(date -u +%Y-%m-%dT%H:%MZ)"

# --- build ---
cd "$here"
nvcc -cubin -arch=sm_90 kernels.cu -o "$work/kernels.cubin" || exit 1
nvcc -ptx -arch=sm_90 kernels.cu -o "$work/kernels.ptx" || exit 1
nvcc -fatbin -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 kernels.cu -o "$work/kernels.fatbin" || exit 1
nvcc -fatbin -gencode arch=compute_90,code=sm_90 -Xfatbin -compress-all kernels.cu -o "$work/kernels_compressed.fatbin" 2>/dev/null || true
progs="vecadd pipeline reduction matmul bandwidth launch_latency"
for p in $progs; do nvcc -O2 -o "$work/$p" "$p.cpp" -lcuda || exit 1; done
nvcc -O2 -o "$work/probe_driver" probe_driver.c -lcuda -ldl || true
NVCC=nvcc "$repo/tests/runtime/build.sh" "$work/runtime" || echo "runtime programs did not build"
gcc -O1 -o "$work/driver_api_e2e" "$repo/tests/programs/driver_api_e2e.c" -I"$repo/tests/programs" \
    -L/usr/local/cuda/lib64/stubs -lcuda || exit 1
gcc -O1 -o "$work/graph_e2e" "$repo/tests/programs/graph_e2e.c" -I"$repo/tests/programs" \
    -L/usr/local/cuda/lib64/stubs -lcuda || exit 1
(cd "$work" && tar czf "$out/fixtures.tgz" kernels.cubin kernels.ptx kernels.fatbin $(ls kernels_compressed.fatbin 2>/dev/null))

source "$here/seal.sh"

# --- the daemon ---
sock="$work/vgpu.sock"
rm -f "$sock"
RUST_LOG=info "$bin/vhost-gpu" --socket "$sock" --gpu 0 >"$out/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
sleep 1

run_pair() { # name, program args...
    local name=$1; shift
    log "native: $name"
    (cd "$work" && timeout 300 "$@") >"$work/$name.native.out" 2>"$work/$name.native.err"
    echo "rc=$?" >>"$work/$name.native.out"
    log "vgpu (sealed): $name"
    (cd "$work" && VGPU_DEBUG=1 LD_LIBRARY_PATH="$work/shim" VGPU_DEVICE="vhost-user:$sock" sealed "$@") \
        >"$work/$name.vgpu.out" 2>"$work/$name.vgpu.err"
    echo "rc=$?" >>"$work/$name.vgpu.out"
    cat "$work/$name.native.err" "$work/$name.vgpu.err" >&2
}

run_pair e2e ./driver_api_e2e kernels.cubin
run_pair graph ./graph_e2e kernels.cubin
run_pair vecadd_cubin ./vecadd kernels.cubin
run_pair vecadd_ptx ./vecadd kernels.ptx
run_pair vecadd_fatbin ./vecadd kernels.fatbin
run_pair pipeline ./pipeline kernels.cubin
run_pair reduction ./reduction kernels.cubin
run_pair matmul ./matmul kernels.cubin
run_pair launch_latency ./launch_latency kernels.cubin
run_pair bandwidth ./bandwidth
for p in rt_basic rt_streams; do for k in static shared; do
    [ -x "$work/runtime/${p}_$k" ] && run_pair ${p}_$k ./runtime/${p}_$k
done; done
run_pair torch_smoke python3 "$here/torch_smoke.py"
run_pair cupy_smoke python3 "$here/cupy_smoke.py"
if [ -x "$work/probe_driver" ]; then
    cat "$repo"/guest-driver-shim/libcuda/symbols/*.txt \
        | sed -E 's/_v[0-9]+(_ptds|_ptsz)?$//; s/_(ptds|ptsz)$//' | sort -u >"$work/names.txt"
    "$work/probe_driver" "$work/names.txt" >"$out/probe-driver-580.tsv" 2>/dev/null || true
fi
kill $daemon 2>/dev/null; wait $daemon 2>/dev/null
(cd "$work" && tar czf "$out/logs.tgz" ./*.out ./*.err)

# --- the table ---
python3 - "$work" "${driver:-unknown}" <<'PY' | tee "$out/table.txt"
import re, sys, glob, os
work, driver = sys.argv[1], sys.argv[2]
names = ["e2e","graph","vecadd_cubin","vecadd_ptx","vecadd_fatbin","pipeline","reduction","matmul","launch_latency","bandwidth",
         "rt_basic_static","rt_basic_shared","rt_streams_static","rt_streams_shared","torch_smoke","cupy_smoke"]
def parse(path):
    res, tim, rc = [], {}, None
    if not os.path.exists(path): return res, tim, "missing"
    for line in open(path, errors="replace"):
        line = line.strip()
        if line.startswith("RESULT ") or line.startswith("copy ") or line.startswith("E2E ") or line.startswith("GRAPH ") or line.startswith("PASS"):
            res.append(re.sub(r"\([0-9.]+ ms\)", "", line))
        elif line.startswith("TIME "):
            k, v = line[5:].split("=", 1); tim[k] = float(v)
        elif line.startswith("rc="): rc = line[3:]
    return res, tim, rc
print(f"vGPU vs native on {driver}; vGPU side sealed (private mount ns, NVIDIA libs and /dev/nvidia* hidden)")
print(f"{'program':<16} {'native rc':>9} {'vgpu rc':>8} {'results':>10}")
rows = []
for n in names:
    rn, tn, cn = parse(f"{work}/{n}.native.out"); rv, tv, cv = parse(f"{work}/{n}.vgpu.out")
    same = "identical" if rn == rv and rn and cn == "0" and cv == "0" else "DIFFER"
    print(f"{n:<16} {cn:>9} {cv:>8} {same:>10}")
    if same != "identical":
        print("   native:", rn[:3]); print("   vgpu:  ", rv[:3])
    for k in tn:
        if k in tv: rows.append((n, k, tn[k], tv[k]))
print()
print(f"{'metric':<34} {'native':>12} {'vgpu':>12} {'vgpu/native':>12}")
for n, k, a, b in rows:
    r = b / a if a else float('nan')
    print(f"{k:<34} {a:>12.3f} {b:>12.3f} {r:>12.3f}")
PY

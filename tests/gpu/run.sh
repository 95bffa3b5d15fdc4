#!/usr/bin/env bash
# The GPU suite, run on the H200 machine: builds the CUDA test programs with nvcc, runs each
# natively and through our stack (libcuda.so.1 shim -> virtio-user -> vhost-gpu --gpu 0), the
# vGPU side sealed like a guest (private mount namespace, NVIDIA's libraries and /dev/nvidia*
# hidden), checks the results are identical, and prints a comparison table and a verdict last.
# Compared per program: its RESULT/copy/E2E/GRAPH/PASS lines in order, then its device-printf
# lines (`DEVPRINTF ...`) sorted; RESULT keys matching *loss* numerically (|diff| <= 1e-5).
# The cases are a fixed list (EXPECTED below: every tests/runtime/rt_*.cu program with static
# and shared cudart, the Python programs included); the last line is a verdict (tests/gpu/
# verdict.py), `VERDICT: PASS` or `VERDICT: FAIL (...)` naming each case that differs, exits
# non-zero, did not build or did not run, and the script's exit status follows it.
#
# usage: tests/gpu/run.sh [BIN_DIR]   (BIN_DIR holds vhost-gpu and libcuda.so; default
#        target/release). Results and logs go to $OUT (or /tmp/vgpu-gpu-out).
set -uo pipefail
source "$(dirname "$0")/setup.sh" /tmp/vgpu-gpu-out /tmp/vgpu-gpu "${1:-}"
rm -f "$work"/*.out "$work"/*.err "$work"/*.missing

# The cases this suite must show, fixed here, not discovered from what happened to build.
runtime_programs="rt_atomics rt_basic rt_callbacks rt_constant rt_cublas_gemmex rt_cublas_sgemm
    rt_cufft rt_curand rt_device_props rt_dynsmem rt_events rt_graph rt_graph_update rt_meminfo
    rt_mempool rt_multikernel rt_occupancy rt_pinned_pageable rt_printf rt_priorities rt_streams
    rt_threads"
EXPECTED="device_attrs e2e graph forwards vecadd_cubin vecadd_ptx vecadd_fatbin pipeline reduction matmul
    launch_latency bandwidth"
for p in $runtime_programs; do EXPECTED+=" ${p}_static ${p}_shared"; done
EXPECTED+=" cupy_smoke torch_train torch_compile cupy_kernels"
# GPU_CASES="a b" narrows the suite to those cases (the deliberately broken run of
# docs/test-mutations.md uses it); the verdict then expects exactly them.
if [ -n "${GPU_CASES:-}" ]; then EXPECTED=$GPU_CASES; fi
wanted() { case " $(echo $EXPECTED) " in *" $1 "*) return 0 ;; esac; return 1; }
# A case that cannot run says why (the verdict names it MISSING with this reason).
missing() { echo "$2" >"$work/$1.missing"; }
# Nothing can run: the verdict is FAIL at once.
fail_now() {
    echo "VERDICT: FAIL ($*)" | tee "$out/table.txt"
    exit 1
}
ln -sf libcuda.so.1 "$work/shim/libcuda.so"   # the link-time name (Triton links with -lcuda)

driver=$(nvidia-smi --query-gpu=driver_version,name --format=csv,noheader 2>/dev/null | head -1)
log "GPU: ${driver:-unknown}; $(date -u +%Y-%m-%dT%H:%MZ)"

# --- build --- (GPU_REUSE_BUILD=1 keeps an earlier run's programs in $work)
cd "$here" || exit 1
if [ -z "${GPU_REUSE_BUILD:-}" ]; then
nvcc -cubin -arch=sm_90 kernels.cu -o "$work/kernels.cubin" || fail_now "kernels.cu did not build"
nvcc -ptx -arch=sm_90 kernels.cu -o "$work/kernels.ptx" || fail_now "kernels.cu did not build as PTX"
nvcc -fatbin -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 kernels.cu -o "$work/kernels.fatbin" ||
    fail_now "kernels.cu did not build as a fatbin"
nvcc -fatbin -gencode arch=compute_90,code=sm_90 -Xfatbin -compress-all kernels.cu -o "$work/kernels_compressed.fatbin" 2>/dev/null || true
rm -f "$work"/{vecadd,pipeline,reduction,matmul,bandwidth,launch_latency,driver_api_e2e,device_attrs,graph_e2e,forwards}
for p in vecadd pipeline reduction matmul bandwidth launch_latency; do
    nvcc -O2 -o "$work/$p" "$p.cpp" -lcuda || echo "$p.cpp did not build" >&2
done
nvcc -O2 -o "$work/probe_driver" probe_driver.c -lcuda -ldl || true
rm -rf "$work/runtime"   # no stale binaries from an earlier run
NVCC=nvcc "$repo/tests/runtime/build.sh" "$work/runtime" || echo "some runtime programs did not build" >&2
gcc -O1 -o "$work/driver_api_e2e" "$repo/tests/programs/driver_api_e2e.c" -I"$repo/tests/programs" \
    -L/usr/local/cuda/lib64/stubs -lcuda || echo "driver_api_e2e.c did not build" >&2
gcc -O1 -o "$work/device_attrs" "$here/device_attrs.c" -I/usr/local/cuda/include \
    -L/usr/local/cuda/lib64/stubs -lcuda || echo "device_attrs.c did not build" >&2
gcc -O1 -o "$work/graph_e2e" "$repo/tests/programs/graph_e2e.c" -I"$repo/tests/programs" \
    -L/usr/local/cuda/lib64/stubs -lcuda || echo "graph_e2e.c did not build" >&2
gcc -O1 -o "$work/forwards" "$repo/tests/programs/forwards.c" -I"$repo/tests/programs" \
    -L/usr/local/cuda/lib64/stubs -lcuda || echo "forwards.c did not build" >&2
(cd "$work" && shopt -s nullglob && tar czf "$out/fixtures.tgz" kernels.cubin kernels.ptx kernels.fatbin kernels_compressed*.fatbin)
fi


# --- the daemon ---
sock="$work/vgpu.sock"
rm -f "$sock"
RUST_LOG=info "$bin/vhost-gpu" --socket "$sock" --gpu 0 >"$out/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
sleep 1

run_pair() { # name, program args...   (records rc= and wall_ms= at the end of each .out)
    local name=$1 t0 t1 rc; shift
    wanted "$name" || return 0
    # A program that did not build is a case that did not run (python3 is a command).
    if [ "$1" != python3 ] && [ ! -x "$work/$1" ]; then
        missing "$name" "not built: $1"
        log "not built: $name ($1)"
        return 0
    fi
    log "native: $name"
    t0=$(date +%s.%N)
    (cd "$work" && timeout 300 "$@") >"$work/$name.native.out" 2>"$work/$name.native.err"
    rc=$?; t1=$(date +%s.%N)
    echo "rc=$rc" >>"$work/$name.native.out"
    echo "wall_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')" \
        >>"$work/$name.native.out"
    log "vgpu (sealed): $name"
    t0=$(date +%s.%N)
    # VGPU_DEBUG=1 in the caller's environment turns on the shim's debug log (it costs time).
    # As a user runs it: vgpu-run puts our libcuda.so.1 first and names the vGPU.
    (cd "$work" && sealed "$bin/vgpu-run" --socket "$sock" --lib-dir "$work/shim" -- "$@") \
        >"$work/$name.vgpu.out" 2>"$work/$name.vgpu.err"
    rc=$?; t1=$(date +%s.%N)
    echo "rc=$rc" >>"$work/$name.vgpu.out"
    echo "wall_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')" \
        >>"$work/$name.vgpu.out"
    cat "$work/$name.native.err" "$work/$name.vgpu.err" >&2
    return 0
}

run_pair device_attrs ./device_attrs
run_pair e2e ./driver_api_e2e kernels.cubin
run_pair graph ./graph_e2e kernels.cubin
run_pair forwards ./forwards
run_pair vecadd_cubin ./vecadd kernels.cubin
run_pair vecadd_ptx ./vecadd kernels.ptx
run_pair vecadd_fatbin ./vecadd kernels.fatbin
run_pair pipeline ./pipeline kernels.cubin
run_pair reduction ./reduction kernels.cubin
run_pair matmul ./matmul kernels.cubin
run_pair launch_latency ./launch_latency kernels.cubin
run_pair bandwidth ./bandwidth
# Every runtime program, static and shared cudart (build.sh skips one whose library it does
# not find: that case is then MISSING, and the verdict fails).
for p in $runtime_programs; do
    for k in static shared; do
        run_pair "${p}_$k" "./runtime/${p}_$k"
    done
done
for s in cupy_smoke torch_train torch_compile cupy_kernels; do
    run_pair "$s" python3 "$here/$s.py"
done
if [ -x "$work/probe_driver" ]; then
    cat "$repo"/guest-driver-shim/libcuda/symbols/*.txt \
        | sed -E 's/_v[0-9]+(_ptds|_ptsz)?$//; s/_(ptds|ptsz)$//' | sort -u >"$work/names.txt"
    "$work/probe_driver" "$work/names.txt" >"$out/probe-driver-580.tsv" 2>/dev/null || true
fi
kill $daemon 2>/dev/null; wait $daemon 2>/dev/null
(cd "$work" && shopt -s nullglob && tar czf "$out/logs.tgz" ./*.out ./*.err ./*.missing)

# --- the table, then the verdict (its exit status is the script's) ---
# shellcheck disable=SC2086 # the case list is split on whitespace on purpose
python3 "$here/verdict.py" run "$work" "${driver:-unknown}" -- $EXPECTED | tee "$out/table.txt"
exit "${PIPESTATUS[0]}"

#!/usr/bin/env bash
# The GPU suite, run on the H200 machine: builds the CUDA test programs with nvcc, runs each
# natively and through our stack (libcuda.so.1 shim -> virtio-user -> vhost-gpu --gpu 0), the
# vGPU side sealed like a guest (private mount namespace, NVIDIA's libraries and /dev/nvidia*
# hidden), checks the results are identical, and prints a comparison table last.
# Compared per program: its RESULT/copy/E2E/GRAPH/PASS lines in order, then its device-printf
# lines (`DEVPRINTF ...`) sorted; RESULT keys matching *loss* numerically (|diff| <= 1e-5).
# Every tests/runtime/rt_*.cu program runs (static and shared cudart), and the Python programs
# torch_train.py, torch_compile.py and cupy_kernels.py when present.
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
ln -sf libcuda.so.1 "$work/shim/libcuda.so"   # the link-time name (Triton links with -lcuda)
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
rm -rf "$work/runtime"   # no stale binaries from an earlier run
NVCC=nvcc "$repo/tests/runtime/build.sh" "$work/runtime" || echo "some runtime programs did not build"
gcc -O1 -o "$work/driver_api_e2e" "$repo/tests/programs/driver_api_e2e.c" -I"$repo/tests/programs" \
    -L/usr/local/cuda/lib64/stubs -lcuda || exit 1
gcc -O1 -o "$work/device_attrs" "$here/device_attrs.c" -I/usr/local/cuda/include \
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

run_pair() { # name, program args...   (records rc= and wall_ms= at the end of each .out)
    local name=$1 t0 t1 rc; shift
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
    (cd "$work" && LD_LIBRARY_PATH="$work/shim" VGPU_DEVICE="vhost-user:$sock" \
        TRITON_LIBCUDA_PATH="$work/shim" sealed "$@") >"$work/$name.vgpu.out" 2>"$work/$name.vgpu.err"
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
run_pair vecadd_cubin ./vecadd kernels.cubin
run_pair vecadd_ptx ./vecadd kernels.ptx
run_pair vecadd_fatbin ./vecadd kernels.fatbin
run_pair pipeline ./pipeline kernels.cubin
run_pair reduction ./reduction kernels.cubin
run_pair matmul ./matmul kernels.cubin
run_pair launch_latency ./launch_latency kernels.cubin
run_pair bandwidth ./bandwidth
# Every runtime program build.sh produced, static and shared cudart.
for p in $(ls "$work"/runtime/rt_*_static "$work"/runtime/rt_*_shared 2>/dev/null \
           | sed -E 's#.*/##; s/_(static|shared)$//' | sort -u); do
    for k in static shared; do
        [ -x "$work/runtime/${p}_$k" ] && run_pair "${p}_$k" "./runtime/${p}_$k"
    done
done
run_pair cupy_smoke python3 "$here/cupy_smoke.py"
for s in torch_train torch_compile cupy_kernels; do
    [ -f "$here/$s.py" ] && run_pair "$s" python3 "$here/$s.py"
done
if [ -x "$work/probe_driver" ]; then
    cat "$repo"/guest-driver-shim/libcuda/symbols/*.txt \
        | sed -E 's/_v[0-9]+(_ptds|_ptsz)?$//; s/_(ptds|ptsz)$//' | sort -u >"$work/names.txt"
    "$work/probe_driver" "$work/names.txt" >"$out/probe-driver-580.tsv" 2>/dev/null || true
fi
kill $daemon 2>/dev/null; wait $daemon 2>/dev/null
(cd "$work" && tar czf "$out/logs.tgz" ./*.out ./*.err)

# --- the table ---
python3 - "$work" "${driver:-unknown}" <<'PY' | tee "$out/table.txt"
import fnmatch, glob, os, re, sys
work, driver = sys.argv[1], sys.argv[2]
TOL = {"*loss*": 1e-5}  # RESULT keys compared numerically: |native - vgpu| <= tolerance
# Programs in the order they ran (the .native.out files' modification times).
names = [os.path.basename(p)[:-len(".native.out")]
         for p in sorted(glob.glob(f"{work}/*.native.out"), key=lambda p: (os.path.getmtime(p), p))]

def parse(path):
    """Compared lines (RESULT/copy/E2E/GRAPH/PASS, then the DEVPRINTF lines sorted), TIME
    metrics in order, rc, wall time (ms) measured by run_pair."""
    res, dev, tim, rc, wall = [], [], {}, "missing", None
    if not os.path.exists(path): return res, tim, rc, wall
    rc = "?"
    for line in open(path, errors="replace"):
        line = line.strip()
        if line.startswith(("RESULT ", "copy ", "E2E ", "GRAPH ", "PASS")):
            res.append(re.sub(r"\([0-9.]+ ms\)", "", line).strip())
        elif line.startswith("DEVPRINTF "):
            dev.append(line)
        elif line.startswith("TIME ") and "=" in line:
            k, v = line[5:].split("=", 1)
            try: tim[k.strip()] = float(v)
            except ValueError: pass
        elif line.startswith("rc="): rc = line[3:]
        elif line.startswith("wall_ms="):
            try: wall = float(line[8:])
            except ValueError: pass
    return res + sorted(dev), tim, rc, wall

def tolerance(line):
    if not line.startswith("RESULT ") or "=" not in line: return None
    key = line[7:].split("=", 1)[0]
    for pat, tol in TOL.items():
        if fnmatch.fnmatch(key, pat): return tol
    return None

def compare(rn, rv):
    """(same, max abs difference over tolerance-compared keys or None, first differing pair)"""
    maxdiff, first = None, None
    for i in range(max(len(rn), len(rv))):
        a = rn[i] if i < len(rn) else "<none>"; b = rv[i] if i < len(rv) else "<none>"
        if a == b:
            tol = tolerance(a)
            if tol is not None: maxdiff = max(maxdiff or 0.0, 0.0)
            continue
        tol = tolerance(a)
        if tol is not None and a.split("=", 1)[0] == b.split("=", 1)[0]:
            try:
                d = abs(float(a.split("=", 1)[1]) - float(b.split("=", 1)[1]))
                maxdiff = max(maxdiff or 0.0, d)
                if d <= tol: continue
            except ValueError: pass
        if first is None: first = (i, a, b)
    return first is None, maxdiff, first

def base(n):
    return re.sub(r"_(static|shared)$", "", n)

def headline_time(n, tim, wall):
    """The program's own `<prog>_ms`, else its first TIME metric, else run_pair's wall time."""
    for k in (f"{n}_ms", f"{base(n)}_ms"):
        if k in tim: return tim[k], ""
    if tim: return next(iter(tim.values())), ""
    return wall, "w"

def short(rc, res):
    nres = sum(1 for l in res if l.startswith("RESULT "))
    if nres or not res: return f"rc={rc} {nres} results"
    return f"rc={rc} {res[0]}"[:20]

print(f"vGPU vs native on {driver}; vGPU side sealed (private mount ns, NVIDIA libs and /dev/nvidia* hidden)")
print(f"compared: RESULT/copy/E2E/GRAPH/PASS lines in order, then DEVPRINTF lines sorted; "
      f"RESULT keys matching {', '.join(f'{p} (|diff| <= {t:g})' for p, t in TOL.items())} numerically")
rows, final, ndiff = [], [], 0
for n in names:
    rn, tn, cn, wn = parse(f"{work}/{n}.native.out"); rv, tv, cv, wv = parse(f"{work}/{n}.vgpu.out")
    same, maxdiff, first = compare(rn, rv)
    ok = same and bool(rn) and cn == "0" and cv == "0"
    if not ok:
        ndiff += 1
        print(f"-- {n}: DIFFER (native rc={cn}, vgpu rc={cv}, {len(rn)} vs {len(rv)} compared lines)")
        if first:
            i, a, b = first
            print(f"   first difference at line {i + 1}:\n   native: {a}\n   vgpu:   {b}")
        for side in ("native", "vgpu"):
            err = f"{work}/{n}.{side}.err"
            if os.path.exists(err):
                fails = [l.rstrip() for l in open(err, errors="replace") if l.startswith("FAIL")][:2]
                for l in fails: print(f"   {side} stderr: {l[:200]}")
    for k in tn:
        if k in tv: rows.append((n, k, tn[k], tv[k]))
    a, fa = headline_time(n, tn, wn); b, fb = headline_time(n, tv, wv)
    note = f"loss max|diff| {maxdiff:.2e}" if maxdiff is not None else ""
    final.append((n, short(cn, rn), short(cv, rv), "identical" if ok else "DIFFER", a, fa, b, fb, note))

def fmt(t, flag):
    return "-" if t is None else f"{t:.3f}{flag}"

print()
print(f"{'program':<26} {'metric':<34} {'native':>12} {'vgpu':>12} {'vgpu/native':>12}")
for n, k, a, b in rows:
    r = b / a if a else float('nan')
    print(f"{n:<26} {k:<34} {a:>12.3f} {b:>12.3f} {r:>12.3f}")
print()
print(f"{len(final) - ndiff} of {len(final)} programs identical; time: the program's <prog>_ms or first TIME "
      f"metric in ms ('w': wall time of the run, the program printed none)")
print(f"{'program':<26} {'native':<20} {'vgpu':<20} {'results':<10} {'native ms':>12} {'vgpu ms':>12} {'ratio':>8}  note")
for n, sn, sv, same, a, fa, b, fb, note in final:
    r = f"{b / a:.3f}" if a and b is not None and fa == fb else "-"
    print(f"{n:<26} {sn:<20} {sv:<20} {same:<10} {fmt(a, fa):>12} {fmt(b, fb):>12} {r:>8}  {note}".rstrip())
PY

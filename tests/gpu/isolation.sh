#!/usr/bin/env bash
# Tenant isolation and churn on the GPU machine (issue 16). Builds the cross-tenant and churn
# programs with nvcc, then:
#   1. cross-tenant read: an owner process fills 1 MiB and prints its device pointer; a thief
#      process launches a kernel reading that pointer. Run natively (two processes), through
#      one local daemon (two sealed virtio-user processes: one worker process each), through
#      one local daemon with --isolation shared (the old single-process model, to show what
#      isolation fixes), and as two remote slices of one GPU host (two VM-host daemons).
#   2. churn: ROUNDS rounds of module load / 1,000 launches / 64 allocations / stream and event
#      / unload, natively and through the vGPU; the program's RSS early and at the end, and the
#      daemon's (with its workers) RSS, descriptors and threads before and after.
# Prints a table last and exits non-zero when an expected-isolated case leaked, the owner's data
# changed, or a case is missing.
#
# usage: tests/gpu/isolation.sh [BIN_DIR]   (vhost-gpu and libcuda.so; default target/release)
set -uo pipefail
source "$(dirname "$0")/setup.sh" /tmp/vgpu-gpu-out /tmp/vgpu-iso "${1:-}"
rounds=${CHURN_ROUNDS:-3000}
rm -f "$work"/*.res

build_failed() { echo "VERDICT: FAIL build of $1"; exit 1; }
nvcc -cubin -arch=sm_90 "$here/isolation/tenant_kernels.cu" -o "$work/tenant.cubin" || build_failed tenant.cubin
gcc -O1 -o "$work/cross_tenant" "$here/isolation/cross_tenant.c" -I"$repo/tests/programs" \
    -L/usr/local/cuda/lib64/stubs -lcuda || build_failed cross_tenant
gcc -O1 -o "$work/churn" "$here/isolation/churn.c" -I/usr/local/cuda/include \
    -L/usr/local/cuda/lib64/stubs -lcuda || build_failed churn
gcc -O2 -o "$work/sync_latency" "$repo/tests/programs/sync_latency.c" -I"$repo/tests/programs" \
    -L/usr/local/cuda/lib64/stubs -lcuda || build_failed sync_latency

# Sum of RSS (KiB), open descriptors and threads of PID and all its descendants.
tree_stats() {
    local pids=$1 all="" p
    while [ -n "$pids" ]; do
        all="$all $pids"
        local next=""
        for p in $pids; do next="$next $(cat /proc/$p/task/*/children 2>/dev/null)"; done
        pids=$(echo $next)
    done
    local rss=0 fds=0 thr=0
    for p in $all; do
        [ -d /proc/$p ] || continue
        rss=$((rss + $(awk '/^VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || echo 0)))
        fds=$((fds + $(ls /proc/$p/fd 2>/dev/null | wc -l)))
        thr=$((thr + $(ls /proc/$p/task 2>/dev/null | wc -l)))
    done
    echo "$rss $fds $thr $(echo $all | wc -w)"
}

# runner: "native" runs a program directly; "vgpu SOCKET" runs it sealed through our shim.
run_as() {
    local how=$1 sock=$2; shift 2
    if [ "$how" = native ]; then timeout 120 "$@"
    else sealed "$bin/vgpu-run" --socket "$sock" --lib-dir "$work/shim" -- "$@"; fi
}

# cross CASE OWNER_HOW OWNER_SOCK THIEF_HOW THIEF_SOCK
cross() {
    local name=$1 ohow=$2 osock=$3 thow=$4 tsock=$5 flag="$work/$1.done"
    rm -f "$flag" "$work/$name.owner" "$work/$name.thief"
    log "cross-tenant: $name"
    (cd "$work" && run_as "$ohow" "$osock" ./cross_tenant owner tenant.cubin "$flag") \
        >"$work/$name.owner" 2>"$work/$name.owner.err" &
    local owner=$! ptr=""
    for _ in $(seq 600); do
        ptr=$(sed -n 's/^OWNER PTR //p' "$work/$name.owner" 2>/dev/null)
        [ -n "$ptr" ] && break
        sleep 0.1
    done
    if [ -z "$ptr" ]; then
        echo "case=$name owner=missing thief=missing" >"$work/$name.res"
        touch "$flag"; wait $owner; cat "$work/$name.owner.err" >&2; return
    fi
    (cd "$work" && run_as "$thow" "$tsock" ./cross_tenant thief tenant.cubin "$ptr") \
        >"$work/$name.thief" 2>"$work/$name.thief.err"
    touch "$flag"; wait $owner
    cat "$work/$name.owner.err" "$work/$name.thief.err" >&2
    local thief intact
    thief=$(sed -n 's/^RESULT //p' "$work/$name.thief")
    intact=$(sed -n 's/^RESULT owner_intact=//p' "$work/$name.owner")
    echo "case=$name ptr=$ptr owner_intact=${intact:-missing} ${thief:-thief_error=missing}" >"$work/$name.res"
}

start_daemon() { # NAME ARGS... ; sets $dpid
    local name=$1; shift
    RUST_LOG=info "$bin/vhost-gpu" "$@" >"$out/daemon-$name.log" 2>&1 &
    dpid=$!
    sleep 1
}

cross native native - native -

sock="$work/process.sock"; rm -f "$sock"
start_daemon process --socket "$sock" --gpu 0
cross vgpu_process vgpu "$sock" vgpu "$sock"
kill $dpid; wait $dpid 2>/dev/null

sock="$work/shared.sock"; rm -f "$sock"
start_daemon shared --socket "$sock" --gpu 0 --isolation shared
cross vgpu_shared vgpu "$sock" vgpu "$sock"
kill $dpid; wait $dpid 2>/dev/null

# Two remote slices of one GPU host, each behind its own VM-host daemon.
echo "isolation-test-secret-$(date +%s%N)" >"$work/secret"
RUST_LOG=info "$bin/vhost-gpu" --listen 127.0.0.1:17470 --gpu 0 --remote-token-file "$work/secret" \
    >"$out/daemon-gpuhost.log" 2>&1 &
ghost=$!
sleep 1
rm -f "$work/vmA.sock" "$work/vmB.sock"
start_daemon vmA --socket "$work/vmA.sock" --remote 127.0.0.1:17470 --gpu 0 --remote-token-file "$work/secret"
vmA=$dpid
start_daemon vmB --socket "$work/vmB.sock" --remote 127.0.0.1:17470 --gpu 0 --remote-token-file "$work/secret"
vmB=$dpid
cross remote_two_slices vgpu "$work/vmA.sock" vgpu "$work/vmB.sock"
kill $vmA $vmB $ghost; wait $vmA $vmB $ghost 2>/dev/null

# --- churn ---
log "churn: native, $rounds rounds"
(cd "$work" && timeout 600 ./churn tenant.cubin "$rounds") >"$work/churn.native" 2>&1
sock="$work/churn.sock"; rm -f "$sock"
start_daemon churn --socket "$sock" --gpu 0
before=$(tree_stats $dpid)
# Two programs one after the other: the first client's run may grow the front once (its
# threads' stacks, the allocator's arenas); the second must leave it where the first did.
for pass in 1 2; do
    log "churn: vgpu, $rounds rounds, program $pass"
    (cd "$work" && run_as vgpu "$sock" ./churn tenant.cubin "$rounds") >"$work/churn.vgpu$pass" 2>&1 &
    cpid=$!
    mid=""
    for _ in $(seq 1200); do
        kill -0 $cpid 2>/dev/null || break
        mid=$(tree_stats $dpid)   # the last sample while the program runs: daemon plus its worker
        sleep 0.5
    done
    wait $cpid
    sleep 1
    eval "after$pass=\$(tree_stats \$dpid)"
done
cp "$work/churn.vgpu1" "$work/churn.vgpu"
kill $dpid; wait $dpid 2>/dev/null
echo "before=$before mid=$mid after=$after1 again=$after2" >"$work/churn.daemon"
# --- what isolation costs: synchronous round trips, natively and in both process models ---
log "sync latency: native"
(cd "$work" && ./sync_latency 20000) >"$work/latency.native" 2>&1
for mode in process shared; do
    sock="$work/lat-$mode.sock"; rm -f "$sock"
    start_daemon "lat-$mode" --socket "$sock" --gpu 0 --isolation "$mode"
    log "sync latency: vgpu $mode"
    (cd "$work" && run_as vgpu "$sock" ./sync_latency 20000) >"$work/latency.$mode" 2>&1
    # the worker's start as the daemon logged it
    grep -h "ready .* ms after its start" "$out/daemon-lat-$mode.log" | head -1 >>"$work/latency.$mode"
    [ "$mode" = process ] && tree_stats $dpid >"$work/latency.tree"
    kill $dpid; wait $dpid 2>/dev/null
done
(cd "$work" && tar czf "$out/isolation-logs.tgz" ./*.res ./*.owner* ./*.thief* churn.* latency.*)

python3 - "$work" "$rounds" <<'PY' | tee "$out/isolation-table.txt"
import os, re, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def kv(path):
    d = {}
    if os.path.exists(path):
        for tok in open(path).read().split():
            if "=" in tok: k, v = tok.split("=", 1); d[k] = v
    return d
print("cross-tenant read (owner fills 1 MiB; thief's kernel reads the owner's pointer)")
print(f"{'case':<20} {'thief got':<34} {'words read':>10} {'owner intact':>12}  verdict")
fails = []
expect = {"native": "isolated", "vgpu_process": "isolated", "vgpu_shared": "shown",
          "remote_two_slices": "isolated"}
for case, want in expect.items():
    r = kv(f"{work}/{case}.res")
    err = r.get("thief_error", "missing"); words = r.get("thief_matching_words", "-")
    intact = r.get("owner_intact", "missing")
    isolated = err not in ("missing", "CUDA_SUCCESS") and intact == "1"
    if want == "isolated":
        verdict = "ISOLATED" if isolated else "LEAK/FAIL"
        if not isolated: fails.append(case)
    else:
        verdict = f"(opt-out: {'isolated' if isolated else 'leaks, as expected of one process'})"
        if err == "missing" or intact != "1": verdict = "FAIL"; fails.append(case)
    print(f"{case:<20} {err:<34} {words:>10} {intact:>12}  {verdict}")
print()
print(f"churn: {rounds} rounds of module load, 1,000 launches, 64 allocations, stream, event, unload")
def prog(side):
    t = open(f"{work}/churn.{side}").read() if os.path.exists(f"{work}/churn.{side}") else ""
    e = re.search(r"rss_early_kib=(-?\d+)", t); n = re.search(r"rss_end_kib=(-?\d+)", t)
    ok = f"churn_rounds={rounds}" in t
    return ok, int(e.group(1)) if e else None, int(n.group(1)) if n else None
for side in ("native", "vgpu"):
    ok, e, n = prog(side)
    grow = f"{(n - e) / e * 100:+.1f}%" if e and n else "-"
    print(f"program {side:<7} completed={ok} rss after {rounds//10} rounds {e} KiB, at end {n} KiB ({grow})")
    if not ok: fails.append(f"churn_{side}")
d = open(f"{work}/churn.daemon").read() if os.path.exists(f"{work}/churn.daemon") else ""
m = re.search(r"before=(\d+) (\d+) (\d+) (\d+) mid=(\d*) ?(\d*) ?(\d*) ?(\d*) after=(\d+) (\d+) (\d+) (\d+) again=(\d+) (\d+) (\d+) (\d+)", d)
if m:
    b = list(map(int, m.group(1, 2, 3, 4))); a = list(map(int, m.group(9, 10, 11, 12)))
    g = list(map(int, m.group(13, 14, 15, 16)))
    mid = m.group(5, 6, 7, 8)
    print(f"daemon tree before:  rss {b[0]} KiB, {b[1]} fds, {b[2]} threads, {b[3]} processes")
    if mid[0]: print(f"daemon tree while running (daemon + worker): rss {mid[0]} KiB, {mid[1]} fds, {mid[2]} threads, {mid[3]} processes")
    print(f"daemon tree after program 1: rss {a[0]} KiB, {a[1]} fds, {a[2]} threads, {a[3]} processes")
    print(f"daemon tree after program 2: rss {g[0]} KiB, {g[1]} fds, {g[2]} threads, {g[3]} processes")
    # Descriptors, threads and processes come back exactly after each program; memory may
    # grow once with the first client (at most 4 MiB) but not again with the second (2%).
    if a[1:] != b[1:] or g[1:] != b[1:] or a[0] > b[0] + 4096 or g[0] > a[0] * 1.02:
        fails.append("churn_daemon_not_flat")
else:
    fails.append("churn_daemon_missing")
ok2, _, _ = prog("vgpu2")
if not ok2: fails.append("churn_vgpu2")
print()
print("synchronous round trips (median of 5 batches of 20,000)")
lat = {}
for side in ("native", "process", "shared"):
    t = open(f"{work}/latency.{side}").read() if os.path.exists(f"{work}/latency.{side}") else ""
    s_ = re.search(r"sync_us=([\d.]+)", t); c_ = re.search(r"copy4_us=([\d.]+)", t)
    lat[side] = (float(s_.group(1)) if s_ else None, float(c_.group(1)) if c_ else None)
    if "copy_value=7" not in t: fails.append(f"latency_{side}")
for side, (sy, cp) in lat.items():
    ns, nc = lat["native"]
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
    print(f"  {side:<8} cuCtxSynchronize {sy} us ({ratio(sy, ns)} native)   4-byte copy {cp} us ({ratio(cp, nc)} native)")
for line in open(f"{work}/latency.process") if os.path.exists(f"{work}/latency.process") else []:
    if "ready" in line: print("  worker start:", line.strip().split("] ", 1)[-1])
print()
print("VERDICT:", "PASS" if not fails else "FAIL " + " ".join(fails))
sys.exit(1 if fails else 0)
PY

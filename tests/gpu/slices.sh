#!/usr/bin/env bash
# The slice suite, run on the H200 machine: SM shares (green contexts, MPS), memory quotas and
# fault isolation between VMs. Each "VM" is a vhost-gpu worker with its slice and a sealed
# virtio-user client (no NVIDIA library or /dev/nvidia* visible). Prints a table last.
#
# usage: tests/gpu/slices.sh [BIN_DIR]     results in $OUT (or /tmp/vgpu-slices-out)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$(cd "${1:-$repo/target/release}" && pwd)
out=${OUT:-/tmp/vgpu-slices-out}
work=/tmp/vgpu-slices
mkdir -p "$out" "$work/shim"
cp "$bin/libcuda.so" "$work/shim/libcuda.so.1"
source "$here/seal.sh"
secs=${SLICE_SECS:-4}
cd "$here"
nvcc -cubin -arch=sm_90 slices.cu -o "$work/slices.cubin" || exit 1
nvcc -O2 -o "$work/slice_bench" slice_bench.cpp -lcuda || exit 1
cd "$work"
results="$out/slices.tsv"
: >"$results"
record() { printf '%s\n' "$*" >>"$results"; }
rate_of() { sed -n 's/^TIME rate_per_s=//p' "$1"; }

./slice_bench slices.cubin ctxcost >"$work/ctxcost.out" 2>&1
record "ctxcost $(grep ctx_overhead "$work/ctxcost.out" | cut -d= -f2) $(grep granule "$work/ctxcost.out" | cut -d= -f2)"

# Native, alone on the whole GPU: the reference for every fraction.
for kind in spin mem; do
    start=$(( $(date +%s%3N) + 500 ))
    ./slice_bench slices.cubin $kind "$secs" $start >"$work/native-$kind.out" 2>&1
    record "native $kind $(rate_of "$work/native-$kind.out")"
done

start_vms() { # mode, sm counts... -> starts one daemon per VM
    local mode=$1; shift
    daemons=()
    local i=0
    for sms in "$@"; do
        rm -f "$work/vm$i.sock"
        local extra=()
        [ "$sms" != whole ] && extra=(--sm-count "$sms" --compute-mode "$mode")
        RUST_LOG=info "$bin/vhost-gpu" --socket "$work/vm$i.sock" --gpu 0 "${extra[@]}" >>"$out/daemons.log" 2>&1 &
        daemons+=($!)
        i=$((i+1))
    done
    sleep 1.5
}
stop_vms() { kill "${daemons[@]}" 2>/dev/null; wait "${daemons[@]}" 2>/dev/null; }
run_vm() { # index, args... (sealed client)
    local i=$1; shift
    VGPU_DEVICE="vhost-user:$work/vm$i.sock" LD_LIBRARY_PATH="$work/shim" sealed ./slice_bench slices.cubin "$@"
}

for mode in green mps; do
    if [ $mode = mps ]; then
        export CUDA_MPS_PIPE_DIRECTORY=$work/mps-pipe CUDA_MPS_LOG_DIRECTORY=$work/mps-log
        mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
        nvidia-cuda-mps-control -d || { record "mps unavailable"; continue; }
        sleep 1
    fi
    for config in "66 66" "33 99" "33 33 33 33" "33" "whole"; do
        for kind in spin mem; do
            start_vms $mode $config
            start=$(( $(date +%s%3N) + 1500 ))
            i=0; pids=()
            for sms in $config; do
                run_vm $i $kind "$secs" $start >"$work/$mode-${config// /_}-$kind-$i.out" 2>&1 &
                pids+=($!); i=$((i+1))
            done
            wait "${pids[@]}"
            i=0
            for sms in $config; do
                f="$work/$mode-${config// /_}-$kind-$i.out"
                record "$mode ${config// /_} $kind vm$i $sms $(rate_of "$f") $(sed -n 's/^RESULT sms=\([0-9]*\).*/\1/p' "$f")"
                i=$((i+1))
            done
            stop_vms
        done
    done
    # Fault isolation: VM 0 runs a long checked job while VM 1 faults.
    start_vms $mode 66 66
    run_vm 0 longjob 6 >"$work/$mode-longjob.out" 2>&1 &
    long=$!
    sleep 2
    run_vm 1 fault >"$work/$mode-fault.out" 2>&1
    wait $long
    record "$mode isolation $(grep -h RESULT "$work/$mode-longjob.out" "$work/$mode-fault.out" | grep -v sms= | tr '\n' ' ')"
    stop_vms
    if [ $mode = mps ]; then echo quit | nvidia-cuda-mps-control; sleep 1; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; fi
done

# Memory quota: a 1 GiB slice.
rm -f "$work/q.sock"
RUST_LOG=info "$bin/vhost-gpu" --socket "$work/q.sock" --gpu 0 --mem-limit 1G >>"$out/daemons.log" 2>&1 &
qd=$!
sleep 1
VGPU_DEVICE="vhost-user:$work/q.sock" LD_LIBRARY_PATH="$work/shim" sealed ./slice_bench slices.cubin quota $((1 << 30)) >"$work/quota.out" 2>&1
record "quota $(grep RESULT "$work/quota.out" | tr '\n' ' ')"
kill $qd; wait $qd 2>/dev/null
(cd "$work" && tar czf "$out/slice-logs.tgz" ./*.out)

python3 - "$results" <<'PY' | tee "$out/slices-table.txt"
import sys, collections
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
native = {r[1]: float(r[2]) for r in rows if r[0] == "native" and len(r) > 2}
print("SM slices on the H200: each VM's throughput as a fraction of one native process alone")
print(f"{'mode':<6} {'slices (SMs)':<14} {'kernel':<6} {'vm':<4} {'asked SMs':>9} {'sees SMs':>8} {'rate/s':>9} {'fraction':>8} {'share':>6}")
for r in rows:
    if r[0] in ("green", "mps") and r[1] != "isolation" and len(r) >= 7:
        mode, cfg, kind, vm, sms, rate, seen = r[:7]
        frac = float(rate) / native[kind] if kind in native and rate else float("nan")
        share = int(sms) / 132 if sms != "whole" else 1.0
        print(f"{mode:<6} {cfg:<14} {kind:<6} {vm:<4} {sms:>9} {seen:>8} {float(rate):>9.1f} {frac:>8.3f} {share:>6.3f}")
for r in rows:
    if r[0] in ("ctxcost", "quota", "mps") or (len(r) > 1 and r[1] == "isolation"):
        print(" ".join(r))
print("native rates:", native)
PY

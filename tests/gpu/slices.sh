#!/usr/bin/env bash
# The slice suite, run on the H200 machine: SM shares (green contexts, MPS), memory quotas and
# fault isolation between VMs. Each "VM" is a vhost-gpu worker with its slice and a sealed
# virtio-user client (no NVIDIA library or /dev/nvidia* visible). Prints a table last, then a
# verdict (tests/gpu/verdict.py): FAIL, and a non-zero exit, when any expected case (the
# literal MODES/CONFIGS/KINDS below) is missing, a client exits non-zero or prints no rate, a
# green slice's guest sees fewer SMs than asked, MPS is unavailable (its cases are skipped),
# the quota is not exact, or a fault spreads to the other VM under green contexts (under MPS
# it does on this driver: recorded, not required; see docs/slices.md).
#
# usage: tests/gpu/slices.sh [BIN_DIR]     results in $OUT (or /tmp/vgpu-slices-out)
set -uo pipefail
source "$(dirname "$0")/setup.sh" /tmp/vgpu-slices-out /tmp/vgpu-slices "${1:-}"
secs=${SLICE_SECS:-4}
# The expected cases, fixed here.
MODES="green mps"
CONFIGS=("66 66" "33 99" "33 33 33 33" "33" "whole")
KINDS="spin mem"
results="$out/slices.tsv"
: >"$results"
# One row per case, "-" for a value the run did not print (the formats: tests/gpu/verdict.py).
record() { printf '%s\n' "$*" >>"$results"; }
val() { local v; v=$(sed -n "s/$1/\\1/p" "$2" 2>/dev/null | head -1); echo "${v:--}"; }
rate_of() { val '^TIME rate_per_s=\([0-9.]*\).*' "$1"; }
verdict() {
    # shellcheck disable=SC2086 # MODES and KINDS are split on whitespace on purpose
    python3 "$here/verdict.py" slices "$results" -- $MODES -- "${CONFIGS[@]}" -- $KINDS | tee "$out/slices-table.txt"
    exit "${PIPESTATUS[0]}"
}
cd "$here" || exit 1
if ! nvcc -cubin -arch=sm_90 slices.cu -o "$work/slices.cubin" || ! nvcc -O2 -o "$work/slice_bench" slice_bench.cpp -lcuda; then
    echo "VERDICT: FAIL (slices.cu or slice_bench.cpp did not build)" | tee "$out/slices-table.txt"
    exit 1
fi
cd "$work" || exit 1

./slice_bench slices.cubin ctxcost >"$work/ctxcost.out" 2>&1
rc=$?
record "ctxcost $rc $(val '^TIME ctx_overhead_MiB=\(.*\)' "$work/ctxcost.out") $(val '^TIME alloc_1B_granule_KiB=\(.*\)' "$work/ctxcost.out")"

# Native, alone on the whole GPU: the reference for every fraction.
for kind in $KINDS; do
    start=$(( $(date +%s%3N) + 500 ))
    ./slice_bench slices.cubin "$kind" "$secs" $start >"$work/native-$kind.out" 2>&1
    rc=$?
    record "native $kind $rc $(rate_of "$work/native-$kind.out")"
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

for mode in $MODES; do
    if [ "$mode" = mps ]; then
        export CUDA_MPS_PIPE_DIRECTORY=$work/mps-pipe CUDA_MPS_LOG_DIRECTORY=$work/mps-log
        mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
        nvidia-cuda-mps-control -d || { record "unavailable mps nvidia-cuda-mps-control -d failed"; continue; }
        sleep 1
    fi
    for config in "${CONFIGS[@]}"; do
        for kind in $KINDS; do
            # shellcheck disable=SC2086 # the SM counts are split on purpose
            start_vms "$mode" $config
            start=$(( $(date +%s%3N) + 1500 ))
            i=0; pids=()
            for sms in $config; do
                run_vm $i "$kind" "$secs" $start >"$work/$mode-${config// /_}-$kind-$i.out" 2>&1 &
                pids+=($!); i=$((i+1))
            done
            i=0
            for sms in $config; do
                wait "${pids[$i]}"
                rc=$?
                f="$work/$mode-${config// /_}-$kind-$i.out"
                record "case $mode ${config// /_} $kind vm$i $sms $rc $(rate_of "$f") $(val '^RESULT sms=\([0-9]*\).*' "$f")"
                i=$((i+1))
            done
            stop_vms
        done
    done
    # Fault isolation: VM 0 runs a long checked job while VM 1 faults.
    start_vms "$mode" 66 66
    run_vm 0 longjob 6 >"$work/$mode-longjob.out" 2>&1 &
    long=$!
    sleep 2
    run_vm 1 fault >"$work/$mode-fault.out" 2>&1
    fault_rc=$?
    wait $long
    long_rc=$?
    record "isolation $mode $long_rc $fault_rc $(val '^RESULT longjob_runs_ok=\([A-Za-z]*\).*' "$work/$mode-longjob.out") $(val '^RESULT fault_error=\([A-Z_]*\).*' "$work/$mode-fault.out")"
    stop_vms
    if [ $mode = mps ]; then echo quit | nvidia-cuda-mps-control; sleep 1; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; fi
done

# Memory quota: a 1 GiB slice.
rm -f "$work/q.sock"
RUST_LOG=info "$bin/vhost-gpu" --socket "$work/q.sock" --gpu 0 --mem-limit 1G >>"$out/daemons.log" 2>&1 &
qd=$!
sleep 1
VGPU_DEVICE="vhost-user:$work/q.sock" LD_LIBRARY_PATH="$work/shim" sealed ./slice_bench slices.cubin quota $((1 << 30)) >"$work/quota.out" 2>&1
q=$?
record "quota $q $(val '^RESULT quota_total=\([0-9]*\) .*' "$work/quota.out") $(val '.* alloc_limit_minus_4096=\([0-9]*\) .*' "$work/quota.out") $(val '.* one_byte_over=\([0-9]*\) .*' "$work/quota.out") $(val '.* exactly_at_limit=\([0-9]*\) .*' "$work/quota.out") $(val '.* after_full=\([0-9]*\) .*' "$work/quota.out")"
kill $qd; wait $qd 2>/dev/null
(cd "$work" && tar czf "$out/slice-logs.tgz" ./*.out)
verdict


#!/usr/bin/env bash
# One device call's worth of GPU evidence: the suite (run.sh), the executor's backend tests
# on NVIDIA's driver (when BIN_DIR holds `executor-tests`, the test binary of vgpu-executor),
# slices (slices.sh), isolation and churn (isolation.sh), and, when a corrupting shim is
# given, the deliberately broken run of docs/test-mutations.md on a few cases. Each part is bounded in time so the whole fits one
# 10-minute call; every log is packed into $OUT/logs-all.tgz and each table is copied to $OUT
# (the device returns at most 8 files).
#
# usage: tests/gpu/session.sh BIN_DIR [CORRUPT_BIN_DIR]
#        PARTS="suite executor slices isolation broken" (the default) picks parts, so a
#        session too long for one call can be two. Two more parts are asked for by name:
#        "vm" (a QEMU guest through /dev/vgpu0, tests/vm/h200-run.sh, with VM_BUNDLE naming
#        the bundle of tests/vm/h200-bundle.sh) and "telemetry" (tests/gpu/telemetry.sh).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$1
corrupt=${2:-}
out=${OUT:?OUT must name the folder results go to}
res=/tmp/vgpu-session
rm -rf "$res"; mkdir -p "$res"/{suite,iso,broken,slices,vm,telemetry}
headers=/usr/local/cuda/include   # CUDA_HEADERS=1 brings the driver headers back too
[ -n "${CUDA_HEADERS:-}" ] && (cd "$headers" && tar cJf "$out/cuda-13-headers.tar.xz" cuda.h cudaTypedefs.h \
    $(ls cudaProfilerTypedefs.h cudaGL*.h cudaEGL*.h cudaVDPAU*.h 2>/dev/null)) || true

status=0
parts=" ${PARTS:-suite executor slices isolation broken} "
want() { case "$parts" in *" $1 "*) return 0 ;; esac; return 1; }
if want suite; then
OUT=$res/suite timeout "${SUITE_SECS:-360}" bash "$here/run.sh" "$bin" >"$res/suite/stdout.txt" 2>&1
rc=$?; echo "suite exit $rc" | tee -a "$res/summary.txt"; [ $rc = 0 ] || status=1
fi
if want executor && [ -x "$bin/executor-tests" ]; then
    timeout 240 "$bin/executor-tests" --ignored on_cuda --test-threads=1 >"$res/executor-tests.txt" 2>&1
    rc=$?; echo "executor tests on the GPU exit $rc" | tee -a "$res/summary.txt"; [ $rc = 0 ] || status=1
fi
if want slices; then
OUT=$res/slices timeout "${SLICES_SECS:-200}" bash "$here/slices.sh" "$bin" >"$res/slices/stdout.txt" 2>&1
rc=$?; echo "slices exit $rc" | tee -a "$res/summary.txt"; [ $rc = 0 ] || status=1
fi
if want isolation; then
OUT=$res/iso CHURN_ROUNDS=${CHURN_ROUNDS:-400} timeout "${ISO_SECS:-150}" \
    bash "$here/isolation.sh" "$bin" >"$res/iso/stdout.txt" 2>&1
rc=$?; echo "isolation exit $rc" | tee -a "$res/summary.txt"; [ $rc = 0 ] || status=1
fi
if want telemetry; then  # not in the default list: PARTS="telemetry" (tests/gpu/telemetry.sh, ~35 s)
mkdir -p "$res/telemetry"
OUT=$res/telemetry timeout 120 bash "$here/telemetry.sh" "$bin" >"$res/telemetry/stdout.txt" 2>&1
rc=$?; echo "telemetry exit $rc" | tee -a "$res/summary.txt"; [ $rc = 0 ] || status=1
cp "$res/telemetry/telemetry-table.txt" "$out/telemetry-table.txt" 2>/dev/null
fi
if want broken && [ -n "$corrupt" ]; then
    # The same programs, reused from the suite's build, through a shim that corrupts copies:
    # the verdict must be FAIL and name them.
    OUT=$res/broken GPU_REUSE_BUILD=1 GPU_CASES="e2e bandwidth vecadd_cubin rt_pinned_pageable_static" \
        timeout 90 bash "$here/run.sh" "$corrupt" >"$res/broken/stdout.txt" 2>&1
    rc=$?; echo "broken run exit $rc (must be non-zero)" | tee -a "$res/summary.txt"
fi
if want vm; then
    OUT=$res/vm timeout "${VM_SECS:-240}" bash "$here/../vm/h200-run.sh" "${VM_BUNDLE:?VM_BUNDLE names the guest bundle}" "$bin" \
        >"$res/vm/stdout.txt" 2>&1
    rc=$?; echo "vm exit $rc" | tee -a "$res/summary.txt"; [ $rc = 0 ] || status=1
fi
cp "$res/suite/table.txt" "$out/suite-table.txt" 2>/dev/null
cp "$res/iso/isolation-table.txt" "$out/isolation-table.txt" 2>/dev/null
cp "$res/broken/table.txt" "$out/broken-table.txt" 2>/dev/null
cp "$res/slices/slices-table.txt" "$out/slices-table.txt" 2>/dev/null
tail -40 "$res/executor-tests.txt" >"$out/executor-tests.txt" 2>/dev/null
tail -60 "$res/vm/stdout.txt" >"$out/vm.txt" 2>/dev/null
cp "$res/summary.txt" "$out/summary.txt"
tar czf "$out/logs-all.tgz" -C "$res" .
exit $status

#!/bin/sh
# Runs inside the guest on the H200 machine (tests/vm/h200-bundle.sh puts it in the initramfs):
# a driver-API program and an nvcc-built runtime program, through /dev/vgpu0, on the real GPU,
# with their kernel results checked. Each step prints VGPU-STEP-OK or VGPU-STEP-FAIL; the last
# line is VGPU-GUEST-DONE fail=N (tests/vm/h200-run.sh turns these into its verdict).
fail=0
t() {
    echo "VGPU-STEP $*"
    "$@"
    r=$?
    if [ $r = 0 ]; then echo "VGPU-STEP-OK $1"; else echo "VGPU-STEP-FAIL rc=$r: $*"; fail=$((fail + 1)); fi
}
t driver_api_e2e /usr/share/vgpu/kernels.cubin
t rt_basic_static
t rt_streams_static
echo "VGPU-GUEST-DONE fail=$fail"
[ $fail = 0 ]

#!/bin/sh
# Runs inside the guest on the H200 machine (tests/vm/h200-bundle.sh puts it in the initramfs):
# a driver-API program and an nvcc-built runtime program, through /dev/vgpu0, on the real GPU,
# with their kernel results checked.
fail=0
t() { echo "VGPU-STEP $*"; "$@"; r=$?; [ $r = 0 ] || { echo "VGPU-STEP-FAIL rc=$r: $*"; fail=1; }; }
t driver_api_e2e /usr/share/vgpu/kernels.cubin
t rt_basic_static
t rt_streams_static
[ $fail = 0 ]

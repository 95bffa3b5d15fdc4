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
# Two processes of this VM, each its own open file of /dev/vgpu0 (so its own worker on the
# host): the owner fills 1 MiB; the thief's kernel is given the owner's raw device pointer.
# Isolated means the thief's kernel failed in its own context and the owner's data is intact.
cross_tenant_vm() {
    rm -f /tmp/ct.flag
    cross_tenant owner /usr/share/vgpu/kernels.cubin /tmp/ct.flag >/tmp/ct.owner 2>&1 &
    owner=$!
    ptr=""
    for _ in $(seq 120); do
        ptr=$(sed -n 's/^OWNER PTR //p' /tmp/ct.owner)
        [ -n "$ptr" ] && break
        sleep 1
    done
    if [ -z "$ptr" ]; then touch /tmp/ct.flag; wait $owner; cat /tmp/ct.owner; return 1; fi
    cross_tenant thief /usr/share/vgpu/kernels.cubin "$ptr" >/tmp/ct.thief 2>&1
    touch /tmp/ct.flag
    wait $owner
    sed 's/^/CROSS-TENANT /' /tmp/ct.owner /tmp/ct.thief
    grep -q "^RESULT owner_intact=1" /tmp/ct.owner || return 1
    grep -q "^RESULT thief_error=" /tmp/ct.thief || return 1
    ! grep -q "^RESULT thief_error=CUDA_SUCCESS" /tmp/ct.thief
}
t driver_api_e2e /usr/share/vgpu/kernels.cubin
t cross_tenant_vm
t rt_basic_static
t rt_streams_static
echo "VGPU-GUEST-DONE fail=$fail"
[ $fail = 0 ]

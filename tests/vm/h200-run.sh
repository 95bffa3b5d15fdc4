#!/bin/bash
# On the GPU machine: a QEMU guest (TCG) with our device, served by `vhost-gpu --gpu 0`, runs
# the driver-API and runtime programs of tests/vm/h200-guest.sh through /dev/vgpu0 on the H200.
# The last line is a verdict: PASS only when every expected step (the literal STEPS below)
# printed VGPU-STEP-OK and its program's pass line, and the guest reached its end; the exit
# status follows it.
# usage: tests/vm/h200-run.sh BUNDLE.tar.gz BIN_DIR   (VGPU_GPU=sim tries the plumbing without a GPU)
set -uo pipefail

# The verdict on a guest's serial log and QEMU's exit status: each expected step, its pass
# line, and the guest's end. (`h200-run.sh --verdict SERIAL_LOG QEMU_RC` runs only this.)
guest_verdict() {
    local serial qrc=$2 s step pass why
    # The serial console ends lines with CR LF.
    serial=$(mktemp)
    tr -d '\r' <"$1" >"$serial" 2>/dev/null
    STEPS="driver_api_e2e:E2E+PASS cross_tenant_vm:CROSS-TENANT+RESULT+owner_intact=1 rt_basic_static:PASS+rt_basic rt_streams_static:PASS+rt_streams"  # step:pass line (+ for a space)
    failed=()
    [ "$qrc" = 124 ] && failed+=("qemu timed out")
    grep -q "^VGPU-GUEST-DONE fail=0" "$serial" || failed+=("the guest did not finish with fail=0")
    for s in $STEPS; do
        step=${s%%:*} pass=${s#*:}
        if ! grep -q "^VGPU-STEP-OK $step\$" "$serial"; then
            failed+=("$step ($(grep -m1 "^VGPU-STEP-FAIL.*: $step" "$serial" || echo 'MISSING: never ran'))")
        elif ! grep -q "^${pass//+/ }" "$serial"; then
            failed+=("$step (no '${pass//+/ }' line)")
        fi
    done
    rm -f "$serial"
    if [ ${#failed[@]} = 0 ]; then
        echo "VERDICT: PASS (all $(echo $STEPS | wc -w) guest steps passed on the GPU)"
        return 0
    fi
    printf -v why '%s; ' "${failed[@]}"
    echo "VERDICT: FAIL (${#failed[@]} failing: ${why%; })"
    return 1
}
if [ "${1:-}" = --verdict ]; then guest_verdict "$2" "$3"; exit; fi
bundle=$1 bin=$2
W=/tmp/vgpu-h200-vm
rm -rf "$W"; mkdir -p "$W"
tar xzf "$bundle" -C "$W"
B=$W/b
RUST_LOG=info "$bin/vhost-gpu" --socket "$W/vgpu.sock" --gpu "${VGPU_GPU:-0}" >"$W/daemon.log" 2>&1 &
d=$!
for _ in $(seq 50); do [ -S "$W/vgpu.sock" ] && break; sleep 0.1; done
t0=$(date +%s)
timeout 400 "$B/lib/ld-linux-x86-64.so.2" --library-path "$B/lib" "$B/qemu-system-x86_64" -L "$B/share" \
  -machine q35,memory-backend=mem -object memory-backend-memfd,id=mem,size=1G,share=on \
  -accel tcg -cpu max -m 1G -smp 2 -nodefaults -no-user-config -display none -no-reboot \
  -serial "file:$W/serial.log" -chardev "socket,id=c,path=$W/vgpu.sock" -device vhost-user-gpio-pci,chardev=c \
  -kernel "$B/vmlinuz" -initrd "$B/initramfs.cpio.gz" -append "console=ttyS0 panic=-1 quiet" >"$W/qemu.log" 2>&1
qrc=$?
echo "qemu exit $qrc after $(( $(date +%s) - t0 )) s"
kill $d; wait $d 2>/dev/null
grep -E "VGPU|E2E|CROSS-TENANT|device:|copy 64|kernels:|streams:|PASS|FAIL|vgpu" "$W/serial.log" | grep -v "^\[" | head -40
echo "--- qemu"; tail -5 "$W/qemu.log"
echo "--- daemon"; grep -v "pinned for DMA" "$W/daemon.log" | tail -8
cp "$W/serial.log" "$W/daemon.log" "${OUT:-/tmp}/" 2>/dev/null

guest_verdict "$W/serial.log" "$qrc"

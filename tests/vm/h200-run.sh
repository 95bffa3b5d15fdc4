#!/bin/bash
# On the GPU machine: a QEMU guest (TCG) with our device, served by `vhost-gpu --gpu 0`, runs
# the driver-API and runtime programs of tests/vm/h200-guest.sh through /dev/vgpu0 on the H200.
# usage: tests/vm/h200-run.sh BUNDLE.tar.gz BIN_DIR
set -uo pipefail
bundle=$1 bin=$2
W=/tmp/vgpu-h200-vm
rm -rf "$W"; mkdir -p "$W"
tar xzf "$bundle" -C "$W"
B=$W/b
RUST_LOG=info "$bin/vhost-gpu" --socket "$W/vgpu.sock" --gpu 0 >"$W/daemon.log" 2>&1 &
d=$!
for _ in $(seq 50); do [ -S "$W/vgpu.sock" ] && break; sleep 0.1; done
t0=$(date +%s)
timeout 400 "$B/lib/ld-linux-x86-64.so.2" --library-path "$B/lib" "$B/qemu-system-x86_64" -L "$B/share" \
  -machine q35,memory-backend=mem -object memory-backend-memfd,id=mem,size=1G,share=on \
  -accel tcg -cpu max -m 1G -smp 2 -nodefaults -no-user-config -display none -no-reboot \
  -serial "file:$W/serial.log" -chardev "socket,id=c,path=$W/vgpu.sock" -device vhost-user-gpio-pci,chardev=c \
  -kernel "$B/vmlinuz" -initrd "$B/initramfs.cpio.gz" -append "console=ttyS0 panic=-1 quiet" >"$W/qemu.log" 2>&1
echo "qemu exit $? after $(( $(date +%s) - t0 )) s"
kill $d; wait $d 2>/dev/null
grep -E "VGPU|E2E|device:|copy 64|kernels:|streams:|PASS|FAIL|vgpu" "$W/serial.log" | grep -v "^\[" | head -40
echo "--- qemu"; tail -5 "$W/qemu.log"
echo "--- daemon"; grep -v "pinned for DMA" "$W/daemon.log" | tail -8
cp "$W/serial.log" "$W/daemon.log" "${OUT:-/tmp}/" 2>/dev/null

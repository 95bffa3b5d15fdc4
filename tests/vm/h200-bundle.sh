#!/bin/bash
# Packs what a QEMU guest needs on the GPU machine, which has no QEMU and no package manager:
# qemu-system-x86_64 with every library it loads (its own glibc included, run through the packed
# dynamic loader), the firmware it reads, the guest kernel, and an initramfs holding vgpu.ko, our
# libcuda.so.1 and the test programs. Output: $1 (default .carry/h200-vm/bundle.tar.gz).
# Needs the VM rig of tests/vm/run.sh (guest/setup-host.sh) and a release build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$ROOT/.carry/h200-vm/bundle.tar.gz}
W=$(mktemp -d)
mkdir -p "$W/b/lib" "$W/b/share" "$(dirname "$out")"
q=$(command -v qemu-system-x86_64)
cp -L "$q" "$W/b/qemu-system-x86_64"
ldd "$q" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r l; do cp -L "$l" "$W/b/lib/"; done
for f in bios-256k.bin linuxboot_dma.bin kvmvapic.bin; do
  cp -L "$(ls /usr/share/qemu/$f /usr/share/seabios/$f 2>/dev/null | head -1)" "$W/b/share/"
done
KROOT=$(ls -d /var/tmp/vgpu-vm/kernel-* | head -1)
KABI=${KROOT##*/kernel-}
cp "$KROOT/boot/vmlinuz-$KABI" "$W/b/vmlinuz"
make -s -C "$ROOT/guest-driver-shim/kmod" KDIR="/usr/src/linux-headers-$KABI" >/dev/null
gcc -O1 -o "$W/driver_api_e2e" "$ROOT/tests/programs/driver_api_e2e.c" -I"$ROOT/tests/programs" "$ROOT/target/release/libcuda.so"
gcc -O1 -o "$W/cross_tenant" "$ROOT/tests/gpu/isolation/cross_tenant.c" -I"$ROOT/tests/programs" "$ROOT/target/release/libcuda.so"
"$ROOT/guest/build-initramfs.sh" --kroot "$KROOT" --kabi "$KABI" --out "$W/b/initramfs.cpio.gz" \
  --module "$ROOT/guest-driver-shim/kmod/vgpu.ko" \
  --file "$ROOT/target/release/libcuda.so:/usr/lib/libcuda.so.1" \
  --file "$W/driver_api_e2e:/usr/bin/driver_api_e2e" \
  --file "$W/cross_tenant:/usr/bin/cross_tenant" \
  --file "$ROOT/tests/fixtures/kernels.cubin:/usr/share/vgpu/kernels.cubin" \
  --file "$ROOT/tests/fixtures/runtime/rt_basic_static:/usr/bin/rt_basic_static" \
  --file "$ROOT/tests/fixtures/runtime/rt_streams_static:/usr/bin/rt_streams_static" \
  --script "$ROOT/tests/vm/h200-guest.sh" >/dev/null
tar czf "$out" -C "$W" b
rm -rf "$W"
ls -la "$out"

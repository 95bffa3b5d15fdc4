#!/bin/bash
# Build a busybox initramfs for the vGPU test guest.
#
# guest/build-initramfs.sh --kroot DIR --kabi ABI --out FILE.cpio.gz
#     [--module PATH.ko]...          extra kernel modules (vgpu.ko); loaded after the virtio stack
#     [--file SRC[:DEST]]...         files to add; ELF programs/libraries get their dynamic loader
#                                    and `ldd` dependencies copied too. Default DEST: executables
#                                    -> /usr/bin/NAME, *.so* -> /usr/lib/NAME
#     [--script FILE]                default guest script (/etc/vgpu/run.sh), run when the kernel
#                                    command line has no vgpu_cmd=
#
# The guest's init:
#   - loads virtio_ring virtio virtio_pci_* (the cloud kernel builds them as modules, and dpkg -x
#     leaves no modules.dep), then each --module with the kernel cmdline's `vgpu.KEY=VAL` options
#   - runs vgpu_cmd="..." from the kernel command line (double-quoted) or /etc/vgpu/run.sh,
#     with VGPU_DEVICE=/dev/vgpu0 and LD_LIBRARY_PATH=/usr/lib
#   - prints `VGPU-VERDICT PASS` or `VGPU-VERDICT FAIL <why>` on the console (also FAIL when the
#     kernel log has an Oops/BUG/WARNING) and powers off.
set -euo pipefail
KROOT= KABI= OUT= SCRIPT=
MODS=() FILES=()
while [ $# -gt 0 ]; do
  case $1 in
    --kroot) KROOT=$2; shift ;;
    --kabi) KABI=$2; shift ;;
    --out) OUT=$2; shift ;;
    --module) MODS+=("$2"); shift ;;
    --file) FILES+=("$2"); shift ;;
    --script) SCRIPT=$2; shift ;;
    *) echo "unknown arg $1" >&2; exit 2 ;;
  esac; shift
done
[ -n "$KROOT" ] && [ -n "$KABI" ] && [ -n "$OUT" ] || { echo "need --kroot --kabi --out" >&2; exit 2; }
BB=/bin/busybox   # from busybox-static (statically linked)
[ -x "$BB" ] || { echo "need busybox-static" >&2; exit 1; }

W=$(mktemp -d /tmp/vgpu-initramfs.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W"/{bin,sbin,proc,sys,dev,tmp,run,etc/vgpu,lib/modules,usr/bin,usr/lib,lib64}
cp "$BB" "$W/bin/busybox"

VIRTIO_MODS="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci"
for m in $VIRTIO_MODS; do
  f=$(find "$KROOT/lib/modules/$KABI" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
  [ -n "$f" ] || { echo "module $m not found under $KROOT" >&2; exit 1; }
  case $f in
    *.xz) xz -dc "$f" > "$W/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" > "$W/lib/modules/$m.ko" ;;
    *) cp "$f" "$W/lib/modules/$m.ko" ;;
  esac
done
EXTRA=""
for ko in "${MODS[@]}"; do cp "$ko" "$W/lib/modules/"; EXTRA="$EXTRA $(basename "$ko" .ko)"; done

copy_deps() {   # copy the ELF interpreter and ldd-resolved libraries of $1 to the same paths
  local f=$1 lib
  ldd "$f" >/dev/null 2>&1 || return 0    # static, or not an ELF file
  for lib in $(ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]*ld-linux/{print $1}'); do
    [ -e "$W$lib" ] && continue
    mkdir -p "$W$(dirname "$lib")"
    cp -L "$lib" "$W$lib"
  done
  if ldd "$f" 2>&1 | grep -q 'not found'; then
    echo "warning: unresolved libraries for $f:" >&2; ldd "$f" | grep 'not found' >&2
  fi
}
for spec in "${FILES[@]}"; do
  src=${spec%%:*}; dst=${spec#*:}; [ "$dst" = "$spec" ] && dst=
  [ -e "$src" ] || { echo "missing file $src" >&2; exit 1; }
  if [ -z "$dst" ]; then
    case $(basename "$src") in *.so|*.so.*) dst=/usr/lib/$(basename "$src") ;; *) dst=/usr/bin/$(basename "$src") ;; esac
  fi
  mkdir -p "$W$(dirname "$dst")"; cp -L "$src" "$W$dst"
  [ -x "$src" ] && chmod +x "$W$dst"
  copy_deps "$src"
done
[ -n "$SCRIPT" ] && install -m 0755 "$SCRIPT" "$W/etc/vgpu/run.sh"
# x86_64 glibc loader path expected by binaries
[ -e "$W/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] && [ ! -e "$W/lib64/ld-linux-x86-64.so.2" ] && \
  ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$W/lib64/ld-linux-x86-64.so.2"

cat > "$W/init" <<INIT
#!/bin/busybox sh
VIRTIO_MODS="$VIRTIO_MODS"
EXTRA_MODS="$EXTRA"
INIT
cat >> "$W/init" <<'INIT'
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
echo "VGPU-INIT uptime=$(cut -d' ' -f1 /proc/uptime)s kernel=$(uname -r)"
for m in $VIRTIO_MODS; do insmod /lib/modules/$m.ko || echo "VGPU-INIT insmod $m failed"; done
# vgpu.KEY=VAL on the kernel command line become module parameters of vgpu.ko
params=""
for tok in $(cat /proc/cmdline); do case $tok in vgpu.*=*) params="$params ${tok#vgpu.}" ;; esac; done
for m in $EXTRA_MODS; do
  if [ "$m" = vgpu ]; then insmod /lib/modules/$m.ko $params; else insmod /lib/modules/$m.ko; fi \
    && echo "VGPU-INIT insmod $m ok${params:+ ($params)}" || echo "VGPU-INIT insmod $m FAILED"
done
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d" ] && echo "VGPU-INIT virtio $(basename $d) device=$(cat $d/device) driver=$( [ -e $d/driver ] && basename $(readlink $d/driver) || echo none)"
done
ls /dev/vgpu* 2>/dev/null | sed 's/^/VGPU-INIT dev /'
export VGPU_DEVICE=/dev/vgpu0 LD_LIBRARY_PATH=/usr/lib HOME=/tmp
cd /tmp
rc=0
if [ -n "$vgpu_cmd" ]; then
  echo "VGPU-RUN $vgpu_cmd"; sh -c "$vgpu_cmd"; rc=$?
elif [ -x /etc/vgpu/run.sh ]; then
  echo "VGPU-RUN /etc/vgpu/run.sh"; /etc/vgpu/run.sh; rc=$?
else
  echo "VGPU-RUN nothing to run"; rc=0
fi
dmesg | grep -E 'vgpu|virtio' | sed 's/^/VGPU-DMESG /'
if dmesg | grep -qE 'Oops|BUG:|WARNING:|general protection|Call Trace'; then
  dmesg | tail -60 | sed 's/^/VGPU-DMESG /'
  echo "VGPU-VERDICT FAIL kernel-trace rc=$rc"
elif [ $rc = 0 ]; then
  echo "VGPU-VERDICT PASS"
else
  echo "VGPU-VERDICT FAIL rc=$rc"
fi
echo "VGPU-POWEROFF uptime=$(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
INIT
chmod +x "$W/init"
(cd "$W" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "initramfs $OUT: $(du -h "$OUT" | cut -f1), modules:$EXTRA files: ${#FILES[@]}" >&2

#!/bin/bash
# Install (idempotently) what the VM rig needs on a Debian 12 host:
#   QEMU 10.0.2 and (optionally) libvirt 11.3 from bookworm-backports, busybox-static, cpio,
#   build tools, and the Debian cloud kernel .deb + matching headers.
# Usage: guest/setup-host.sh [--libvirt] [--workdir DIR]
# Prints shell assignments on the last lines (KABI=..., KROOT=..., KERNEL=..., KHEADERS=...)
# and writes them to $WORKDIR/env.sh so later scripts can `source` it.
set -euo pipefail
WITH_LIBVIRT=0
WORKDIR=${VGPU_VM_WORKDIR:-/var/tmp/vgpu-vm}
while [ $# -gt 0 ]; do
  case $1 in
    --libvirt) WITH_LIBVIRT=1 ;;
    --workdir) WORKDIR=$2; shift ;;
    *) echo "unknown arg $1" >&2; exit 2 ;;
  esac; shift
done
export DEBIAN_FRONTEND=noninteractive
log() { echo "[setup-host $(date +%T)] $*" >&2; }
mkdir -p "$WORKDIR"

BPO=/etc/apt/sources.list.d/bookworm-backports.sources
need_update=0
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding bookworm-backports source"
  cat > $BPO <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi
# apt lists older than 1 day or missing backports lists -> update
if [ $need_update = 1 ] || ! ls /var/lib/apt/lists/*bookworm-backports*Packages* >/dev/null 2>&1; then
  log "apt-get update"; apt-get update -qq
fi

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# QEMU 10 from backports
qv=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
case "$qv" in
  1:10.*) ;;
  *) log "installing qemu-system-x86 from bookworm-backports (have '${qv}')"
     apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-system-data >/dev/null ;;
esac

# Kernel ABI from the cloud metapackage (changes with point releases)
KABI=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{sub("linux-image-","",$2);print $2;exit}')
[ -n "$KABI" ] || { log "cannot resolve cloud kernel ABI"; exit 1; }

pkgs=()
for p in busybox-static cpio gzip make gcc libc6-dev "linux-headers-$KABI"; do have_pkg "$p" || pkgs+=("$p"); done
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing ${pkgs[*]}"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

if [ $WITH_LIBVIRT = 1 ]; then
  lv=$(dpkg-query -W -f='${Version}' libvirt-daemon-system 2>/dev/null || true)
  case "$lv" in
    11.*) ;;
    *) log "installing libvirt from bookworm-backports (have '${lv}')"
       apt-get install -y -qq --no-install-recommends -t bookworm-backports \
         libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu >/dev/null ;;
  esac
fi

# Kernel image .deb unpacked (not installed) into $WORKDIR/kernel-$KABI
KROOT=$WORKDIR/kernel-$KABI
if [ ! -f "$KROOT/boot/vmlinuz-$KABI" ]; then
  log "fetching linux-image-$KABI"
  tmp=$(mktemp -d "$WORKDIR/kdl.XXXX")
  (cd "$tmp" && apt-get download -qq "linux-image-$KABI" && dpkg -x linux-image-"${KABI}"_*.deb "$KROOT.tmp")
  rm -rf "$tmp" "$KROOT"; mv "$KROOT.tmp" "$KROOT"
fi
KHEADERS=/usr/src/linux-headers-$KABI
cat > "$WORKDIR/env.sh" <<ENV
KABI=$KABI
KROOT=$KROOT
KERNEL=$KROOT/boot/vmlinuz-$KABI
KHEADERS=$KHEADERS
ENV
log "done: qemu $(dpkg-query -W -f='${Version}' qemu-system-x86) kernel $KABI"
cat "$WORKDIR/env.sh"

#!/bin/bash
# Optional: build QEMU 10.0.2 (Debian bookworm-backports source) with the generic
# vhost-user-device(-pci) made user-creatable (a 2-line patch), so the vGPU can be attached as
#   -device vhost-user-device-pci,chardev=C,virtio-id=38,num_vqs=4,vq_size=256,config_size=8
# instead of posing as vhost-user-gpio-pci (2 queues x 64). Stock QEMU 10.0 refuses the type
# ("Parameter 'driver' expects a pluggable device type"). About 4.5 min on 2 cores; the result is
# cacheable: guest/build-qemu-generic.sh [OUTDIR] prints the binary path.
# Run the result with: -L /usr/share/seabios -L /usr/share/qemu (firmware of the packaged QEMU).
set -euo pipefail
OUT=${1:-/var/tmp/vgpu-vm/qemu-generic}
VER=1:10.0.2+ds-2+deb13u1~bpo12+1
BIN=$OUT/qemu-10.0.2/build/qemu-system-x86_64
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
log() { echo "[build-qemu-generic $(date +%T)] $*" >&2; }
mkdir -p "$OUT"; cd "$OUT"
SRC=/etc/apt/sources.list.d/bookworm-backports-src.sources
if [ ! -f $SRC ] && ! apt-cache showsrc "qemu=$VER" >/dev/null 2>&1; then
  log "adding deb-src for bookworm-backports"
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $SRC
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends ninja-build libglib2.0-dev pkg-config flex bison \
  python3-venv python3-pip libpixman-1-dev libfdt-dev xz-utils >/dev/null
if [ ! -f qemu_10.0.2+ds.orig.tar.xz ]; then
  log "fetching the source"
  # only the .orig tarball is needed (the .dsc/.debian.tar.xz may 404 on the mirror)
  apt-get source --download-only "qemu=$VER" >/dev/null 2>&1 || true
  [ -f qemu_10.0.2+ds.orig.tar.xz ] || { log "source tarball not downloaded"; exit 1; }
fi
if [ ! -d qemu-10.0.2 ]; then
  tar xf qemu_10.0.2+ds.orig.tar.xz
  cd qemu-10.0.2
  sed -i 's/dc->user_creatable = false;/dc->user_creatable = true;/' \
    hw/virtio/vhost-user-device.c hw/virtio/vhost-user-device-pci.c
  sed -i 's/    unpack_edk2_blobs = bzip2.found()/    unpack_edk2_blobs = false/' meson.build  # +ds has no edk2 blobs
  # the +ds tarball dropped the vendored wheels configure wants
  python3 -m pip download -q --no-deps --only-binary=:all: meson==1.5.0 pycotap==1.3.1 -d python/wheels
  cd ..
fi
cd qemu-10.0.2
mkdir -p build && cd build
[ -f build.ninja ] || ../configure --python=/usr/bin/python3 --disable-download --target-list=x86_64-softmmu \
  --without-default-features --enable-tcg --enable-kvm --enable-vhost-user --enable-vhost-kernel \
  --disable-docs --disable-install-blobs >configure.log 2>&1 || { tail -30 configure.log >&2; exit 1; }
log "ninja (nice 19)"
nice -n 19 ninja -j2 qemu-system-x86_64 >ninja.log 2>&1 || { tail -30 ninja.log >&2; exit 1; }
echo "$BIN"

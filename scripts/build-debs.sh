#!/usr/bin/env bash
# Builds the Debian packages with dpkg-deb (no packaging tools to install):
#   vgpu-host   vgpu-controller, vgpuctl, vgpu-agent, vhost-gpu, the systemd units, the
#               configuration files (/etc/vgpu/*.toml, conffiles), the `vgpu` user (postinst)
#   vgpu-guest  our libcuda.so.1 (/usr/lib/vgpu), vgpu-run, vgpu.ko as DKMS source
#               (/usr/src/vgpu-VERSION with its dkms.conf)
#
# usage: scripts/build-debs.sh [--bin-dir DIR] [--out DIR]
#   --bin-dir DIR  package the binaries already built in DIR (CI passes target/debug, what it
#                  built for the tests; they are stripped of debug information on the way)
#                  instead of running `cargo build --release` and packaging target/release
#   --out DIR      where the .deb files go (default target/debs)
# Prints the paths of the packages it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin_dir=
out=target/debs
while [ $# -gt 0 ]; do
    case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--bin-dir DIR] [--out DIR]" >&2; exit 2 ;;
    esac
done
if [ -z "$bin_dir" ]; then
    cargo build --release -q -p vgpu-controller -p vgpu-agent -p vhost-gpu -p vgpu-libcuda -p vgpu-run
    bin_dir=${CARGO_TARGET_DIR:-target}/release
fi
for f in vgpu-controller vgpuctl vgpu-agent vhost-gpu vgpu-run libcuda.so; do
    [ -f "$bin_dir/$f" ] || { echo "build-debs: $bin_dir/$f is missing (build it first)" >&2; exit 1; }
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# install_bin SRC DEST MODE: a copy without debug information (strip, where binutils is here).
install_bin() {
    install -D -m "$3" "$1" "$2"
    if command -v strip >/dev/null; then strip --strip-debug "$2"; fi
}

# finish PKG DESCRIPTION DEPENDS [EXTRA CONTROL LINES]: control file, md5sums, the .deb.
finish() {
    local pkg=$1 root=$stage/$1
    install -d "$root/usr/share/doc/$pkg"
    printf 'vgpu-pool %s\nLicense: Apache-2.0 (the guest kernel module: GPL-2.0)\nSource: %s\n' \
        "$version" "$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml)" >"$root/usr/share/doc/$pkg/copyright"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    {
        echo "Package: $pkg"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: vgpu-pool <vgpu-pool@example.invalid>"
        echo "Installed-Size: $size"
        echo "Depends: $3"
        [ $# -gt 3 ] && printf '%s\n' "${@:4}"
        echo "Section: admin"
        echo "Priority: optional"
        echo "Description: $2"
    } >"$root/DEBIAN/control"
    # gzip -1: CI packages ~100 MB of debug binaries; xz would take minutes on two cores.
    dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
    echo "$out/${pkg}_${version}_${arch}.deb"
}

# --- vgpu-host
h=$stage/vgpu-host
for b in vgpu-controller vgpuctl vgpu-agent vhost-gpu; do
    install_bin "$bin_dir/$b" "$h/usr/bin/$b" 0755
done
for u in deploy/systemd/*.service; do
    install -D -m 0644 "$u" "$h/lib/systemd/system/$(basename "$u")"
done
for c in deploy/config/*.toml; do
    install -D -m 0644 "$c" "$h/etc/vgpu/$(basename "$c")"
done
install -d -m 0755 "$h/etc/vgpu/vhost-gpu.d"
install -D -m 0644 docs/operations.md "$h/usr/share/doc/vgpu-host/operations.md"
install -d "$h/DEBIAN"
for s in postinst prerm postrm; do
    install -m 0755 "deploy/debian/vgpu-host/$s" "$h/DEBIAN/$s"
done
(cd "$h" && find etc -type f -printf '/%p\n' | sort) >"$h/DEBIAN/conffiles"
finish vgpu-host "vGPU pool host: controller, agent and the per-VM vhost-gpu workers" \
    "libc6 (>= 2.36), libgcc-s1, passwd" \
    "Suggests: nvidia-driver, qemu-system-x86"

# --- vgpu-guest
g=$stage/vgpu-guest
install_bin "$bin_dir/libcuda.so" "$g/usr/lib/vgpu/libcuda.so.1" 0644
ln -s libcuda.so.1 "$g/usr/lib/vgpu/libcuda.so"
install_bin "$bin_dir/vgpu-run" "$g/usr/bin/vgpu-run" 0755
src=$g/usr/src/vgpu-$version
for f in vgpu.c vgpu_uapi.h Kbuild Makefile; do
    install -D -m 0644 "guest-driver-shim/kmod/$f" "$src/$f"
done
sed "s/@VERSION@/$version/g" deploy/debian/vgpu-guest/dkms.conf >"$src/dkms.conf"
install -D -m 0644 docs/vgpu-run.md "$g/usr/share/doc/vgpu-guest/vgpu-run.md"
install -d "$g/DEBIAN"
for s in postinst prerm; do
    sed "s/@VERSION@/$version/g" "deploy/debian/vgpu-guest/$s" >"$g/DEBIAN/$s"
    chmod 0755 "$g/DEBIAN/$s"
done
finish vgpu-guest "vGPU pool guest: libcuda.so.1 for the vGPU, vgpu-run, vgpu.ko (DKMS)" \
    "libc6 (>= 2.36), libgcc-s1" \
    "Recommends: dkms"
cd "$repo"

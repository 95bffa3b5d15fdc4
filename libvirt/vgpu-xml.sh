#!/bin/bash
# Print libvirt XML for attaching a vGPU (vhost-gpu daemon socket) to a domain.
#
#   libvirt/vgpu-xml.sh fragment --socket PATH [--id vgpu0] [--generic VIRTIO_ID]
#       The two pieces to paste into an existing domain: <memoryBacking> (shared memfd RAM,
#       required by vhost-user) and <qemu:commandline> (chardev + device). The <domain> element
#       must declare xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'.
#
#   libvirt/vgpu-xml.sh domain --name NAME --socket PATH --kernel VMLINUZ --initrd INITRD
#       [--cmdline STR] [--serial-log FILE] [--memory MiB] [--vcpus N] [--type qemu|kvm]
#       [--id vgpu0] [--generic VIRTIO_ID] [--root-ports N] [--no-device]
#       A complete direct-kernel-boot domain (used by tests/vm/run.sh). --root-ports adds N
#       free pcie-root-port controllers (hot-plug needs one); --no-device leaves the vGPU out
#       (for `vgpuctl attach`, tests/openstack/run.sh).
#
# --generic N uses `vhost-user-device-pci,virtio-id=N,num_vqs=2,vq_size=256,config_size=8`, which
# needs a QEMU where that device is user-creatable (stock QEMU 10.0 is not; see docs/vm.md);
# the default is `vhost-user-gpio-pci` (virtio id 41), which stock QEMU has.
set -euo pipefail
mode=${1:-}; shift || true
NAME=vgpu-guest SOCK= ID=vgpu0 KERNEL= INITRD= CMDLINE="console=ttyS0 panic=-1 quiet" SERIAL= MEM=512 VCPUS=1 TYPE=qemu GENERIC= PORTS=0 NODEV=0
while [ $# -gt 0 ]; do
  case $1 in
    --name) NAME=$2; shift ;;
    --socket) SOCK=$2; shift ;;
    --id) ID=$2; shift ;;
    --kernel) KERNEL=$2; shift ;;
    --initrd) INITRD=$2; shift ;;
    --cmdline) CMDLINE=$2; shift ;;
    --serial-log) SERIAL=$2; shift ;;
    --memory) MEM=$2; shift ;;
    --vcpus) VCPUS=$2; shift ;;
    --type) TYPE=$2; shift ;;
    --generic) GENERIC=$2; shift ;;
    --root-ports) PORTS=$2; shift ;;
    --no-device) NODEV=1 ;;
    *) echo "unknown arg $1" >&2; exit 2 ;;
  esac; shift
done
[ -n "$SOCK" ] || [ "$NODEV" = 1 ] || { echo "--socket PATH is required" >&2; exit 2; }
esc() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e "s/'/\&apos;/g" -e 's/"/\&quot;/g' <<<"$1"; }
# QEMU option values: a comma inside a value is written ",,"
qv() { sed 's/,/,,/g' <<<"$1"; }
if [ -n "$GENERIC" ]; then
  DEV="vhost-user-device-pci,chardev=${ID}c,id=${ID},virtio-id=${GENERIC},num_vqs=2,vq_size=256,config_size=8"
else
  DEV="vhost-user-gpio-pci,chardev=${ID}c,id=${ID}"
fi
membacking() {
  cat <<X
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
X
}
qemucmd() {
  cat <<X
  <qemu:commandline>
    <qemu:arg value='-chardev'/>
    <qemu:arg value='$(esc "socket,id=${ID}c,path=$(qv "$SOCK")")'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='$(esc "$DEV")'/>
  </qemu:commandline>
X
}
case $mode in
  fragment)
    echo "<!-- vGPU ${ID}: shared guest RAM (inside <domain>) -->"
    membacking
    echo "<!-- vGPU ${ID}: the device (last child of <domain>; needs xmlns:qemu on <domain>) -->"
    qemucmd
    ;;
  domain)
    [ -n "$KERNEL" ] && [ -n "$INITRD" ] || { echo "domain needs --kernel and --initrd" >&2; exit 2; }
    cat <<X
<domain type='$(esc "$TYPE")' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$(esc "$NAME")</name>
  <memory unit='MiB'>$(esc "$MEM")</memory>
$(membacking)
  <vcpu>$(esc "$VCPUS")</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$(esc "$KERNEL")</kernel>
    <initrd>$(esc "$INITRD")</initrd>
    <cmdline>$(esc "$CMDLINE")</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
X
    if [ -n "$SERIAL" ]; then
      echo "    <serial type='file'><source path='$(esc "$SERIAL")'/><target port='0'/></serial>"
    else
      echo "    <serial type='pty'><target port='0'/></serial>"
    fi
    cat <<X
    <console type='pty'><target type='serial' port='0'/></console>
X
    [ "$PORTS" -gt 0 ] && echo "    <controller type='pci' model='pcie-root'/>"
    for _ in $(seq "$PORTS"); do echo "    <controller type='pci' model='pcie-root-port'/>"; done
    cat <<X
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
$([ "$NODEV" = 1 ] || qemucmd)
</domain>
X
    ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac

#!/bin/sh
# Runs inside the OpenStack test guest as /etc/vgpu/run.sh (guest/build-initramfs.sh). The
# domain starts without a vGPU, as Nova defines it; the host hot-plugs one (vgpuctl
# libvirt-watch), vgpu.ko (loaded at boot) binds it, and the driver-API program runs on it.
echo "VGPU-OS waiting for /dev/vgpu0 (uptime $(cut -d' ' -f1 /proc/uptime)s)"
i=0
while [ ! -e /dev/vgpu0 ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done
if [ ! -e /dev/vgpu0 ]; then
  echo "VGPU-OS no /dev/vgpu0 after 180 s"
  for d in /sys/bus/pci/devices/*; do echo "VGPU-OS pci $(basename $d) $(cat $d/vendor):$(cat $d/device)"; done
  exit 1
fi
echo "VGPU-OS hot-plugged /dev/vgpu0 at uptime $(cut -d' ' -f1 /proc/uptime)s"
for d in /sys/bus/virtio/devices/*; do
  echo "VGPU-OS virtio $(basename $d) device=$(cat $d/device) driver=$(basename "$(readlink "$d/driver")" 2>/dev/null)"
done
# shellcheck disable=SC2046
driver_api_e2e $(cat /etc/vgpu/e2e-args 2>/dev/null)
rc=$?
echo "VGPU-OS driver_api_e2e rc=$rc"
# vgpu_os_hold=1 (kernel command line): stay up until the host unplugs the vGPU (vgpuctl detach)
if [ "${vgpu_os_hold:-0}" = 1 ]; then
  echo "VGPU-OS holding until /dev/vgpu0 is unplugged"
  i=0
  while [ -e /dev/vgpu0 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
  if [ -e /dev/vgpu0 ]; then echo "VGPU-OS /dev/vgpu0 still there after 120 s"; rc=1
  else echo "VGPU-OS unplugged /dev/vgpu0 at uptime $(cut -d' ' -f1 /proc/uptime)s"; sleep 2; fi
fi
exit $rc

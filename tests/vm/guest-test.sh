#!/bin/sh
# Runs inside the test guest as /etc/vgpu/run.sh (see guest/build-initramfs.sh).
# Kernel command line (passed to init as environment):
#   vgpu_mode=main|hello|kill   what to run (default main)
#   vgpu_backend=echo|daemon    echo: the host runs tests/vm/echo-backend (hostile-reply and
#                               copy-echo tests are possible); daemon: the real vhost-gpu
# Programs: /usr/bin/vgpu_test and cuda_probe (always), /usr/bin/driver_api_e2e (when the harness was given one;
# it finds libcuda.so.1 in /usr/lib through LD_LIBRARY_PATH and /dev/vgpu0 through VGPU_DEVICE).
mode=${vgpu_mode:-main}
backend=${vgpu_backend:-daemon}
fail=0
t() { echo "VGPU-STEP $*"; "$@"; r=$?; [ $r = 0 ] || { echo "VGPU-STEP-FAIL rc=$r: $*"; fail=1; }; return $r; }

case $mode in
hello)
  t vgpu_test hello
  ;;
main)
  t vgpu_test hello
  t vgpu_test abi
  [ "$backend" = echo ] && t vgpu_test hostile
  # the shim, when the harness was given one (VGPU_LIBCUDA): first driver calls through it
  [ -e /usr/lib/libcuda.so.1 ] && [ "$backend" = daemon ] && t cuda_probe
  # two guest processes at the same time: a Hello loop next to the driver-API program
  vgpu_test loop /dev/vgpu0 3 > /tmp/loop.log 2>&1 &
  lp=$!
  if [ -x /usr/bin/driver_api_e2e ]; then
    # shellcheck disable=SC2046
    t driver_api_e2e $(cat /etc/vgpu/e2e-args 2>/dev/null)
    # what a user types in a VM: no library path, no device named; vgpu-run finds both
    if [ -x /usr/bin/vgpu-run ]; then
      # shellcheck disable=SC2046
      t env -u LD_LIBRARY_PATH -u VGPU_DEVICE vgpu-run -- driver_api_e2e $(cat /etc/vgpu/e2e-args 2>/dev/null)
    fi
  elif [ "$backend" = echo ]; then
    t vgpu_test bench /dev/vgpu0 500 4194304
  else
    t vgpu_test memcpy /dev/vgpu0 4194304 10
  fi
  wait $lp || { echo "VGPU-STEP-FAIL concurrent loop"; fail=1; }
  sed 's/^/[loop] /' /tmp/loop.log
  # a process killed in the middle of its work: the host must free its client (with the daemon
  # the process holds 8 MiB of device memory, which the host must free too)
  if [ "$backend" = daemon ]; then
    vgpu_test hold /dev/vgpu0 8388608 1 > /tmp/kill.log 2>&1 &
  else
    vgpu_test loop /dev/vgpu0 60 > /tmp/kill.log 2>&1 &
  fi
  kp=$!
  for i in $(seq 100); do grep -qE '^(HOLD|LOOP)' /tmp/kill.log && break; sleep 0.2; done
  sleep 0.5
  kill -9 $kp; wait $kp 2>/dev/null
  echo "VGPU-KILLED-CLIENT $(sed -n 's/^\(LOOP\|HOLD\) client=\([0-9]*\).*/\2/p' /tmp/kill.log)"
  if [ "$backend" = echo ]; then
    # killed while its request is still on the ring (the device never completes it)
    vgpu_test hang > /tmp/hang.log 2>&1 &
    hp=$!
    sleep 1; kill -9 $hp; wait $hp 2>/dev/null
    cat /tmp/hang.log
  fi
  [ -x /usr/bin/kmod-transport-check ] && t kmod-transport-check
  # many fire-and-forget messages; with the echo backend slow ones, so the 64-entry ring fills
  # and submitters must wait for space
  if [ "$backend" = echo ]; then t vgpu_test flood /dev/vgpu0 300 0xFFF5; else t vgpu_test flood /dev/vgpu0 2000; fi
  sed 's/^/VGPU-STATS /' /sys/class/misc/vgpu0/stats
  if [ "$backend" = echo ] && grep -q '^ring_full_waits 0$' /sys/class/misc/vgpu0/stats; then
    echo "VGPU-STEP-FAIL the ring never filled"; fail=1
  fi
  t vgpu_test hello
  if [ "$backend" = echo ]; then
    # device removal while a process is in the middle of its work (and the hung request of
    # `vgpu_test hang` is still on the ring): the process gets ENODEV, the kernel stays clean
    vgpu_test loop /dev/vgpu0 30 > /tmp/unbind.log 2>&1 &
    up=$!
    sleep 0.5
    t vgpu_test badid      # breaks one queue: the unbind below must clean it up
    echo virtio0 > /sys/bus/virtio/drivers/vgpu/unbind
    wait $up; urc=$?
    echo "VGPU-STEP unbind with a busy client: client exited rc=$urc ($(grep -c 'No such device' /tmp/unbind.log) ENODEV)"
    [ $urc != 0 ] && [ ! -e /dev/vgpu0 ] || { echo "VGPU-STEP-FAIL unbind"; fail=1; }
    echo virtio0 > /sys/bus/virtio/drivers/vgpu/bind
    t vgpu_test hello
    if rmmod vgpu && insmod /lib/modules/vgpu.ko poll=1; then
        echo "VGPU-STEP module reloaded with poll=1"
    else
        echo "VGPU-STEP-FAIL module reload (rmmod vgpu; insmod vgpu.ko poll=1)"; fail=1
    fi
    t vgpu_test bench /dev/vgpu0 500 4194304
    if rmmod vgpu; then echo "VGPU-STEP rmmod ok"; else echo "VGPU-STEP-FAIL rmmod vgpu"; fail=1; fi
  fi
  ;;
kill)
  # runs until the host kills the VM; with the daemon one process holds device memory
  if [ "$backend" = daemon ]; then
    vgpu_test hold /dev/vgpu0 16777216 1 > /tmp/hold.log 2>&1 &
    for i in $(seq 100); do grep -q '^HOLD' /tmp/hold.log && break; sleep 0.2; done
    cat /tmp/hold.log
  fi
  vgpu_test loop /dev/vgpu0 600 &
  sleep 0.5
  echo "VGPU-READY-TO-KILL"
  vgpu_test loop /dev/vgpu0 600
  fail=1
  ;;
*) echo "unknown vgpu_mode=$mode"; fail=1 ;;
esac
exit $fail

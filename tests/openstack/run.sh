#!/bin/bash
# OpenStack end-to-end test (CPU only, sim GPU): the real openstack-placement from PyPI (venv,
# noauth2, SQLite, loopback), a real libvirtd, a STAND-IN for nova-compute
# (tests/openstack/nova_standin.py: it makes Nova's Placement calls and defines the domain Nova
# would), the pool controller with its Placement sync, the agent (simulated GPUs) and
# `vgpuctl libvirt-watch`, which hot-plugs each instance's vGPU when its domain starts.
#
# Usage: tests/openstack/run.sh   (as root on Debian 12; after tests/vm/run.sh, whose kernel,
#                                  env.sh and vgpu.ko it reuses when present)
# Environment (all optional):
#   VGPU_BIN_DIR       where vgpu-controller, vgpuctl, vgpu-agent, vhost-gpu, libcuda.so are
#                      (default target/debug)
#   VGPU_VM_WORKDIR    the VM tests' scratch (default /var/tmp/vgpu-vm): env.sh, the kernel
#   VGPU_OS_WORKDIR    this test's scratch (default /var/tmp/vgpu-os); logs in its logs/
#   VGPU_OS_PORT_BASE  ports: +0 Placement, +1 controller, +2 slice server (default 18770)
# Prints PASS/FAIL per check and "N passed, M failed"; exits non-zero on any FAIL.
set -uo pipefail
T0=$(date +%s.%N)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${VGPU_BIN_DIR:-$ROOT/target/debug}
case $BIN in /*) ;; *) BIN=$ROOT/$BIN ;; esac
VMW=${VGPU_VM_WORKDIR:-/var/tmp/vgpu-vm}
W=${VGPU_OS_WORKDIR:-/var/tmp/vgpu-os}
LOG=$W/logs
PB=${VGPU_OS_PORT_BASE:-18770}
PL_URL=http://127.0.0.1:$PB
CTL_ADDR=127.0.0.1:$((PB + 1))
HOST=os-compute-1
V="virsh -q -c qemu:///system"
export VGPU_URL=http://$CTL_ADDR VGPU_TOKEN=os-admin-token
PASS=0 FAIL=0 FAILED=()
since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN{printf "%.1f", a-b}'; }
say() { printf '[openstack %6ss] %s\n' "$(since "$T0")" "$*"; }
ok() { PASS=$((PASS + 1)); say "PASS $*"; }
bad() { FAIL=$((FAIL + 1)); FAILED+=("$*"); say "FAIL $*"; }
die() { bad "$*"; finish; }
PIDS=() DOMS=()
cleanup() {
  for d in "${DOMS[@]}"; do $V destroy "$d" >/dev/null 2>&1; $V undefine "$d" >/dev/null 2>&1; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "${LIBVIRTD_PID:-}" ] && kill "$LIBVIRTD_PID" 2>/dev/null
  return 0
}
finish() {
  cleanup; trap - EXIT
  for f in "${FAILED[@]}"; do say "failed: $f"; done
  say "logs in $LOG"
  say "$PASS passed, $FAIL failed"
  [ "$FAIL" = 0 ]; exit $?
}
trap cleanup EXIT

mkdir -p "$W" "$LOG"; chmod 755 "$W"; rm -rf "${LOG:?}"/* "$W/ctl" "$W/agent" "$W/placement.db"

# ---------------------------------------------------------------- what it needs
for b in vgpu-controller vgpuctl vgpu-agent vhost-gpu libcuda.so; do
  [ -x "$BIN/$b" ] || [ -f "$BIN/$b" ] || die "missing $BIN/$b (build the workspace first)"
done
if [ ! -f "$VMW/env.sh" ]; then
  "$ROOT/guest/setup-host.sh" --libvirt --workdir "$VMW" > "$LOG/setup.log" 2>&1 || { cat "$LOG/setup.log"; die "host setup"; }
fi
# shellcheck disable=SC1091
source "$VMW/env.sh"
command -v jq >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq > /dev/null; } || die "jq"
command -v virsh >/dev/null && command -v libvirtd >/dev/null || die "libvirt is not installed (guest/setup-host.sh --libvirt)"
KMOD=$ROOT/guest-driver-shim/kmod
[ -f "$KMOD/vgpu.ko" ] || make -s -C "$KMOD" KDIR="$KHEADERS" > "$LOG/kmod-build.log" 2>&1 || { cat "$LOG/kmod-build.log"; die "vgpu.ko build"; }
gcc -O1 -Wall -o "$W/driver_api_e2e" "$ROOT/tests/programs/driver_api_e2e.c" -I"$ROOT/tests/programs" "$BIN/libcuda.so" \
  || die "driver_api_e2e build"
echo "/usr/share/vgpu/kernels.cubin --no-kernel-check" > "$W/e2e-args"
"$ROOT/guest/build-initramfs.sh" --kroot "$KROOT" --kabi "$KABI" --out "$W/initramfs.cpio.gz" --module "$KMOD/vgpu.ko" \
  --file "$W/driver_api_e2e:/usr/bin/driver_api_e2e" --file "$BIN/libcuda.so:/usr/lib/libcuda.so.1" \
  --file "$ROOT/tests/fixtures/kernels.cubin:/usr/share/vgpu/kernels.cubin" --file "$W/e2e-args:/etc/vgpu/e2e-args" \
  --script "$ROOT/tests/openstack/guest.sh" > "$LOG/initramfs.log" 2>&1 || { cat "$LOG/initramfs.log"; die "initramfs"; }
chmod 644 "$W/initramfs.cpio.gz" "$KERNEL"

# ---------------------------------------------------------------- Placement from PyPI
t=$(date +%s.%N)
PY=/usr/bin/python3
if ! $PY -c 'import ensurepip' 2>/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv > /dev/null
fi
rm -rf "$W/venv"
$PY -m venv "$W/venv" && "$W/venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir openstack-placement \
  > "$LOG/pip.log" 2>&1 || { tail -20 "$LOG/pip.log"; die "pip install openstack-placement"; }
PV=$("$W/venv/bin/pip" show openstack-placement 2>/dev/null | sed -n 's/^Version: //p')
mkdir -p "$W/conf"
cat > "$W/conf/placement.conf" <<CONF
[DEFAULT]
debug = false
[api]
auth_strategy = noauth2
[placement_database]
connection = sqlite:///$W/placement.db
CONF
"$W/venv/bin/placement-manage" --config-file "$W/conf/placement.conf" db sync > "$LOG/db-sync.log" 2>&1 \
  || { tail -20 "$LOG/db-sync.log"; die "placement-manage db sync"; }
"$W/venv/bin/python" "$ROOT/tests/openstack/placement_server.py" "$W/conf" 127.0.0.1 "$PB" > "$LOG/placement.log" 2>&1 &
PIDS+=($!)
pl() { curl -sf -H 'X-Auth-Token: admin' -H 'OpenStack-API-Version: placement 1.38' "$PL_URL$1"; }
for _ in $(seq 100); do pl / >/dev/null && break; sleep 0.2; done
pl / >/dev/null || { tail -20 "$LOG/placement.log"; die "placement did not start"; }
ok "openstack-placement $PV from PyPI (venv, noauth2, SQLite) serving on $PL_URL ($(since "$t") s with pip)"

NOVA="$PY $ROOT/tests/openstack/nova_standin.py --placement $PL_URL"
# the compute node, as nova-compute's resource tracker makes it
$NOVA node $HOST > "$LOG/node.json" || die "compute-node provider"
CN=$(jq -r .uuid "$LOG/node.json")

# ---------------------------------------------------------------- pool: controller, agent
start_controller() {
  RUST_LOG=info "$BIN/vgpu-controller" serve --listen "$CTL_ADDR" --state-dir "$W/ctl" \
    --admin-token "$VGPU_TOKEN" --agent-token os-agent-token --heartbeat-ms 500 --lease-ttl-ms 10000 \
    --placement-url "$PL_URL" --placement-interval-ms 1000 >> "$LOG/controller.log" 2>&1 &
  CTL_PID=$!; PIDS+=("$CTL_PID")
  for _ in $(seq 100); do curl -sf "$VGPU_URL/healthz" >/dev/null && return 0; sleep 0.1; done
  return 1
}
start_controller || die "controller did not start"
# umask 0: the workers' sockets must be connectable by libvirt's QEMU user (the packaging sets
# the socket's group and mode in production)
mkdir -p "$W/agent"; chmod 755 "$W/agent"
(umask 000; RUST_LOG=info exec "$BIN/vgpu-agent" --controller "$VGPU_URL" --token os-agent-token --name $HOST \
  --sim-gpus 2 --serve-port $((PB + 2)) --state-dir "$W/agent" --worker-bin "$BIN/vhost-gpu" \
  --metrics-addr 127.0.0.1:0) > "$LOG/agent.log" 2>&1 &
PIDS+=($!)
ctl() { "$BIN/vgpuctl" --json "$@"; }
GPU0=SIM-GPU-$HOST-0 GPU1=SIM-GPU-$HOST-1
rp_of() { pl "/resource_providers?name=$1" | jq -r '.resource_providers[0].uuid // empty'; }
for _ in $(seq 100); do
  RP0=$(rp_of "${HOST}_vgpu_$GPU0"); RP1=$(rp_of "${HOST}_vgpu_$GPU1")
  [ -n "$RP0" ] && [ -n "$RP1" ] && pl "/resource_providers/$RP1/inventories" | jq -e '.inventories.CUSTOM_VGPU_SM' >/dev/null && break
  sleep 0.2
done
RC_HALF=CUSTOM_VGPU_SIM_H200_1_2 RC_ONE=CUSTOM_VGPU_SIM_H200_1_1
if [ -n "$RP0" ] && [ -n "$RP1" ] \
  && [ "$(pl "/resource_providers/$RP0" | jq -r .parent_provider_uuid)" = "$CN" ] \
  && pl "/resource_providers/$RP0/inventories" | jq -e ".inventories.$RC_HALF.total == 2 and .inventories.CUSTOM_VGPU_SM.total == 132 and .inventories.CUSTOM_VGPU_MEMORY_MB.reserved == 0" >/dev/null \
  && pl "/resource_providers/$RP0/traits" | jq -e '.traits | index("CUSTOM_VGPU_MODEL_SIM_H200") and index("CUSTOM_VGPU_SLICE_HOMOGENEOUS")' >/dev/null; then
  ok "Placement sync: a child provider per GPU under compute node $HOST, classes $(pl "/resource_providers/$RP0/inventories" | jq -r '.inventories | keys | join(",")'), traits $(pl "/resource_providers/$RP0/traits" | jq -r '.traits | join(",")')"
else
  die "Placement sync: no child providers with inventories under $HOST (see $LOG/controller.log)"
fi

# ---------------------------------------------------------------- libvirt + the watcher
pgrep -x virtlogd >/dev/null || virtlogd -d
if ! pgrep -x libvirtd >/dev/null; then
  libvirtd -d; sleep 0.5; LIBVIRTD_PID=$(cat /run/libvirtd.pid 2>/dev/null || pgrep -x libvirtd)
fi
for _ in $(seq 100); do $V version >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/vgpuctl" libvirt-watch --host $HOST > "$LOG/watch.log" 2>&1 &
PIDS+=($!)
sleep 1

cat > "$W/flavor-half.json" <<F
{"name": "vgpu.half", "vcpus": 1, "ram": 512, "disk": 1,
 "extra_specs": {"resources:$RC_HALF": "1"}}
F
cat > "$W/flavor-sm.json" <<F
{"name": "vgpu.sm66", "vcpus": 1, "ram": 512, "disk": 1,
 "extra_specs": {"resources1:CUSTOM_VGPU_SM": "66", "resources1:CUSTOM_VGPU_MEMORY_MB": "72192"}}
F
cat > "$W/flavor-whole.json" <<F
{"name": "vgpu.whole", "vcpus": 1, "ram": 512, "disk": 1,
 "extra_specs": {"resources:$RC_ONE": "1"}}
F
alloc_of() { ctl allocations | jq -c --arg vm "$1" '[.[] | select(.vm == $vm)][0] // empty'; }
wait_alloc() {  # VM present|absent SECONDS
  for _ in $(seq $(($3 * 10))); do
    a=$(alloc_of "$1")
    if [ "$2" = present ] && [ -n "$a" ]; then return 0; fi
    if [ "$2" = absent ] && [ -z "$a" ]; then return 0; fi
    sleep 0.1
  done
  return 1
}
used_on() { pl "/resource_providers/$1/usages" | jq -r ".usages.$2 // 0"; }
wait_shutoff() { for _ in $(seq $(($2 * 10))); do [ "$($V domstate "$1" 2>/dev/null)" = "shut off" ] && return 0; sleep 0.1; done; return 1; }

# ---------------------------------------------------------------- 1. an instance from a flavor
I1=$($PY -c 'import uuid; print(uuid.uuid4())')
SER=$W/i1.serial; rm -f "$SER"
t=$(date +%s.%N)
DOMS+=(os-inst-1)
if $NOVA boot "$W/flavor-half.json" --host $HOST --uuid "$I1" --name os-inst-1 --kernel "$KERNEL" \
     --initrd "$W/initramfs.cpio.gz" --cmdline "console=ttyS0 panic=-1 quiet vgpu_backend=daemon" \
     --serial-log "$SER" > "$LOG/boot1.json" 2> "$LOG/boot1.err"; then
  wait_shutoff os-inst-1 240
  cp /var/log/libvirt/qemu/os-inst-1.log "$LOG/os-inst-1.qemu.log" 2>/dev/null
  cp "$SER" "$LOG/" 2>/dev/null
  RP=$(jq -r 'keys[]' <(jq .allocations "$LOG/boot1.json") | grep -v "$CN")
  a=$(alloc_of "$I1")
  hp=$(grep -o "to os-inst-1 .*hot-plug [0-9]* ms, [0-9]* ms from the request" "$LOG/watch.log" | sed 's/.*: //')
  if grep -aq 'E2E PASS' "$SER" && grep -aq 'VGPU-VERDICT PASS' "$SER" && [ -n "$a" ] \
     && [ "$(jq -r .gpu_uuid <<<"$a")" = "$([ "$RP" = "$RP0" ] && echo $GPU0 || echo $GPU1)" ]; then
    ok "instance $I1 (flavor vgpu.half): Placement claim on its GPU's provider, pool slice $(jq -r '.id+" "+.gpu_uuid+" 1/"+(.profile|tostring)' <<<"$a"), vGPU hot-plugged ($hp), guest ran driver_api_e2e through /dev/vgpu0 (E2E PASS) in $(since "$t") s"
  else
    grep -a 'VGPU-OS\|E2E\|VERDICT' "$SER" | sed 's/^/    guest| /'
    bad "instance from a flavor: slice '${a:-none}', watcher '$(tail -3 "$LOG/watch.log" | tr '\n' ' ')' (see $LOG)"
  fi
else
  cat "$LOG/boot1.err"; bad "stand-in boot failed"
fi

# ---------------------------------------------------------------- 2. delete frees the slice
$NOVA delete "$I1" > /dev/null
freed() { [ -z "$(alloc_of "$I1")" ] && [ "$(used_on "$RP0" $RC_HALF)" = 0 ] && [ "$(used_on "$RP1" $RC_HALF)" = 0 ] \
   && ! compgen -G "$W/agent/sockets/*.sock" > /dev/null; }
for _ in $(seq 150); do freed && break; sleep 0.1; done
if freed; then
  ok "instance deleted: its slice is gone from the pool, its allocation from Placement, the worker's socket removed"
else
  bad "instance deleted: pool '$(alloc_of "$I1")', Placement usage $(used_on "$RP0" $RC_HALF)/$(used_on "$RP1" $RC_HALF), sockets '$(ls "$W/agent/sockets/" 2>/dev/null | tr '\n' ' ')'"
fi

# ---------------------------------------------------------------- 3. plain libvirt: hot-plug into a running guest
SER=$W/plain.serial; rm -f "$SER"
"$ROOT/libvirt/vgpu-xml.sh" domain --name os-plain --no-device --root-ports 2 --kernel "$KERNEL" \
  --initrd "$W/initramfs.cpio.gz" --cmdline "console=ttyS0 panic=-1 quiet vgpu_backend=daemon vgpu_os_hold=1" --serial-log "$SER" > "$W/os-plain.xml"
DOMS+=(os-plain)
if ! { $V define "$W/os-plain.xml" > "$LOG/plain-define.log" 2>&1 && $V start os-plain >> "$LOG/plain-define.log" 2>&1; }; then
  cat "$LOG/plain-define.log"; bad "plain libvirt domain define/start"
else
for _ in $(seq 1200); do grep -aq 'VGPU-OS waiting' "$SER" 2>/dev/null && break; sleep 0.1; done
if "$BIN/vgpuctl" attach os-plain --profile 1/4 --host $HOST > "$LOG/attach.log" 2>&1; then
  for _ in $(seq 1800); do grep -aq 'VGPU-OS holding\|VGPU-VERDICT' "$SER" && break; sleep 0.1; done
  PUUID=$($V domuuid os-plain 2>/dev/null)
  # --keep: the slice stays; libvirt-watch releases it when the domain stops (below)
  if "$BIN/vgpuctl" detach os-plain --keep > "$LOG/detach.log" 2>&1 && [ -n "$(alloc_of "$PUUID")" ] \
     && wait_shutoff os-plain 60 && grep -aq 'VGPU-OS unplugged' "$SER" && grep -aq 'VGPU-VERDICT PASS' "$SER"; then
    ok "vgpuctl detach os-plain: device_del + chardev-remove ($(head -1 "$LOG/detach.log" | sed 's/.* in //')), the guest saw /dev/vgpu0 go, vgpu.ko unbound cleanly (no kernel trace)"
  else
    cat "$LOG/detach.log"; grep -a 'VGPU-OS\|VERDICT\|DMESG.*vgpu' "$SER" | tail -8 | sed 's/^/    guest| /'; bad "vgpuctl detach os-plain"
  fi
  if wait_alloc "$PUUID" absent 15; then
    ok "plain domain stopped: libvirt-watch released its slice"
  else
    bad "plain domain stopped: its slice is still in the pool"
  fi
  wait_shutoff os-plain 240; cp "$SER" "$LOG/" 2>/dev/null
  w=$(sed -n 's/.*waiting for .*uptime \([0-9.]*\)s.*/\1/p' "$SER" | tr -d '\r'); h=$(sed -n 's/.*hot-plugged .*uptime \([0-9.]*\)s.*/\1/p' "$SER" | tr -d '\r')
  if grep -aq 'E2E PASS' "$SER" && [ -n "$w" ] && [ -n "$h" ] && awk -v w="$w" -v h="$h" 'BEGIN{exit !(h > w)}'; then
    ok "vgpuctl attach os-plain --profile 1/4: hot-plug into the running guest ($(sed 's/.*: //' "$LOG/attach.log"); $(grep -c 'to os-plain .*hot-plug' "$LOG/watch.log") by libvirt-watch); vgpu.ko bound it at guest uptime ${h}s (waiting since ${w}s); E2E PASS"
  else
    grep -a 'VGPU-OS\|E2E\|VERDICT' "$SER" | sed 's/^/    guest| /'; bad "hot-plug into a running guest (see $LOG/plain.serial)"
  fi
else
  cat "$LOG/attach.log"; bad "vgpuctl attach"
fi
$V destroy os-plain > /dev/null 2>&1
fi
$V undefine os-plain > /dev/null 2>&1

# ---------------------------------------------------------------- 4. a slice made outside Nova is mirrored
ctl allocate --vm cli-vm --host $HOST --sm 10 --memory 1GiB > "$LOG/cli-alloc.json" || bad "vgpuctl allocate"
CLI=$(jq -r .id "$LOG/cli-alloc.json")
for _ in $(seq 100); do [ "$(( $(used_on "$RP0" CUSTOM_VGPU_SM) + $(used_on "$RP1" CUSTOM_VGPU_SM) ))" = 10 ] && break; sleep 0.1; done
m1=$(( $(used_on "$RP0" CUSTOM_VGPU_SM) + $(used_on "$RP1" CUSTOM_VGPU_SM) ))
ctl release "$CLI" > /dev/null
for _ in $(seq 100); do [ "$(( $(used_on "$RP0" CUSTOM_VGPU_SM) + $(used_on "$RP1" CUSTOM_VGPU_SM) ))" = 0 ] && break; sleep 0.1; done
m2=$(( $(used_on "$RP0" CUSTOM_VGPU_SM) + $(used_on "$RP1" CUSTOM_VGPU_SM) ))
[ "$m1" = 10 ] && [ "$m2" = 0 ] && ok "vgpuctl allocate (10 SMs) shows in Placement as a VGPU_POOL consumer, and is removed with the slice" \
  || bad "mirror of a slice made outside Nova: SMs in Placement $m1 while held, $m2 after release"

# ---------------------------------------------------------------- 5. a drained GPU leaves the candidates
cand() { $NOVA candidates "$1" | jq -r '[.candidates[] | keys[]] | unique | join(" ")'; }
before=$(cand "$W/flavor-sm.json")
ctl gpu-set $GPU1 --health unhealthy > /dev/null
for _ in $(seq 100); do c=$(cand "$W/flavor-sm.json"); grep -q "$RP1" <<<"$c" || break; sleep 0.1; done
after=$(cand "$W/flavor-sm.json")
if grep -q "$RP1" <<<"$before" && grep -q "$RP0" <<<"$before" && ! grep -q "$RP1" <<<"$after" && grep -q "$RP0" <<<"$after"; then
  ok "GPU $GPU1 marked unhealthy: its provider left the allocation candidates (reserved = total), $GPU0's stayed"
else
  bad "drained GPU: candidates before '$before', after '$after' (GPU1 provider $RP1)"
fi

# ---------------------------------------------------------------- 6. two instances race for the last slice
at=$(awk -v t="$(date +%s.%N)" 'BEGIN{printf "%.3f", t + 2}')
RA=$($PY -c 'import uuid; print(uuid.uuid4())') RB=$($PY -c 'import uuid; print(uuid.uuid4())')
$NOVA boot "$W/flavor-whole.json" --host $HOST --uuid "$RA" --no-domain --claim-at "$at" > "$LOG/raceA.json" 2> "$LOG/raceA.err" & pa=$!
$NOVA boot "$W/flavor-whole.json" --host $HOST --uuid "$RB" --no-domain --claim-at "$at" > "$LOG/raceB.json" 2> "$LOG/raceB.err" & pb=$!
wait $pa; ra=$?; wait $pb; rb=$?
if [ $ra = 0 ]; then WIN=$RA LOSE=$RB; else WIN=$RB LOSE=$RA; fi
sleep 3
if [ $((ra + rb)) = 3 ] && { [ $ra = 0 ] || [ $rb = 0 ]; } && wait_alloc "$WIN" present 10 && [ -z "$(alloc_of "$LOSE")" ] \
   && [ "$(ctl allocations | jq 'length')" = 1 ]; then
  ok "two instances raced for the last slice (1/1 of $GPU0): one claimed it and got the pool slice, the other got 'No valid host was found' ($(grep -c 'claim refused' "$LOG/raceA.err" "$LOG/raceB.err" | awk -F: '{s+=$2} END{print s}') claim refused by Placement)"
else
  bad "race for the last slice: exits $ra/$rb, pool '$(ctl allocations | jq -c '[.[].vm]')'"
fi
$NOVA delete "$WIN" > /dev/null; wait_alloc "$WIN" absent 15
ctl gpu-set $GPU1 --health healthy > /dev/null

# ---------------------------------------------------------------- 7. a controller restart reconciles
IK=$($PY -c 'import uuid; print(uuid.uuid4())') IN=$($PY -c 'import uuid; print(uuid.uuid4())')
$NOVA boot "$W/flavor-half.json" --host $HOST --uuid "$IK" --no-domain > /dev/null
wait_alloc "$IK" present 10 || bad "restart: the first instance never got its slice"
kill "$CTL_PID"; wait "$CTL_PID" 2>/dev/null
# while the controller is down: Nova deletes one instance and claims another
$NOVA delete "$IK" > /dev/null
$NOVA boot "$W/flavor-half.json" --host $HOST --uuid "$IN" --no-domain > /dev/null
start_controller || bad "controller restart"
if wait_alloc "$IK" absent 15 && wait_alloc "$IN" present 15; then
  ok "controller restart: the orphan slice (instance deleted meanwhile) released, the missing one (claimed meanwhile) created"
else
  bad "controller restart: pool '$(ctl allocations | jq -c '[.[].vm]')', expected $IN and not $IK"
fi
$NOVA delete "$IN" > /dev/null; wait_alloc "$IN" absent 15

# ---------------------------------------------------------------- 8. a host without a GPU: the sharing provider
H2=os-compute-2
$NOVA node $H2 > "$LOG/node2.json" || bad "second compute node"
CN2=$(jq -r .uuid "$LOG/node2.json")
mkdir -p "$W/agent2"; chmod 755 "$W/agent2"
(umask 000; RUST_LOG=info exec "$BIN/vgpu-agent" --controller "$VGPU_URL" --token os-agent-token --name $H2 \
  --sim-gpus 0 --serve-port 0 --state-dir "$W/agent2" --worker-bin "$BIN/vhost-gpu" \
  --metrics-addr 127.0.0.1:0) > "$LOG/agent2.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do pl "/resource_providers/$CN2/aggregates" | jq -e '.aggregates | length > 0' >/dev/null 2>&1 && break; sleep 0.2; done
cat > "$W/flavor-remote.json" <<F
{"name": "vgpu.remote10", "vcpus": 1, "ram": 512, "disk": 1,
 "extra_specs": {"resources1:CUSTOM_VGPU_SM": "10", "resources1:CUSTOM_VGPU_MEMORY_MB": "1024",
                 "trait1:CUSTOM_VGPU_REMOTE_CAPABLE": "required"}}
F
IR=$($PY -c 'import uuid; print(uuid.uuid4())')
if $NOVA boot "$W/flavor-remote.json" --host $H2 --uuid "$IR" --no-domain > "$LOG/boot-remote.json" 2> "$LOG/boot-remote.err" \
   && wait_alloc "$IR" present 15; then
  SRP=$(jq -r --arg cn "$CN2" '.allocations | keys[] | select(. != $cn)' "$LOG/boot-remote.json")
  a=$(alloc_of "$IR")
  for _ in $(seq 100); do [ "$(ctl get "$(jq -r .id <<<"$a")" | jq -r .state)" = running ] && break; sleep 0.1; done
  a=$(alloc_of "$IR")
  if [ "$(pl "/resource_providers/$SRP" | jq -r .name)" = "vgpu_remote_$(jq -r .gpu_uuid <<<"$a")" ] \
     && [ "$(jq -r '.remote' <<<"$a")" = true ] && [ "$(jq -r .vm_host <<<"$a")" = $H2 ] && [ "$(jq -r .state <<<"$a")" = running ]; then
    ok "instance on $H2 (no GPU): candidate through the sharing provider $(pl "/resource_providers/$SRP" | jq -r .name) (aggregate), remote slice on $(jq -r .gpu_host <<<"$a"), worker running on $H2"
  else
    bad "remote instance: provider $SRP, slice $a"
  fi
else
  cat "$LOG/boot-remote.err"; bad "instance on a host without a GPU: no claim or no slice (candidates: $($NOVA candidates "$W/flavor-remote.json" | jq -c .providers))"
fi
$NOVA delete "$IR" > /dev/null; wait_alloc "$IR" absent 15 || bad "remote instance deleted: slice still in the pool"

finish

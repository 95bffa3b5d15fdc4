#!/usr/bin/env bash
# Packaging test (CI, as root): the .deb packages installed in a clean Debian root, and the
# services started as their systemd units say.
#
#  1. scripts/build-debs.sh packages the binaries CI already built (target/debug, stripped of
#     debug information on the way; a release host builds them with `scripts/build-debs.sh`).
#  2. debootstrap (variant minbase) makes a clean bookworm root in a temporary folder; systemd
#     is installed there so `systemd-analyze` checks the units as installed. That root is a
#     chroot, not a booted system: systemd is not PID 1 there, so
#  3. each unit's ExecStart runs as systemd would start it, read from the installed unit file:
#     User=, Group=, SupplementaryGroups=, Environment=, EnvironmentFile=, UMask=,
#     StateDirectory=, RuntimeDirectory= (and their modes), CacheDirectory=, LimitMEMLOCK=, NoNewPrivileges= and an empty
#     CapabilityBoundingSet= (setpriv). What is not emulated (the cgroup's DevicePolicy and
#     DeviceAllow, ProtectSystem, PrivateTmp, the namespaces, SystemCallFilter) is checked by
#     `systemd-analyze verify` and `systemd-analyze security --offline` instead.
#  4. The operator's edits go into /etc/vgpu/*.toml (free ports, one simulated GPU: CI has
#     none), a slice is allocated with vgpuctl, and a non-root user in the sockets' group
#     (`qemu-ci`, in group kvm as Debian's libvirt-qemu is) runs a CUDA driver-API program
#     through the installed vgpu-guest's libcuda.so.1 on the worker's socket, and QEMU (when
#     qemu-system-x86_64 is on this host) connects to it as that user; a user outside the group
#     is refused.
#
# Prints PASS/FAIL lines and "packaging: N passed, M failed"; exits 1 on a failure.
#   VGPU_BIN_DIR       binaries to package (default target/debug)
#   VGPU_DEB_MIRROR    Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   VGPU_KEEP=1        keep the temporary folder (the root and the logs) for a look afterwards
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
bin_dir=${VGPU_BIN_DIR:-target/debug}
mirror=${VGPU_DEB_MIRROR:-http://deb.debian.org/debian}
t0=$(date +%s)
say() { echo "[packaging +$(($(date +%s) - t0))s] $*"; }
PASS=0 FAIL=0 FAILED=()
ok() { PASS=$((PASS + 1)); say "PASS $*"; }
bad() { FAIL=$((FAIL + 1)); FAILED+=("$*"); say "FAIL $*"; }
check() { # check "what" command...: PASS when the command succeeds
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
fatal() {
    bad "$*"
    finish
}

[ "$(id -u)" = 0 ] || { echo "tests/packaging/run.sh needs root (chroot, users, setpriv)"; exit 1; }
work=$(mktemp -d /tmp/vgpu-packaging.XXXXXX)
chmod 0755 "$work" # QEMU runs as a test user and reaches the sockets under it
root=$work/root
logs=$work/logs
mkdir -p "$logs"
PIDS=()

finished=0
finish() {
    [ "$finished" = 1 ] && return
    finished=1
    # The services get SIGTERM, as systemd stops them, and SIGKILL after 5 s.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for _ in $(seq 50); do
        local alive=0 p
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    say "services stopped"
    if [ "$FAIL" -gt 0 ]; then
        for f in "$logs"/*.log; do
            [ -s "$f" ] || continue
            echo "--- $f (last 30 lines)"
            tail -30 "$f"
        done
    fi
    mountpoint -q "$root/proc" && umount "$root/proc"
    if [ "${VGPU_KEEP:-0}" = 1 ]; then
        say "kept $work"
    elif ! mountpoint -q "$root/proc"; then
        rm -rf --one-file-system "$work"
    fi
    echo "packaging: $PASS passed, $FAIL failed (in $(($(date +%s) - t0)) s)"
    [ "$FAIL" -eq 0 ] || { printf '  failed: %s\n' "${FAILED[@]}"; exit 1; }
    exit 0
}
trap 'fatal "interrupted"' INT TERM
trap '[ "$finished" = 1 ] || { bad "the script stopped early"; finish; }' EXIT

# ------------------------------------------------------------------ 1. packages
debs=$work/debs
if scripts/build-debs.sh --bin-dir "$bin_dir" --out "$debs" >"$logs/build-debs.log" 2>&1; then
    ok "build-debs.sh: $(cd "$debs" && ls -1 ./*.deb | tr '\n' ' ')($(du -sh "$debs" | cut -f1))"
else
    fatal "build-debs.sh (see $logs/build-debs.log)"
fi
host_deb=$(ls "$debs"/vgpu-host_*.deb)
guest_deb=$(ls "$debs"/vgpu-guest_*.deb)
check "vgpu-host holds the programs, units and conffiles" bash -c "
    c=\$(dpkg-deb -c '$host_deb'); f=\$(dpkg-deb -f '$host_deb' Package)
    for p in usr/bin/vgpu-controller usr/bin/vgpuctl usr/bin/vgpu-agent usr/bin/vhost-gpu \
        lib/systemd/system/vgpu-controller.service lib/systemd/system/vgpu-agent.service \
        lib/systemd/system/vhost-gpu@.service etc/vgpu/controller.toml etc/vgpu/agent.toml \
        etc/vgpu/vhost-gpu.toml; do grep -q \" ./\$p\$\" <<<\"\$c\" || { echo missing \$p; exit 1; }; done
    dpkg-deb --ctrl-tarfile '$host_deb' | tar -xOf - ./conffiles | grep -qx /etc/vgpu/agent.toml"
check "vgpu-guest holds libcuda.so.1, vgpu-run and the DKMS source" bash -c "
    c=\$(dpkg-deb -c '$guest_deb')
    for p in usr/lib/vgpu/libcuda.so.1 usr/bin/vgpu-run usr/src/vgpu-[^/]*/vgpu.c usr/src/vgpu-[^/]*/dkms.conf \
        usr/src/vgpu-[^/]*/Kbuild usr/src/vgpu-[^/]*/Makefile; do grep -q \" ./\$p\" <<<\"\$c\" || { echo missing \$p; exit 1; }; done"

# The reference in docs/operations.md is the programs' --help, and every key the shipped files
# name (set, or commented out as an example) is one of their program's.
ref_now=$(scripts/config-reference.sh "$bin_dir")
ref_doc=$(sed -n '/<!-- config-reference:begin/,/<!-- config-reference:end/p' docs/operations.md)
if [ "$ref_now" = "$ref_doc" ]; then
    ok "docs/operations.md's configuration reference matches the programs' --help"
else
    bad "docs/operations.md's configuration reference differs from --help: run scripts/config-reference.sh --write"
    diff <(echo "$ref_doc") <(echo "$ref_now") | head -20
fi
unknown=
for f in controller agent vhost-gpu; do
    section=$(awk -v h="#### \`/etc/vgpu/$f.toml\`" 'index($0, h) == 1 { on = 1; next } /^#### / { on = 0 } on' <<<"$ref_now")
    for k in $(sed -n 's/^#\{0,1\} \{0,1\}\([a-z_][a-z0-9_]*\) = .*/\1/p' "deploy/config/$f.toml"); do
        grep -qF "| \`$k\` |" <<<"$section" || unknown="$unknown $f.toml:$k"
    done
done
if [ -z "$unknown" ]; then ok "every key of deploy/config/*.toml is a flag of its program"; else bad "keys no program has:$unknown"; fi

# ------------------------------------------------------------------ 2. a clean root
command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
s=$(date +%s)
debootstrap --variant=minbase --include=systemd bookworm "$root" "$mirror" >"$logs/debootstrap.log" 2>&1 ||
    fatal "debootstrap of bookworm (see $logs/debootstrap.log)"
mount -t proc proc "$root/proc"
ok "clean bookworm root (debootstrap minbase + systemd) in $(($(date +%s) - s)) s"
in_root() { chroot "$root" "$@"; }

cp "$host_deb" "$guest_deb" "$root/tmp/"
if in_root dpkg -i "/tmp/$(basename "$host_deb")" "/tmp/$(basename "$guest_deb")" >"$logs/dpkg.log" 2>&1; then
    ok "dpkg -i vgpu-host vgpu-guest in the clean root"
else
    fatal "dpkg -i (see $logs/dpkg.log)"
fi
check "postinst made the vgpu user (in group kvm) and the tokens (0640 root:vgpu)" bash -c "
    chroot '$root' id -nG vgpu | grep -qw kvm &&
    [ \"\$(chroot '$root' stat -c '%a %U %G' /etc/vgpu/controller.env)\" = '640 root vgpu' ] &&
    grep -q '^VGPU_ADMIN_TOKEN=[0-9a-f]\{64\}$' '$root/etc/vgpu/controller.env' &&
    [ \"\$(sed -n 's/^VGPU_AGENT_TOKEN=//p' '$root/etc/vgpu/agent.env')\" = \"\$(sed -n 's/^VGPU_AGENT_TOKEN=//p' '$root/etc/vgpu/controller.env')\" ]"
check "dkms.conf names the module its source builds" bash -c "
    cd '$root'/usr/src/vgpu-* && . ./dkms.conf && [ \"\$PACKAGE_NAME\" = vgpu ] &&
    [ -f \"\${BUILT_MODULE_NAME[0]}.c\" ] && grep -q \"obj-m := \${BUILT_MODULE_NAME[0]}.o\" Kbuild &&
    [ \"\$PACKAGE_VERSION\" = \"\$(dpkg-deb -f '$guest_deb' Version)\" ]"

# ------------------------------------------------------------------ 3. the units
units="vgpu-controller.service vgpu-agent.service vhost-gpu@ci.service"
# shellcheck disable=SC2086
out=$(in_root systemd-analyze verify $units 2>&1)
if [ -z "$out" ]; then ok "systemd-analyze verify: $units"; else bad "systemd-analyze verify: $out"; fi
for u in $units; do
    sec=$(in_root systemd-analyze security --offline=yes "$u" 2>&1)
    level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$sec")
    missing=
    for want in "User=/DynamicUser=" NoNewPrivileges= "ProtectSystem=" "PrivateTmp=" \
        "CapabilityBoundingSet=~CAP_SYS_ADMIN" "RestrictSUIDSGID=" "ProtectKernelModules="; do
        grep -q "✓ $want" <<<"$sec" || missing="$missing $want"
    done
    # DevicePolicy=closed: PrivateDevices=yes, or a device ACL (DeviceAllow= with a closed policy).
    grep -qE "✓ PrivateDevices=|DeviceAllow= +Service has a (strict |minimal )?device ACL" <<<"$sec" || missing="$missing DevicePolicy="
    if [ -z "$missing" ] && awk -v l="$level" 'BEGIN { exit !(l != "" && l <= 4.0) }'; then
        ok "systemd-analyze security $u: exposure $level, hardened (User, NoNewPrivileges, ProtectSystem, PrivateTmp, a device ACL, no capabilities)"
    else
        bad "systemd-analyze security $u: exposure ${level:-?}, not set:${missing:- none}"
    fi
done
check "the agent's units allow the NVIDIA devices only" bash -c "
    f='$root/lib/systemd/system/vgpu-agent.service'
    grep -qx 'DevicePolicy=closed' \$f && [ -z \"\$(grep '^DeviceAllow=' \$f | grep -v 'DeviceAllow=char-nvidia')\" ] &&
    grep -qx 'DevicePolicy=closed' '$root/lib/systemd/system/vhost-gpu@.service'"

unit_get() { sed -n "s/^$2=//p" "$1" | sed "s/%i/$3/g"; }
# start_unit UNIT [INSTANCE]: starts the unit's ExecStart as its unit file says; sets UNIT_PID.
start_unit() {
    local unit=$1 inst=${2:-} file
    if [ -n "$inst" ]; then file=$root/lib/systemd/system/${unit%@*}@.service; else file=$root/lib/systemd/system/$unit; fi
    local user group supp umask_ exec_start d mode
    user=$(unit_get "$file" User "$inst" | tail -1)
    group=$(unit_get "$file" Group "$inst" | tail -1)
    supp=$(unit_get "$file" SupplementaryGroups "$inst" | xargs | tr ' ' ',')
    umask_=$(unit_get "$file" UMask "$inst" | tail -1)
    exec_start=$(unit_get "$file" ExecStart "$inst" | tail -1)
    mode=$(unit_get "$file" StateDirectoryMode "$inst" | tail -1)
    for d in $(unit_get "$file" StateDirectory "$inst"); do
        mkdir -p "$root/var/lib/$(dirname "$d")"
        install -d -m "${mode:-0755}" "$root/var/lib/$d"
        in_root chown "$user:$group" "/var/lib/$d"
    done
    mode=$(unit_get "$file" RuntimeDirectoryMode "$inst" | tail -1)
    for d in $(unit_get "$file" RuntimeDirectory "$inst"); do
        mkdir -p "$root/run/$(dirname "$d")"
        install -d -m "${mode:-0755}" "$root/run/$d"
        in_root chown "$user:$group" "/run/$d"
    done
    for d in $(unit_get "$file" CacheDirectory "$inst"); do
        mkdir -p "$root/var/cache/$(dirname "$d")"
        install -d -m 0700 "$root/var/cache/$d"
        in_root chown "$user:$group" "/var/cache/$d"
    done
    local envs=() f line
    # shellcheck disable=SC2207
    envs+=($(unit_get "$file" Environment "$inst"))
    for f in $(unit_get "$file" EnvironmentFile "$inst"); do
        f=${f#-}
        [ -f "$root$f" ] || continue
        while IFS= read -r line; do [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && envs+=("$line"); done <"$root$f"
    done
    local priv=(--reuid="$user" --regid="$group")
    if [ -n "$supp" ]; then priv+=(--groups="$supp"); else priv+=(--clear-groups); fi
    [ "$(unit_get "$file" NoNewPrivileges "$inst" | tail -1)" = yes ] && priv+=(--no-new-privs)
    grep -qx 'CapabilityBoundingSet=' "$file" && priv+=(--bounding-set=-all --inh-caps=-all)
    # LimitMEMLOCK=infinity (where this host lets root raise it: a container may not).
    local limits=:
    [ "$(unit_get "$file" LimitMEMLOCK "$inst" | tail -1)" = infinity ] && limits="ulimit -l unlimited"
    echo "$unit: setpriv ${priv[*]} -- $exec_start" >"$logs/$unit.log"
    (
        $limits 2>/dev/null || echo "(LimitMEMLOCK=infinity not applied: this host does not allow raising it)"
        exec chroot "$root" setpriv "${priv[@]}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/ "${envs[@]}" \
            sh -c "umask ${umask_:-0022}; exec $exec_start"
    ) >>"$logs/$unit.log" 2>&1 &
    UNIT_PID=$!
    PIDS+=("$UNIT_PID")
}

# ------------------------------------------------------------------ 4. the operator's settings
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p=$1
    while ! port_free "$p"; do p=$((p + 1)); done
    echo "$p"
}
cport=$(free_port 18470)
sport=$(free_port 17470)
sed -i "s|^listen = .*|listen = \"127.0.0.1:$cport\"|" "$root/etc/vgpu/controller.toml"
sed -i -e "s|^controller = .*|controller = \"http://127.0.0.1:$cport\"|" \
    -e "s|^metrics_addr = .*|metrics_addr = \"127.0.0.1:0\"|" "$root/etc/vgpu/agent.toml"
printf '\n# CI: no GPU here\nsim_gpus = 1\nname = "ci-host"\nserve_port = %s\n' "$sport" >>"$root/etc/vgpu/agent.toml"

# A bad file stops a program with its line and key, exit 2, before it starts anything.
cp "$root/etc/vgpu/agent.toml" "$root/tmp/bad-agent.toml"
printf 'sim_gpus_without_driver = "many"\n' >>"$root/tmp/bad-agent.toml"
bad_line=$(wc -l <"$root/tmp/bad-agent.toml")
out=$(in_root vgpu-agent --config /tmp/bad-agent.toml 2>&1)
rc=$?
if [ $rc = 2 ] && grep -q "/tmp/bad-agent.toml:$bad_line: key \`sim_gpus_without_driver\`: invalid value" <<<"$out"; then
    ok "a bad agent.toml: exit 2, \"$out\""
else
    bad "a bad agent.toml: exit $rc, \"$out\""
fi

# ------------------------------------------------------------------ 5. the services
start_unit vgpu-controller.service
CPID=$UNIT_PID
admin=$(sed -n 's/^VGPU_ADMIN_TOKEN=//p' "$root/etc/vgpu/controller.env")
ctl() { in_root env VGPU_URL="http://127.0.0.1:$cport" VGPU_TOKEN="$admin" vgpuctl "$@"; }
wait_for() { # wait_for SECONDS command...
    local n=$(($1 * 10))
    shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
check "controller (vgpu-controller.service's ExecStart as user vgpu) answers on 127.0.0.1:$cport" wait_for 30 ctl hosts
vgpu_uid=$(in_root id -u vgpu)
check "controller runs as vgpu with no capabilities and no_new_privs" bash -c "
    s=/proc/$CPID/status; grep -q '^Uid:[[:space:]]*${vgpu_uid}[[:space:]]' \$s && grep -q '^CapEff:.*0000000000000000' \$s &&
    grep -q '^CapBnd:.*0000000000000000' \$s && grep -q '^NoNewPrivs:.*1' \$s"
access() { in_root stat -c '%a %U %G' "$1"; }
state_ok() { [ "$(access /var/lib/vgpu/controller)" = '700 vgpu vgpu' ] && [ -f "$root/var/lib/vgpu/controller/pool.db" ]; }
check "controller state in /var/lib/vgpu/controller (StateDirectory, 0700 vgpu; pool.db there)" wait_for 5 state_ok

start_unit vgpu-agent.service
APID=$UNIT_PID
registered() { ctl hosts | grep -q ci-host; }
check "agent (vgpu-agent.service) registered host ci-host with the controller" wait_for 30 registered
sockets_dir_ok() { [ "$(access /run/vgpu/sockets)" = '750 vgpu kvm' ]; }
check "the sockets' directory /run/vgpu/sockets is 0750 vgpu:kvm" sockets_dir_ok

alloc_out=$(ctl allocate --vm ci-vm --host ci-host --profile 1/2 2>&1)
say "vgpuctl allocate: $(head -3 <<<"$alloc_out" | tr '\n' ' ')"
sockets=$root/run/vgpu/sockets
check "the agent started a worker for the slice: its socket is in /run/vgpu/sockets" wait_for 30 bash -c "ls '$sockets'/*.sock"
sock=$(ls "$sockets"/*.sock 2>/dev/null | head -1)
alloc=$(basename "${sock:-none.sock}" .sock)
socket_ok() { [ "$(access "/run/vgpu/sockets/$alloc.sock")" = '660 vgpu kvm' ]; }
check "the worker's socket is 0660 vgpu:kvm (agent.toml's socket_mode and socket_group)" wait_for 5 socket_ok

# The users: QEMU's stand-in in group kvm, and one outside it.
in_root groupadd -f outsiders
in_root useradd --system --gid kvm --no-create-home --shell /usr/sbin/nologin qemu-ci
in_root useradd --system --gid outsiders --no-create-home --shell /usr/sbin/nologin outsider
mkdir -p "$root/opt/vgpu-ci"
cp tests/fixtures/kernels.cubin "$root/opt/vgpu-ci/"
if ${CC:-cc} -O1 -o "$root/opt/vgpu-ci/driver_api_e2e" tests/programs/driver_api_e2e.c -Itests/programs \
    -L"$root/usr/lib/vgpu" -l:libcuda.so.1 2>"$logs/cc.log"; then :; else bad "compiling driver_api_e2e.c (see $logs/cc.log)"; fi
as_user() { # as_user USER GROUP command...: in the root, that user only, no privileges
    local u=$1 g=$2
    shift 2
    chroot "$root" setpriv --reuid="$u" --regid="$g" --clear-groups --no-new-privs env -i PATH=/usr/bin:/bin \
        VGPU_LIVENESS_SECS=2 "$@"
}
guest_program() { # guest_program USER GROUP SOCKET: the installed vgpu-run and libcuda.so.1
    as_user "$1" "$2" vgpu-run --socket "$3" -- /opt/vgpu-ci/driver_api_e2e /opt/vgpu-ci/kernels.cubin --no-kernel-check
}
in_sock=/run/vgpu/sockets/$alloc.sock
out=$(guest_program qemu-ci kvm "$in_sock" 2>&1)
if grep -q "E2E PASS" <<<"$out"; then
    ok "user qemu-ci (group kvm, not root) runs a CUDA program on the worker's socket through vgpu-guest's libcuda.so.1: E2E PASS"
else
    bad "user qemu-ci on the worker's socket: $(grep -m3 -E '^FAIL|rror' <<<"$out" | tr '\n' ' ') $(tail -1 <<<"$out")"
fi
out=$(guest_program outsider outsiders "$in_sock" 2>&1)
if ! grep -q "E2E PASS" <<<"$out" && grep -qi "permission denied" <<<"$out"; then
    ok "user outsider (not in group kvm) is refused: $(grep -i -m1 'permission denied' <<<"$out" | cut -c1-160)"
else
    bad "user outsider on the worker's socket was not refused: $(tail -3 <<<"$out" | tr '\n' ' ')"
fi

# QEMU itself, as those users (from this host: the root has no QEMU), with a vhost-user device.
qemu_connect() { # qemu_connect USER GROUP SOCKET LOG: QEMU up and connected after 3 s
    local uid gid
    uid=$(in_root id -u "$1")
    gid=$(in_root getent group "$2" | cut -d: -f3)
    setpriv --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs \
        qemu-system-x86_64 -machine q35,memory-backend=mem -object memory-backend-memfd,id=mem,size=64M,share=on \
        -m 64 -accel tcg -nodefaults -no-user-config -display none -S \
        -chardev "socket,id=c,path=$3" -device vhost-user-gpio-pci,chardev=c >"$4" 2>&1 &
    local q=$!
    sleep 3
    if kill -0 "$q" 2>/dev/null; then
        kill "$q"
        wait "$q" 2>/dev/null
        return 0
    fi
    wait "$q" 2>/dev/null
    return 1
}
if command -v qemu-system-x86_64 >/dev/null; then
    if qemu_connect qemu-ci kvm "$sock" "$logs/qemu-ci.log"; then
        ok "QEMU as user qemu-ci (group kvm) connects to the worker's socket (vhost-user device realized, VM held with -S)"
    else
        bad "QEMU as user qemu-ci: $(tail -2 "$logs/qemu-ci.log" | tr '\n' ' ')"
    fi
    if ! qemu_connect outsider outsiders "$sock" "$logs/qemu-outsider.log" && grep -qi "permission denied" "$logs/qemu-outsider.log"; then
        ok "QEMU as user outsider is refused: $(grep -i -m1 'permission denied' "$logs/qemu-outsider.log" | cut -c1-160)"
    else
        bad "QEMU as user outsider was not refused: $(tail -2 "$logs/qemu-outsider.log" | tr '\n' ' ')"
    fi
else
    say "SKIP the QEMU connection: no qemu-system-x86_64 on this host (the CUDA program above is the socket's client)"
fi

# Release: the worker stops and its socket and status file go.
ctl release "$alloc" >"$logs/release.log" 2>&1
check "release $alloc: the worker's .sock and .status files are removed" wait_for 30 bash -c "
    [ ! -e '$sock' ] && [ ! -e '$sock.status' ]"

# A stale socket (an agent killed with its worker: the files stay) is removed at the next start.
ctl allocate --vm ci-vm2 --host ci-host --profile 1/2 >/dev/null 2>&1
if wait_for 30 bash -c "ls '$sockets'/*.sock"; then
    stale=$(ls "$sockets"/*.sock | head -1)
    kill -9 "$APID"
    wait "$APID" 2>/dev/null
    sleep 0.5
    ctl release "$(basename "$stale" .sock)" >/dev/null 2>&1
    [ -e "$stale" ] && say "agent killed (-9): $(basename "$stale") left behind"
    start_unit vgpu-agent.service
    APID=$UNIT_PID
    check "a restarted agent removes the stale $(basename "$stale") and its .status" wait_for 30 bash -c "
        [ ! -e '$stale' ] && [ ! -e '$stale.status' ]"
else
    bad "a second slice for the stale-socket check got no socket"
fi

# ------------------------------------------------------------------ 6. vhost-gpu@ci
printf 'gpu = "sim"\nsim_memory = "2G"\nmem_limit = "2G"\nsocket_group = "kvm"\nsocket_mode = "0660"\n' >"$root/etc/vgpu/vhost-gpu.d/ci.toml"
start_unit vhost-gpu@.service ci
vsock=/run/vgpu/vm-ci/vgpu.sock
vsock_ok() { [ "$(access "$vsock")" = '660 vgpu kvm' ]; }
check "vhost-gpu@ci.service serves $vsock, 0660 vgpu:kvm (from /etc/vgpu/vhost-gpu.d/ci.toml)" wait_for 30 vsock_ok
out=$(guest_program qemu-ci kvm "$vsock" 2>&1)
if grep -q "E2E PASS" <<<"$out"; then
    ok "user qemu-ci runs the CUDA program on vhost-gpu@ci's socket: E2E PASS"
else
    bad "user qemu-ci on vhost-gpu@ci: $(grep -m3 -E '^FAIL|rror' <<<"$out" | tr '\n' ' ') $(tail -1 <<<"$out")"
fi
# Its directory is open (0755): the socket's own mode refuses the outsider here.
out=$(guest_program outsider outsiders "$vsock" 2>&1)
if ! grep -q "E2E PASS" <<<"$out" && grep -qi "permission denied" <<<"$out"; then
    ok "user outsider is refused by vhost-gpu@ci's socket (0660, directory 0755): $(grep -i -m1 'permission denied' <<<"$out" | cut -c1-160)"
else
    bad "user outsider on vhost-gpu@ci's socket was not refused: $(tail -3 <<<"$out" | tr '\n' ' ')"
fi

finish

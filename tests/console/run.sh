#!/usr/bin/env bash
# The web console in headless Chromium against a running pool (CI step; docs/console.md).
# Starts `vgpu-controller up` with three simulated GPUs (the controller and one agent), then
# tests/console/drive.py drives the console through chromedriver: log in, allocate, the slice on
# the map, an error that stays until dismissed, 400 px without horizontal overflow, release, a
# project token's view. Saves the screenshot to docs/console.png (or $VGPU_CONSOLE_SHOT).
#   VGPU_BIN_DIR   where vgpu-controller, vgpu-agent and vhost-gpu are (default target/debug;
#                  they are built when missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=${VGPU_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}
shot=${VGPU_CONSOLE_SHOT:-$root/docs/console.png}

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
for b in vgpu-controller vgpu-agent vhost-gpu; do
    if [ ! -x "$bin/$b" ]; then
        cargo build -q -p vgpu-controller -p vgpu-agent -p vhost-gpu --bins
        break
    fi
done

tmp=$(mktemp -d /tmp/vgpu-console.XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# A free port for the agent's metrics endpoint (the controller picks its own: port 0).
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/vgpu-controller" up --sim-gpus 3 --listen 127.0.0.1:0 --addr-file "$tmp/addr" \
    --state-dir "$tmp/state" --agent-metrics-addr "127.0.0.1:$metrics_port" \
    --heartbeat-ms 500 --lease-ttl-ms 5000 >"$tmp/pool.log" 2>&1 &
pid=$!

for _ in $(seq 100); do
    [ -s "$tmp/addr" ] && [ -s "$tmp/state/admin.token" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/pool.log"; echo "FAIL: the pool did not start"; exit 1; }
    sleep 0.1
done
url="http://$(cat "$tmp/addr")"
token=$(cat "$tmp/state/admin.token")
# Wait for the agent to register its GPUs.
for _ in $(seq 100); do
    n=$(python3 - "$url" "$token" <<'EOF'
import json, sys, urllib.request
r = urllib.request.Request(sys.argv[1] + "/v1/gpus", headers={"Authorization": "Bearer " + sys.argv[2]})
try:
    print(len(json.load(urllib.request.urlopen(r, timeout=5))))
except Exception:
    print(0)
EOF
)
    [ "$n" -ge 3 ] && break
    sleep 0.2
done
if [ "$n" -lt 3 ]; then
    cat "$tmp/pool.log"
    echo "FAIL: the agent did not register three simulated GPUs"
    exit 1
fi

if python3 tests/console/drive.py --url "$url" --admin-token "$token" --screenshot "$shot"; then
    echo "PASS: console in headless Chromium"
else
    echo "--- pool log (last 40 lines)"
    tail -40 "$tmp/pool.log"
    echo "FAIL: console in headless Chromium"
    exit 1
fi

#!/usr/bin/env bash
# Metrics, alerts and the dashboard against a real Prometheus (Debian's), on the simulated GPU
# (CI, issue 15). Starts a controller and an agent (2 simulated GPUs, one slice allocated),
# Prometheus scraping both on loopback every second with the alert rules of
# deploy/prometheus/alerts.yml (their `for:` shortened to 3 s, evaluated every second), then:
#   - promtool check rules / check config / test rules (deploy/prometheus/alerts_test.yml)
#   - both targets up; a scrape of the agent under 50 ms with 100 idle connections open
#   - every target of every panel of deploy/grafana/vgpu-pool.json is a valid query, and every
#     panel returns at least one series (a target that only NVML can fill is empty here, and
#     its panel shows its "NVML absent" target instead: both are listed)
#   - the agent killed: up == 0 for it and VgpuHostDown pending, then firing
# One PASS/FAIL line per check; exits non-zero when one failed. About a minute.
#
# usage: tests/telemetry/run.sh [BIN_DIR]   (vgpu-controller, vgpu-agent, vhost-gpu; default
#        ${CARGO_TARGET_DIR:-target}/debug). Installs prometheus with apt-get when promtool is
#        missing (CI runs as root).
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(cd "${1:-${CARGO_TARGET_DIR:-$repo/target}/debug}" && pwd)
work=$(mktemp -d /tmp/vgpu-telemetry-ci.XXXXXX)
pids=()
failed=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
result() { # NAME OK DETAIL
    if [ "$2" = 0 ]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; failed+=("$1"); fi
}
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null \
    || ! command -v curl >/dev/null || ! command -v python3 >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus curl python3 >/dev/null
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- rules on their own
promtool check rules "$repo/deploy/prometheus/alerts.yml" >"$work/check.txt" 2>&1
result promtool_check_rules $? "$(grep -E "SUCCESS|FAILED" "$work/check.txt" | tr -s " " | head -1)"
(cd "$repo/deploy/prometheus" && promtool test rules alerts_test.yml) >"$work/test.txt" 2>&1
rc=$?; [ $rc = 0 ] || cat "$work/test.txt"
result promtool_test_rules $rc "$(tr -s ' \n' ' ' <"$work/test.txt")"

# --- controller and agent (sim)
admin=ci-admin-$$ agent_token=ci-agent-$$
RUST_LOG=warn "$bin/vgpu-controller" serve --listen 127.0.0.1:0 --admin-token "$admin" \
    --agent-token "$agent_token" --state-dir "$work/controller" --addr-file "$work/controller.addr" \
    --heartbeat-ms 500 --lease-ttl-ms 3000 >"$work/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -s "$work/controller.addr" ] && break; sleep 0.1; done
ctl=$(cat "$work/controller.addr")
RUST_LOG=info "$bin/vgpu-agent" --controller "http://$ctl" --token "$agent_token" --name ci-host \
    --state-dir "$work/agent" --worker-bin "$bin/vhost-gpu" --serve-port 0 --sim-gpus 2 \
    --metrics-addr 127.0.0.1:0 --metrics-addr-file "$work/agent.addr" >"$work/agent.log" 2>&1 &
agent=$!
pids+=($agent)
api() { curl -s -H "authorization: Bearer $admin" -H "content-type: application/json" "$@"; }
for _ in $(seq 200); do api "http://$ctl/v1/hosts" | grep -q '"alive":true' && break; sleep 0.1; done
alloc=$(api -X POST "http://$ctl/v1/allocations" -d '{"vm":"vm-ci","host":"ci-host","slice":{"profile":"1/2"}}')
sock=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("socket_path",""))' <<<"$alloc" 2>/dev/null)
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.1; done
agent_addr=$(cat "$work/agent.addr" 2>/dev/null)
[ -S "$sock" ]
result slice_running $? "allocation ${alloc:0:60}... worker socket ${sock:-none}"

# --- Prometheus: both jobs every second, the real rules with short `for:`
sed -E 's/^( *)for: .*/\1for: 3s/' "$repo/deploy/prometheus/alerts.yml" >"$work/alerts-ci.yml"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts-ci.yml]
scrape_configs:
  - job_name: vgpu-controller
    static_configs: [{targets: ["$ctl"]}]
  - job_name: vgpu-agent
    static_configs: [{targets: ["$agent_addr"]}]
EOF
promtool check config "$work/prometheus.yml" >"$work/config.txt" 2>&1
result promtool_check_config $? "$(grep -c SUCCESS "$work/config.txt") files checked"
port=$(free_port)
prom="http://127.0.0.1:$port"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
query() { # EXPR -> the number of series it returns now (-1: not a valid query)
    curl -s --data-urlencode "query=$1" "$prom/api/v1/query" | python3 -c '
import json, sys
try:
    r = json.load(sys.stdin)
    print(len(r["data"]["result"]) if r.get("status") == "success" else -1)
except Exception:
    print(-1)'
}
wait_for() { # SECONDS EXPR: until EXPR returns a series
    local end=$((SECONDS + $1))
    while [ $SECONDS -lt $end ]; do [ "$(query "$2")" -gt 0 ] 2>/dev/null && return 0; sleep 0.5; done
    return 1
}
wait_for 30 'up{job="vgpu-agent"} == 1 and on() up{job="vgpu-controller"} == 1'
result targets_up $? "Prometheus $(prometheus --version 2>&1 | head -1 | cut -d' ' -f1-3) scrapes the controller ($ctl) and the agent ($agent_addr)"

# --- a scrape with 100 idle connections open
python3 - "$agent_addr" >"$work/scrape.txt" 2>&1 <<'EOF'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
idle = [socket.create_connection((host, int(port))) for _ in range(100)]
time.sleep(0.2)
worst = 0.0
for _ in range(5):
    t = time.monotonic()
    c = socket.create_connection((host, int(port)))
    c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = b""
    while chunk := c.recv(65536):
        body += chunk
    worst = max(worst, time.monotonic() - t)
    assert body.startswith(b"HTTP/1.1 200") and b"DCGM_FI_DEV_FB_TOTAL" in body, body[:200]
print(f"worst of 5 scrapes {worst * 1000:.1f} ms with 100 idle connections open")
sys.exit(0 if worst < 0.05 else 1)
EOF
result scrape_under_50ms_with_100_idle $? "$(tail -1 "$work/scrape.txt")"

# --- every panel of the dashboard
sleep 3 # rate() and increase() need two samples
python3 - "$repo/deploy/grafana/vgpu-pool.json" "$prom" >"$work/panels.txt" 2>&1 <<'EOF'
import json, sys, urllib.parse, urllib.request
dash, prom = json.load(open(sys.argv[1])), sys.argv[2]
def series(expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        r = json.load(urllib.request.urlopen(url, timeout=5))
    except Exception as e:
        return -1, str(e)
    return (len(r["data"]["result"]), "") if r.get("status") == "success" else (-1, r.get("error"))
bad = 0
for p in dash["panels"]:
    if p["type"] == "row":
        continue
    total = 0
    for t in p["targets"]:
        n, err = series(t["expr"])
        print(f"  {p['title']!r} {t['refId']}: {n} series  {t['expr']}" + (f"  ERROR {err}" if n < 0 else ""))
        bad += n < 0
        total += max(n, 0)
    if total == 0:
        print(f"  panel {p['title']!r} has no data")
        bad += 1
n = sum(1 for p in dash["panels"] if p["type"] != "row")
print(f"{n} panels, {bad} without data or with an invalid query")
sys.exit(1 if bad else 0)
EOF
rc=$?
cat "$work/panels.txt"
result dashboard_panels_have_data $rc "$(tail -1 "$work/panels.txt")"

# --- host down: kill the agent
kill -9 "$agent"
t0=$SECONDS
wait_for 20 'up{job="vgpu-agent"} == 0'
result agent_up_0 $? "up{job=\"vgpu-agent\"} == 0 $((SECONDS - t0)) s after kill -9"
wait_for 20 'ALERTS{alertname="VgpuHostDown",alertstate="pending"} or ALERTS{alertname="VgpuHostDown",alertstate="firing"}'
result host_down_pending $? "VgpuHostDown pending or firing $((SECONDS - t0)) s after the kill"
wait_for 20 'ALERTS{alertname="VgpuHostDown",alertstate="firing",job="vgpu-agent"}'
result host_down_firing $? "VgpuHostDown firing for the agent's target $((SECONDS - t0)) s after the kill"
wait_for 20 'ALERTS{alertname="VgpuHostDown",alertstate="firing",host="ci-host",job="vgpu-controller"}'
result host_lost_firing $? "VgpuHostDown firing from vgpu_pool_host_up{host=\"ci-host\"} $((SECONDS - t0)) s after the kill (lease 3 s)"

if [ ${#failed[@]} -gt 0 ]; then
    echo "--- logs in $work"; tail -5 "$work"/*.log
    echo "telemetry: FAIL ${failed[*]}"
    exit 1
fi
rm -rf "$work"
echo "telemetry: all checks passed"

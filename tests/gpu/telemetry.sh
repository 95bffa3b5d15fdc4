#!/usr/bin/env bash
# The agent's GPU telemetry beside nvidia-smi's, on the GPU machine (issue 15): starts the
# controller and an agent on this host, allocates half of GPU 0, runs a program on that slice
# (sealed, through vgpu-run: tests/programs/gpu_busy.c, FOOTPRINT_MIB of device memory and
# vecAdd launches for BUSY_SECS), scrapes the agent's /metrics every second and samples
# `nvidia-smi --query-gpu=... -lms 1000` alongside, from a few seconds before the program to a
# few seconds after. Prints the two sources side by side (telemetry-table.txt) and a verdict
# last: FB_USED rises by about the footprint and falls back, GPU_UTIL > 0 while busy, the
# slice's own memory and GPU time, and the two sources agree within tolerance. ~35 s.
#
# usage: tests/gpu/telemetry.sh BIN_DIR   (vgpu-agent, vgpu-controller, vhost-gpu, libcuda.so,
#        vgpu-run; no Rust needed)
#        TELEMETRY_SIM=1 lets the agent simulate a GPU where there is no CUDA driver (a run off
#        the GPU machine): NVML is absent there, and the verdict says so and fails.
set -uo pipefail
source "$(dirname "$0")/setup.sh" /tmp/vgpu-telemetry-out /tmp/vgpu-telemetry "${1:-}"
footprint_mib=${FOOTPRINT_MIB:-4096}
busy_secs=${BUSY_SECS:-15}
admin=telemetry-admin-$$ agent_token=telemetry-agent-$$ host=telemetry-host
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
rm -rf "$work/state" "$work"/*.txt "$work"/*.addr
mkdir -p "$work/state"

gcc -O2 -o "$work/gpu_busy" "$repo/tests/programs/gpu_busy.c" -I"$repo/tests/programs" \
    -L"$bin" -lcuda || { echo "VERDICT: FAIL build of gpu_busy"; exit 1; }

RUST_LOG=info "$bin/vgpu-controller" serve --listen 127.0.0.1:0 --admin-token "$admin" \
    --agent-token "$agent_token" --state-dir "$work/state/controller" \
    --addr-file "$work/controller.addr" --heartbeat-ms 500 >"$out/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/controller.addr" ] && break; sleep 0.1; done
curl_api() { curl -s -H "authorization: Bearer $admin" -H "content-type: application/json" "$@"; }
ctl="http://$(cat "$work/controller.addr" 2>/dev/null)"
RUST_LOG=info "$bin/vgpu-agent" --controller "$ctl" --token "$agent_token" --name "$host" \
    --state-dir "$work/state/agent" --worker-bin "$bin/vhost-gpu" --serve-port 0 \
    --metrics-addr 127.0.0.1:0 --metrics-addr-file "$work/agent.addr" \
    ${TELEMETRY_SIM:+--sim-gpus-without-driver 1} >"$out/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl_api "$ctl/v1/hosts" | grep -q '"alive":true' && break
    sleep 0.2
done
metrics="http://$(cat "$work/agent.addr" 2>/dev/null)/metrics"
log "controller $ctl, agent metrics $metrics"

# The agent's figures every second: t, then what telemetry_table.py reads (the whole page).
scrape_loop() {
    while :; do
        { echo "@@ $(date +%s.%N)"; curl -s --max-time 1 "$metrics"; } >>"$work/agent-scrapes.txt"
        sleep 1
    done
}
scrape_loop &
pids+=($!)
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --id=0 --query-gpu=memory.used,utilization.gpu,power.draw,temperature.gpu,clocks.sm \
        --format=csv,noheader,nounits -lms 1000 2>&1 \
        | while IFS= read -r l; do echo "$(date +%s.%N), $l"; done >"$work/smi.txt" &
    pids+=($!)
else
    echo "nvidia-smi not found" >"$work/smi.txt"
fi
sleep 4

alloc=$(curl_api -X POST "$ctl/v1/allocations" \
    -d "{\"vm\":\"vm-telemetry\",\"host\":\"$host\",\"slice\":{\"profile\":\"1/2\"}}")
id=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("id",""))' <<<"$alloc" 2>/dev/null)
sock=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("socket_path",""))' <<<"$alloc" 2>/dev/null)
log "allocation: $alloc"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
echo "$(date +%s.%N) START" >"$work/events.txt"
(cd "$work" && sealed "$bin/vgpu-run" --socket "$sock" --lib-dir "$work/shim" -- \
    ./gpu_busy "$repo/tests/programs/kernels.ptx" "$footprint_mib" "$busy_secs") \
    2>"$work/program.err" | while IFS= read -r l; do echo "$(date +%s.%N) $l"; done >"$work/program.out"
echo "$(date +%s.%N) END rc=${PIPESTATUS[0]}" >>"$work/events.txt"
sleep 6
cleanup
trap - EXIT
cp "$work"/{program.out,program.err,events.txt,smi.txt} "$out/" 2>/dev/null
python3 "$here/telemetry_table.py" "$work" "$footprint_mib" "${id:-none}" | tee "$out/telemetry-table.txt"
status=${PIPESTATUS[0]}
tar czf "$out/telemetry-logs.tgz" -C "$work" agent-scrapes.txt smi.txt events.txt program.out \
    program.err -C "$out" agent.log controller.log 2>/dev/null
exit "$status"

#!/usr/bin/env python3
"""The table and verdict of tests/gpu/telemetry.sh: the agent's scrapes beside nvidia-smi's.

usage: telemetry_table.py WORK FOOTPRINT_MIB ALLOCATION_ID
WORK holds agent-scrapes.txt ("@@ <epoch>" then a /metrics page, once a second), smi.txt
("<epoch>, memory.used, utilization.gpu, power.draw, temperature.gpu, clocks.sm"),
events.txt (START / END rc=N) and program.out (lines prefixed by their epoch).
Prints the table, one line per check, and `VERDICT: PASS` or `VERDICT: FAIL <checks>` last;
exits 0 only on PASS.
"""
import re, statistics, sys

SERIES = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def labels(text):
    return dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', text or ""))


def scrapes(path, alloc):
    """[(t, {field: value})] with the GPU 0 DCGM fields and the slice's fields."""
    out, t, cur = [], None, {}
    want_gpu = {"DCGM_FI_DEV_FB_USED": "fb", "DCGM_FI_DEV_GPU_UTIL": "util",
                "DCGM_FI_DEV_POWER_USAGE": "power", "DCGM_FI_DEV_GPU_TEMP": "temp",
                "DCGM_FI_DEV_SM_CLOCK": "sm"}
    want_slice = {"hami_container_device_memory_bytes": "slice_fb",
                  "hami_container_device_utilization_ratio": "slice_util",
                  "vgpu_slice_gpu_seconds_total": "slice_gpu_s",
                  "hami_vgpu_memory_used_bytes": "ledger"}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return out
    for line in lines + ["@@ end"]:
        if line.startswith("@@ "):
            if t is not None:
                out.append((t, cur))
            t = None if line == "@@ end" else float(line[3:])
            cur = {}
            continue
        m = SERIES.match(line)
        if not m:
            continue
        name, lab, val = m.group(1), labels(m.group(2)), float(m.group(3))
        if name == "vgpu_agent_nvml_available":
            cur["nvml"] = val
        elif name in want_gpu and lab.get("gpu") == "0":
            cur[want_gpu[name]] = val
        elif name in want_slice and lab.get("allocation") == alloc:
            cur[want_slice[name]] = val
    return out


def smi(path):
    rows = []
    try:
        for line in open(path):
            f = [x.strip() for x in line.split(",")]
            try:
                rows.append((float(f[0]), {"fb": float(f[1]), "util": float(f[2]),
                                           "power": float(f[3]), "temp": float(f[4]),
                                           "sm": float(f[5])}))
            except (ValueError, IndexError):
                pass
    except OSError:
        pass
    return rows


def events(work):
    ev = {}
    for path in ("events.txt", "program.out"):
        try:
            for line in open(f"{work}/{path}"):
                t, _, rest = line.strip().partition(" ")
                key = rest.split(" ")[0]
                ev.setdefault(key, (float(t), rest))
        except (OSError, ValueError):
            pass
    return ev


def main():
    work, footprint, alloc = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    ag, sm, ev = scrapes(f"{work}/agent-scrapes.txt", alloc), smi(f"{work}/smi.txt"), events(work)
    start = ev.get("START", (None, ""))[0]
    end, end_text = ev.get("END", (None, ""))
    busy_from = ev.get("ALLOCATED", (start, ""))[0]
    busy_to = ev.get("BUSY", (end, ""))[0]

    def near(t):
        best = min(sm, key=lambda r: abs(r[0] - t), default=None)
        return best[1] if best and abs(best[0] - t) <= 0.6 else {}

    def f(v, scale=1.0, fmt="{:.0f}"):
        return "-" if v is None else fmt.format(v / scale)

    t0 = start or (ag[0][0] if ag else 0)
    cols = ("t_s", "FB_USED", "smi_mem", "GPU_UTIL", "smi_util", "POWER_W", "smi_W",
            "TEMP", "smi_T", "SM_MHZ", "smi_MHz", "slice_MiB", "slice_util", "slice_gpu_s",
            "ledger_MiB")
    print("agent (NVML through the agent's /metrics) beside nvidia-smi, GPU 0; FB in MiB")
    print(" ".join(f"{c:>10}" for c in cols))
    for t, a in ag:
        s = near(t)
        row = [f"{t - t0:.1f}", f(a.get("fb")), f(s.get("fb")), f(a.get("util")), f(s.get("util")),
               f(a.get("power"), fmt="{:.1f}"), f(s.get("power"), fmt="{:.1f}"), f(a.get("temp")),
               f(s.get("temp")), f(a.get("sm")), f(s.get("sm")), f(a.get("slice_fb"), 1 << 20),
               f(a.get("slice_util")), f(a.get("slice_gpu_s"), fmt="{:.2f}"),
               f(a.get("ledger"), 1 << 20)]
        print(" ".join(f"{c:>10}" for c in row))
    for k in ("START", "ALLOCATED", "BUSY", "FREED", "END"):
        if k in ev:
            print(f"event {k} at t={ev[k][0] - t0:.1f} s: {ev[k][1]}")

    checks = []

    def check(name, ok, detail):
        checks.append((name, ok))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")

    nvml = any(a.get("nvml") == 1 for _, a in ag)
    check("nvml", nvml, "NVML loaded by the agent" if nvml else
          "NVML absent: the agent exports no FB_USED/GPU_UTIL here (see agent.log)")
    check("program", end_text == "END rc=0" and "ALLOCATED" in ev,
          f"{ev.get('ALLOCATED', (0, 'no ALLOCATED line'))[1]}; {ev.get('BUSY', (0, 'no BUSY line'))[1]}; {end_text or 'no END'}")
    if start is None or busy_from is None or busy_to is None:
        check("windows", False, "no START/END in events.txt")
    else:
        before = [a["fb"] for t, a in ag if t < start and "fb" in a]
        during = [a for t, a in ag if busy_from <= t <= busy_to]
        after = [a["fb"] for t, a in ag if end is not None and t > end + 3 and "fb" in a]
        base = statistics.median(before) if before else None
        peak = max((a["fb"] for a in during if "fb" in a), default=None)
        rise = None if base is None or peak is None else peak - base
        check("fb_rises", rise is not None and footprint <= rise <= footprint + 2048,
              f"baseline {f(base)} MiB, peak {f(peak)} MiB while busy: rise {f(rise)} MiB for a "
              f"{footprint:.0f} MiB footprint (allowed: footprint to footprint + 2048, the worker's context)")
        last = statistics.median(after) if after else None
        check("fb_falls_back", base is not None and last is not None and last - base <= 1024,
              f"{f(last)} MiB after the program (baseline {f(base)}; allowed +1024)")
        utils = [a["util"] for a in during if "util" in a]
        busy_n = sum(1 for u in utils if u > 0)
        check("gpu_util_moves", bool(utils) and busy_n * 2 >= len(utils),
              f"GPU_UTIL > 0 in {busy_n} of {len(utils)} busy samples (max {f(max(utils, default=None))}%)")
        slice_fb = max((a.get("slice_fb", 0) for a in during), default=0) / (1 << 20)
        check("slice_memory", slice_fb >= footprint,
              f"the slice's processes held up to {slice_fb:.0f} MiB (NVML, per process)")
        gpu_s = max((a.get("slice_gpu_s", 0) for _, a in ag), default=0)
        secs = busy_to - busy_from
        check("slice_gpu_time", gpu_s >= 0.25 * secs,
              f"vgpu_slice_gpu_seconds_total {gpu_s:.2f} s for {secs:.1f} s busy (needs >= 25%)")
        pairs = [(a, near(t)) for t, a in ag if start - 3 <= t <= (end or t) + 5]
        for key, tol, unit in (("fb", 256, "MiB"), ("util", 15, "%"), ("power", None, "W"),
                               ("temp", 3, "C"), ("sm", 100, "MHz")):
            d = [abs(a[key] - s[key]) for a, s in pairs if key in a and key in s]
            if key == "power":
                ref = statistics.median([s["power"] for _, s in pairs if "power" in s] or [0])
                tol = max(25.0, 0.10 * ref)
            med = statistics.median(d) if d else None
            check(f"agrees_{key}", med is not None and med <= tol,
                  f"median |agent - nvidia-smi| {f(med, fmt='{:.1f}')} {unit} over {len(d)} pairs (tolerance {tol:.0f})")
    failed = [n for n, ok in checks if not ok]
    print("VERDICT: PASS" if not failed else "VERDICT: FAIL " + " ".join(failed))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

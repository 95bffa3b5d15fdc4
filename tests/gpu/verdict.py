#!/usr/bin/env python3
"""The comparison tables and verdicts of the GPU suites (tests/gpu/run.sh, tests/gpu/slices.sh).

Each prints its table, then one line `VERDICT: PASS ...` or `VERDICT: FAIL ...` naming every
failing case, and exits 0 only on PASS. The expected cases come from the calling script (a
literal list there), never from what happened to build or run: a case with no output is
MISSING and fails the verdict, as does a case that differs, exits non-zero, or was skipped.

usage:
  verdict.py run WORK DRIVER -- NAME...       the program suite: WORK holds NAME.native.out and
                                              NAME.vgpu.out (and NAME.missing: why it did not run)
  verdict.py slices RESULTS -- MODE... -- CONFIG... -- KIND...
                                              the slice suite's rows (see slices.sh)
  verdict.py --selftest                       the verdict logic on fake inputs
"""
import fnmatch, os, re, sys, tempfile

# ---------------------------------------------------------------- the program suite

TOL = {"*loss*": 1e-5}  # RESULT keys compared numerically: |native - vgpu| <= tolerance
COMPARED = ("RESULT ", "copy ", "E2E ", "GRAPH ", "PASS")


def parse(path):
    """Compared lines (RESULT/copy/E2E/GRAPH/PASS, then the DEVPRINTF lines sorted), TIME
    metrics in order, rc, wall time (ms) measured by run_pair."""
    res, dev, tim, rc, wall = [], [], {}, "missing", None
    if not os.path.exists(path):
        return res, tim, rc, wall
    rc = "?"
    for line in open(path, errors="replace"):
        line = line.strip()
        if line.startswith(COMPARED):
            res.append(re.sub(r"\([0-9.]+ ms\)", "", line).strip())
        elif line.startswith("DEVPRINTF "):
            dev.append(line)
        elif line.startswith("TIME ") and "=" in line:
            k, v = line[5:].split("=", 1)
            try:
                tim[k.strip()] = float(v)
            except ValueError:
                pass
        elif line.startswith("rc="):
            rc = line[3:]
        elif line.startswith("wall_ms="):
            try:
                wall = float(line[8:])
            except ValueError:
                pass
    return res + sorted(dev), tim, rc, wall


def tolerance(line):
    if not line.startswith("RESULT ") or "=" not in line:
        return None
    key = line[7:].split("=", 1)[0]
    for pat, tol in TOL.items():
        if fnmatch.fnmatch(key, pat):
            return tol
    return None


def compare(rn, rv):
    """(same, max abs difference over tolerance-compared keys or None, first differing pair)"""
    maxdiff, first = None, None
    for i in range(max(len(rn), len(rv))):
        a = rn[i] if i < len(rn) else "<none>"
        b = rv[i] if i < len(rv) else "<none>"
        if a == b:
            if tolerance(a) is not None:
                maxdiff = max(maxdiff or 0.0, 0.0)
            continue
        tol = tolerance(a)
        if tol is not None and a.split("=", 1)[0] == b.split("=", 1)[0]:
            try:
                d = abs(float(a.split("=", 1)[1]) - float(b.split("=", 1)[1]))
                maxdiff = max(maxdiff or 0.0, d)
                if d <= tol:
                    continue
            except ValueError:
                pass
        if first is None:
            first = (i, a, b)
    return first is None, maxdiff, first


def base(n):
    return re.sub(r"_(static|shared)$", "", n)


def headline_time(n, tim, wall):
    """The program's own `<prog>_ms`, else its first TIME metric, else run_pair's wall time."""
    for k in (f"{n}_ms", f"{base(n)}_ms"):
        if k in tim:
            return tim[k], ""
    if tim:
        return next(iter(tim.values())), ""
    return wall, "w"


def short(rc, res):
    nres = sum(1 for l in res if l.startswith("RESULT "))
    if nres or not res:
        return f"rc={rc} {nres} results"
    return f"rc={rc} {res[0]}"[:20]


def run_table(work, driver, expected, out=sys.stdout):
    """Prints the program suite's table and verdict; returns the exit status."""
    p = lambda *a: print(*a, file=out)
    found = sorted(os.path.basename(f)[: -len(".native.out")]
                   for f in os.listdir(work) if f.endswith(".native.out"))
    unexpected = [n for n in found if n not in expected]
    p(f"vGPU vs native on {driver}; vGPU side sealed (private mount ns, NVIDIA libs and /dev/nvidia* hidden)")
    p(f"compared: RESULT/copy/E2E/GRAPH/PASS lines in order, then DEVPRINTF lines sorted; "
      f"RESULT keys matching {', '.join(f'{k} (|diff| <= {t:g})' for k, t in TOL.items())} numerically")
    rows, final, failed = [], [], []
    for n in list(expected) + unexpected:
        why_path = f"{work}/{n}.missing"
        if n in unexpected:
            verdict = "UNEXPECTED"
        elif not os.path.exists(f"{work}/{n}.native.out") and not os.path.exists(f"{work}/{n}.vgpu.out"):
            why = open(why_path, errors="replace").read().strip() if os.path.exists(why_path) else "did not run"
            verdict = "MISSING"
            failed.append(f"{n} (MISSING: {why})")
            p(f"-- {n}: MISSING ({why})")
            final.append((n, "-", "-", verdict, None, "", None, "", why))
            continue
        else:
            verdict = None
        rn, tn, cn, wn = parse(f"{work}/{n}.native.out")
        rv, tv, cv, wv = parse(f"{work}/{n}.vgpu.out")
        same, maxdiff, first = compare(rn, rv)
        ok = same and bool(rn) and cn == "0" and cv == "0"
        if verdict is None:
            verdict = "identical" if ok else "DIFFER"
        if verdict != "identical":
            why = ("not in the script's expected list" if verdict == "UNEXPECTED"
                   else f"native rc={cn}, vgpu rc={cv}, {len(rn)} vs {len(rv)} compared lines")
            failed.append(f"{n} ({verdict}: {why})")
            p(f"-- {n}: {verdict} ({why})")
            if first:
                i, a, b = first
                p(f"   first difference at line {i + 1}:\n   native: {a}\n   vgpu:   {b}")
            for side in ("native", "vgpu"):
                err = f"{work}/{n}.{side}.err"
                if os.path.exists(err):
                    fails = [l.rstrip() for l in open(err, errors="replace") if l.startswith("FAIL")][:2]
                    for l in fails:
                        p(f"   {side} stderr: {l[:200]}")
        for k in tn:
            if k in tv:
                rows.append((n, k, tn[k], tv[k]))
        a, fa = headline_time(n, tn, wn)
        b, fb = headline_time(n, tv, wv)
        note = f"loss max|diff| {maxdiff:.2e}" if maxdiff is not None else ""
        final.append((n, short(cn, rn), short(cv, rv), verdict, a, fa, b, fb, note))

    def fmt(t, flag):
        return "-" if t is None else f"{t:.3f}{flag}"

    p()
    p(f"{'program':<26} {'metric':<34} {'native':>12} {'vgpu':>12} {'vgpu/native':>12}")
    for n, k, a, b in rows:
        r = b / a if a else float("nan")
        p(f"{n:<26} {k:<34} {a:>12.3f} {b:>12.3f} {r:>12.3f}")
    p()
    nexp = len(expected)
    p(f"{sum(1 for f in final if f[3] == 'identical')} of {nexp} expected programs identical; time: the "
      f"program's <prog>_ms or first TIME metric in ms ('w': wall time of the run, the program printed none)")
    p(f"{'program':<26} {'native':<20} {'vgpu':<20} {'results':<10} {'native ms':>12} {'vgpu ms':>12} {'ratio':>8}  note")
    for n, sn, sv, same, a, fa, b, fb, note in final:
        r = f"{b / a:.3f}" if a and b is not None and fa == fb else "-"
        p(f"{n:<26} {sn:<20} {sv:<20} {same:<10} {fmt(a, fa):>12} {fmt(b, fb):>12} {r:>8}  {note}".rstrip())
    return verdict_line(failed, f"all {nexp} expected programs identical", out)


def verdict_line(failed, good, out):
    if failed:
        print(f"VERDICT: FAIL ({len(failed)} failing: {'; '.join(failed)})", file=out)
        return 1
    print(f"VERDICT: PASS ({good})", file=out)
    return 0

# ---------------------------------------------------------------- the slice suite
#
# slices.sh writes one row per case ("-" for a value the run did not print):
#   ctxcost RC OVERHEAD_MIB GRANULE_KIB
#   native KIND RC RATE
#   case MODE CONFIG KIND vmI ASKED RC RATE SEEN      (CONFIG: SM counts joined by '_')
#   isolation MODE LONG_RC FAULT_RC LONGJOB_OK FAULT_ERROR
#   quota RC TOTAL R_LIMIT_MINUS_4096 R_ONE_BYTE_OVER R_AT_LIMIT R_AFTER_FULL
#   unavailable MODE WHY...


def fnum(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def slices_table(results, modes, configs, kinds, quota_bytes=1 << 30, out=sys.stdout):
    """Prints the slice suite's table and verdict; returns the exit status."""
    p = lambda *a: print(*a, file=out)
    rows = [l.split() for l in open(results) if l.strip()]
    by = {}
    for r in rows:
        if r[0] == "case" and len(r) >= 9:
            by[("case", r[1], r[2], r[3], r[4])] = r
        elif r[0] == "native" and len(r) >= 4:
            by[("native", r[1])] = r
        elif r[0] == "isolation" and len(r) >= 6:
            by[("isolation", r[1])] = r
        elif r[0] in ("quota", "ctxcost"):
            by[(r[0],)] = r
        elif r[0] == "unavailable" and len(r) >= 2:
            by[("unavailable", r[1])] = r
    failed = []
    native = {}
    for kind in kinds:
        r = by.get(("native", kind))
        rate = fnum(r[3]) if r else None
        if r is None:
            failed.append(f"native {kind} (MISSING)")
        elif r[2] != "0" or not rate or rate <= 0:
            failed.append(f"native {kind} (rc={r[2]}, rate {r[3]})")
        else:
            native[kind] = rate
    p("SM slices: each VM's throughput as a fraction of one native process alone")
    p(f"{'mode':<6} {'slices (SMs)':<14} {'kernel':<6} {'vm':<4} {'asked SMs':>9} {'sees SMs':>8} "
      f"{'rate/s':>9} {'fraction':>8} {'share':>6}  case")
    for mode in modes:
        if ("unavailable", mode) in by:
            failed.append(f"{mode} (SKIPPED: {' '.join(by[('unavailable', mode)][2:]) or 'unavailable'})")
            p(f"{mode:<6} all cases SKIPPED: {' '.join(by[('unavailable', mode)][2:])}")
            continue
        for cfg in configs:
            sms = cfg.split()
            for kind in kinds:
                for i, asked in enumerate(sms):
                    key = ("case", mode, "_".join(sms), kind, f"vm{i}")
                    name = f"{mode} {'_'.join(sms)} {kind} vm{i}"
                    r = by.get(key)
                    if r is None:
                        failed.append(f"{name} (MISSING)")
                        p(f"{mode:<6} {'_'.join(sms):<14} {kind:<6} vm{i:<2} {asked:>9} {'-':>8} {'-':>9} {'-':>8} {'-':>6}  MISSING")
                        continue
                    rc, rate, seen = r[6], fnum(r[7]), fnum(r[8])
                    bad = []
                    if rc != "0":
                        bad.append(f"rc={rc}")
                    if not rate or rate <= 0:
                        bad.append("no rate")
                    if seen is None:
                        bad.append("no SM count")
                    elif mode == "green" and asked != "whole" and seen < int(asked):
                        bad.append(f"sees {seen:.0f} SMs of {asked} asked")
                    if bad:
                        failed.append(f"{name} ({', '.join(bad)})")
                    frac = rate / native[kind] if rate and kind in native else float("nan")
                    share = int(asked) / 132 if asked != "whole" else 1.0
                    p(f"{mode:<6} {'_'.join(sms):<14} {kind:<6} vm{i:<2} {asked:>9} {r[8]:>8} {r[7]:>9} "
                      f"{frac:>8.3f} {share:>6.3f}  {'FAIL: ' + ', '.join(bad) if bad else 'ok'}")
        r = by.get(("isolation", mode))
        if r is None:
            failed.append(f"{mode} isolation (MISSING)")
            p(f"{mode} isolation: MISSING")
        else:
            long_rc, fault_rc, long_ok, fault = r[2:6]
            bad = []
            if fault_rc != "0" or fault in ("-", "?", "CUDA_SUCCESS"):
                bad.append(f"the faulting VM did not report a fault (rc={fault_rc}, {fault})")
            # MPS shares faults between clients on this driver (docs/slices.md): there the
            # long job's fate is recorded, not required.
            if mode != "mps" and (long_rc != "0" or long_ok != "yes"):
                bad.append(f"the other VM's job was disturbed (rc={long_rc}, runs ok: {long_ok})")
            if bad:
                failed.append(f"{mode} isolation ({'; '.join(bad)})")
            note = " (MPS: no fault isolation expected)" if mode == "mps" else ""
            p(f"{mode} isolation: long job rc={long_rc} runs_ok={long_ok}; fault rc={fault_rc} {fault}{note}"
              f"  {'FAIL: ' + '; '.join(bad) if bad else 'ok'}")
    r = by.get(("quota",))
    if r is None or len(r) < 7:
        failed.append("quota (MISSING)")
        p("quota: MISSING")
    else:
        rc, total, r1, r2, r3, r4 = r[1:7]
        want = (str(quota_bytes), "0", "2", "0", "2")
        ok = rc == "0" and (total, r1, r2, r3, r4) == want
        if not ok:
            failed.append(f"quota (rc={rc}, total/limit-4096/one over/at limit/after full = "
                          f"{total}/{r1}/{r2}/{r3}/{r4}, want {'/'.join(want)})")
        p(f"quota {quota_bytes} bytes: rc={rc} total={total} limit-4096 -> {r1}, 4097 more -> {r2}, "
          f"4096 more (at the limit) -> {r3}, 1 more -> {r4}  {'ok' if ok else 'FAIL'}")
    r = by.get(("ctxcost",))
    if r is None or r[1] != "0":
        failed.append(f"ctxcost ({'MISSING' if r is None else 'rc=' + r[1]})")
    else:
        p(f"context overhead {r[2]} MiB, allocation granule {r[3]} KiB")
    p("native rates:", native)
    ncases = sum(len(c.split()) for c in configs) * len(kinds) * len(modes)
    return verdict_line(failed, f"{ncases} SM-share cases, {len(modes)} isolation cases, quota and native runs", out)

# ---------------------------------------------------------------- self-test


def selftest():
    import io
    fails = []

    def check(what, got, want, text):
        if got != want:
            fails.append(f"{what}: exit {got}, want {want}\n{text}")
        elif want and "VERDICT: FAIL" not in text or not want and "VERDICT: PASS" not in text:
            fails.append(f"{what}: no verdict line\n{text}")

    def program_case(what, files, expected, want, must=()):
        with tempfile.TemporaryDirectory() as d:
            for name, text in files.items():
                with open(os.path.join(d, name), "w") as f:
                    f.write(text)
            buf = io.StringIO()
            got = run_table(d, "test", expected, out=buf)
            text = buf.getvalue()
            check(what, got, want, text)
            for m in must:
                if m not in text:
                    fails.append(f"{what}: {m!r} not in\n{text}")

    good = "RESULT bw_pinned_4K_fnv=0123 ok\nTIME bw_ms=1.0\nrc=0\nwall_ms=5\n"
    both = lambda n, a, b=None: {f"{n}.native.out": a, f"{n}.vgpu.out": a if b is None else b}
    program_case("all identical", {**both("a", good), **both("b", good)}, ["a", "b"], 0)
    program_case("a hash differs", {**both("a", good), **both("b", good, good.replace("0123", "0124"))},
                 ["a", "b"], 1, ["b (DIFFER", "VERDICT: FAIL (1 failing: b"])
    program_case("vgpu side failed", both("a", good, good.replace("rc=0", "rc=1")), ["a"], 1, ["a (DIFFER"])
    program_case("both sides failed alike", both("a", good.replace("rc=0", "rc=1")), ["a"], 1)
    program_case("no compared lines", both("a", "TIME x=1\nrc=0\n"), ["a"], 1)
    program_case("not built", {**both("a", good), "b.missing": "not built (build.sh failed)\n"},
                 ["a", "b"], 1, ["b (MISSING: not built"])
    program_case("never ran", both("a", good), ["a", "b"], 1, ["b (MISSING: did not run"])
    program_case("not in the list", {**both("a", good), **both("c", good)}, ["a"], 1, ["c (UNEXPECTED"])
    program_case("loss within tolerance", both("t", "RESULT loss=1.000001\nrc=0\n", "RESULT loss=1.000002\nrc=0\n"),
                 ["t"], 0)
    program_case("loss over tolerance", both("t", "RESULT loss=1.0\nrc=0\n", "RESULT loss=1.1\nrc=0\n"), ["t"], 1)
    program_case("device printf order-free", both("p", "DEVPRINTF b\nDEVPRINTF a\nPASS p\nrc=0\n",
                                                  "DEVPRINTF a\nDEVPRINTF b\nPASS p\nrc=0\n"), ["p"], 0)

    def slices_case(what, rows, want, modes=("green", "mps"), must=()):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "slices.tsv")
            with open(path, "w") as f:
                f.write("\n".join(rows) + "\n")
            buf = io.StringIO()
            got = slices_table(path, list(modes), ["66 66", "whole"], ["spin", "mem"], out=buf)
            text = buf.getvalue()
            check(what, got, want, text)
            for m in must:
                if m not in text:
                    fails.append(f"{what}: {m!r} not in\n{text}")

    def full(modes=("green", "mps")):
        rows = ["ctxcost 0 500.0 2048", "native spin 0 100.0", "native mem 0 50.0",
                f"quota 0 {1 << 30} 0 2 0 2"]
        for m in modes:
            for cfg in ("66_66", "whole"):
                for k in ("spin", "mem"):
                    for i, sms in enumerate(cfg.split("_")):
                        rows.append(f"case {m} {cfg} {k} vm{i} {sms} 0 25.0 {66 if sms != 'whole' else 132}")
            rows.append(f"isolation {m} 0 0 {'yes' if m == 'green' else 'NO'} CUDA_ERROR_ILLEGAL_ADDRESS")
        return rows

    slices_case("all cases ran", full(), 0)
    rows = full()
    slices_case("a VM printed no rate", [r.replace("vm1 66 0 25.0", "vm1 66 0 -") if "green 66_66 spin" in r else r
                                         for r in rows], 1, must=["green 66_66 spin vm1 (no rate"])
    slices_case("a client failed", [r.replace("vm0 66 0 ", "vm0 66 1 ") if "mps 66_66 mem" in r else r
                                    for r in rows], 1, must=["mps 66_66 mem vm0 (rc=1"])
    slices_case("a case is missing", [r for r in rows if "green whole mem" not in r], 1,
                must=["green whole mem vm0 (MISSING"])
    slices_case("MPS unavailable", [r for r in full(("green",))] + ["unavailable mps nvidia-cuda-mps-control failed"],
                1, must=["mps (SKIPPED"])
    slices_case("green fault spread", [r.replace("isolation green 0 0 yes", "isolation green 1 0 NO") for r in rows],
                1, must=["green isolation (the other VM's job was disturbed"])
    slices_case("quota not enforced", [r.replace(" 0 2 0 2", " 0 0 0 0") if r.startswith("quota") else r
                                       for r in rows], 1, must=["quota (rc=0"])
    slices_case("green sees fewer SMs", [r.replace("vm0 66 0 25.0 66", "vm0 66 0 25.0 33") if "green 66_66 spin" in r
                                         else r for r in rows], 1, must=["sees 33 SMs of 66 asked"])
    if fails:
        print("verdict.py selftest FAILED:\n" + "\n\n".join(fails))
        return 1
    print("verdict.py selftest: ok")
    return 0


def split_args(args):
    groups, cur = [], []
    for a in args:
        if a == "--":
            groups.append(cur)
            cur = []
        else:
            cur.append(a)
    groups.append(cur)
    return groups


def main(argv):
    if argv[1:2] == ["--selftest"]:
        return selftest()
    if argv[1:2] == ["run"]:
        head, names = split_args(argv[2:])
        return run_table(head[0], head[1], names)
    if argv[1:2] == ["slices"]:
        head, modes, configs, kinds = split_args(argv[2:])
        return slices_table(head[0], modes, configs, kinds)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

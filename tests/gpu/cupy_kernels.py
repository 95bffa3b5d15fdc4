# CuPy kernels on the vGPU: custom elementwise kernels (cp.ElementwiseKernel, one generic over
# the type) and built-in ufuncs; custom reductions (cp.ReductionKernel) and built-in ones
# (sum, max, argmax, min, argmin, axis reductions, cumsum); and cp.RawKernel sources compiled
# with NVRTC (a loop-heavy integer kernel, and a shared-memory + atomics histogram).
#
# Every result is checked against NumPy on the host, and printed as `RESULT <key>=<value>`
# (integers exactly, floating point at limited precision) for comparison between a native run
# and a run through our stack; `TIME <key>=<ms>` lines give the mean call after a warm-up, with
# a synchronisation, and the NVRTC compile + load of the first raw kernel call. Exits 1 if any
# check fails.
#
# CuPy's kernel cache is kept in memory unless the caller chose otherwise, so every run
# compiles its kernels (a native run must not warm the on-disk cache of the vGPU run).
import os
import sys
import time

os.environ.setdefault("CUPY_CACHE_IN_MEMORY", "1")

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

T_START = time.perf_counter()
N = 1 << 22
REPS = 20
failures = []


def result(key, value):
    print(f"RESULT {key}={value}")


def check(key, ok, detail=""):
    if not ok:
        failures.append(f"{key} {detail}".strip())


def sync():
    cp.cuda.Device().synchronize()


def timed(key, fn, reps=REPS):
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    ms = (time.perf_counter() - t0) * 1e3 / reps
    print(f"TIME {key}={ms:.4f}")


def exact(key, got, want):
    """An integer result, printed and compared exactly."""
    got, want = int(got), int(want)
    result(key, got)
    check(key, got == want, f"got {got}, want {want}")


def close(key, got, want, rtol=1e-9):
    """A floating-point result, printed at limited precision and compared with a tolerance."""
    got, want = float(got), float(want)
    result(key, f"{got:.6e}")
    check(key, abs(got - want) <= rtol * max(abs(want), 1.0), f"got {got!r}, want {want!r}")


def elementwise():
    x = cp.arange(N, dtype=cp.int64)
    y = x[::-1].copy()
    hx, hy = cp.asnumpy(x), cp.asnumpy(y)

    poly = cp.ElementwiseKernel(
        "int64 x, int64 y", "int64 z", "z = (x * 3 + y * y) % 1000003", "vgpu_poly"
    )
    z = poly(x, y)
    hz = (hx * 3 + hy * hy) % 1000003
    check("ew_poly_array", np.array_equal(cp.asnumpy(z), hz))
    exact("ew_poly_sum", z.sum(), hz.sum())
    timed("ew_custom_ms", lambda: poly(x, y, z))

    # One generic kernel, instantiated for two types.
    absdiff = cp.ElementwiseKernel(
        "T x, T y", "T z", "z = x > y ? x - y : y - x", "vgpu_absdiff"
    )
    a32 = (x % 1000).astype(cp.int32)
    b32 = (y % 777).astype(cp.int32)
    d32 = absdiff(a32, b32)
    hd32 = np.abs(cp.asnumpy(a32) - cp.asnumpy(b32))
    exact("ew_absdiff_i32_sum", d32.sum(dtype=cp.int64), hd32.sum())
    af = x.astype(cp.float64) / N
    bf = y.astype(cp.float64) / N
    df = absdiff(af, bf)
    hdf = np.abs(hx / N - hy / N)
    check("ew_absdiff_f64_array", np.allclose(cp.asnumpy(df), hdf, rtol=0, atol=1e-15))
    close("ew_absdiff_f64_sum", df.sum(), hdf.sum())

    # Built-in ufuncs: integer ones exactly, floating-point ones against NumPy's libm.
    q = ((x * x + 7) % 97) ^ (x << 3)
    hq = ((hx * hx + 7) % 97) ^ (hx << 3)
    check("ufunc_int_array", np.array_equal(cp.asnumpy(q), hq))
    exact("ufunc_int_sum", q.sum(), hq.sum())
    f = x.astype(cp.float64) / N
    g = cp.sqrt(f) * cp.exp(-f) + cp.sin(3.0 * f) - cp.maximum(f, 0.5)
    hf = hx / N
    hg = np.sqrt(hf) * np.exp(-hf) + np.sin(3.0 * hf) - np.maximum(hf, 0.5)
    check("ufunc_f64_array", np.allclose(cp.asnumpy(g), hg, rtol=1e-12, atol=1e-12))
    close("ufunc_f64_sum", g.sum(), hg.sum())
    f32 = f.astype(cp.float32)
    g32 = cp.tanh(f32) * 2.0 + cp.float32(1)
    hg32 = np.tanh(hf.astype(np.float32)) * 2 + 1
    check("ufunc_f32_array", np.allclose(cp.asnumpy(g32), hg32, rtol=1e-5))
    close("ufunc_f32_sum", g32.sum(dtype=cp.float64), (np.tanh(hf) * 2 + 1).sum(), rtol=1e-5)
    timed("ew_ufunc_ms", lambda: cp.sqrt(f) * cp.exp(-f) + cp.sin(3.0 * f))


def reductions():
    i = cp.arange(N, dtype=cp.int64)
    v = (i * 7919 + 13) % 1000003 - 500000
    hv = cp.asnumpy(v)
    # For the arg-reductions, values without ties: equal v means i and j differ by k * 1000003
    # (k = 1..4 here), and then i % 8 and j % 8 differ (1000003 % 8 == 3).
    w = v * 8 + i % 8
    hw = cp.asnumpy(w)
    check("red_unique", np.unique(hw).size == N)

    sumsq = cp.ReductionKernel("int64 x", "int64 y", "x * x", "a + b", "y = a", "0", "vgpu_sumsq")
    exact("red_sumsq", sumsq(v), (hv * hv).sum())
    maxabs = cp.ReductionKernel(
        "int64 x", "int64 y", "x < 0 ? -x : x", "max(a, b)", "y = a", "0", "vgpu_maxabs"
    )
    exact("red_maxabs", maxabs(v), np.abs(hv).max())
    timed("reduction_custom_ms", lambda: sumsq(v))

    exact("red_sum", v.sum(), hv.sum())
    exact("red_max", v.max(), hv.max())
    exact("red_min", v.min(), hv.min())
    exact("red_argmax", w.argmax(), hw.argmax())
    exact("red_argmin", w.argmin(), hw.argmin())
    timed("reduction_sum_ms", lambda: v.sum())

    m = (v % 1009).reshape(1024, N // 1024)
    hm = hv.reshape(1024, N // 1024) % 1009
    rows = m.sum(axis=1)
    cols = m.max(axis=0)
    check("red_axis1_array", np.array_equal(cp.asnumpy(rows), hm.sum(axis=1)))
    check("red_axis0_array", np.array_equal(cp.asnumpy(cols), hm.max(axis=0)))
    weights = cp.arange(1024, dtype=cp.int64)
    exact("red_axis1_weighted", (rows * weights).sum(), (hm.sum(axis=1) * np.arange(1024)).sum())
    exact("red_axis0_sum", cols.sum(), hm.max(axis=0).sum())
    wm = w.reshape(1024, N // 1024)
    hwm = hw.reshape(1024, N // 1024)
    check("red_argmax_axis1_array", np.array_equal(cp.asnumpy(wm.argmax(axis=1)), hwm.argmax(1)))
    exact("red_argmax_axis1_sum", wm.argmax(axis=1).sum(), hwm.argmax(axis=1).sum())
    exact("red_argmin_axis0_sum", wm.argmin(axis=0).sum(), hwm.argmin(axis=0).sum())

    c = cp.cumsum(v)
    hc = np.cumsum(hv)
    check("scan_cumsum_array", np.array_equal(cp.asnumpy(c), hc))
    exact("scan_cumsum_last", c[-1], hc[-1])
    exact("scan_cumsum_mid", c[N // 2 + 12345], hc[N // 2 + 12345])

    # float32, all terms positive so that the float32 sum is well conditioned; the arg-reduction
    # is checked against the GPU's own values (sinf and NumPy's sin may differ in the last bit).
    f = cp.float32(1.5) + cp.sin(cp.arange(N, dtype=cp.float32) * cp.float32(1e-3))
    hf = np.float32(1.5) + np.sin(np.arange(N, dtype=np.float32) * np.float32(1e-3))
    hf = hf.astype(np.float64)
    close("red_f32_sum", f.sum(), hf.sum(), rtol=1e-4)
    close("red_f32_max", f.max(), hf.max(), rtol=1e-6)
    exact("red_f32_argmax", f.argmax(), np.argmax(cp.asnumpy(f)))


COLLATZ = r"""
extern "C" __global__ void vgpu_collatz(const long long* start, int* steps, int n) {
    int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long v = start[i];
    int s = 0;
    while (v > 1) {
        v = (v & 1) ? 3 * v + 1 : v >> 1;
        ++s;
    }
    steps[i] = s;
}
"""

HISTOGRAM = r"""
#define NBINS 256
extern "C" __global__ void vgpu_histogram(const unsigned int* v, long long n, unsigned int* bins) {
    __shared__ unsigned int local[NBINS];
    for (int b = threadIdx.x; b < NBINS; b += blockDim.x) local[b] = 0;
    __syncthreads();
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        atomicAdd(&local[v[i] % NBINS], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < NBINS; b += blockDim.x) atomicAdd(&bins[b], local[b]);
}
"""


def collatz_host(start):
    v = start.astype(np.uint64)
    steps = np.zeros(v.shape, dtype=np.int32)
    live = v > 1
    while live.any():
        odd = (v & 1) == 1
        v = np.where(live, np.where(odd, 3 * v + 1, v >> 1), v)
        steps += live
        live = v > 1
    return steps


def raw_kernels():
    n = 1 << 18
    start = cp.arange(1, n + 1, dtype=cp.int64)
    steps = cp.empty(n, dtype=cp.int32)
    block = 256
    grid = (n + block - 1) // block

    t0 = time.perf_counter()
    collatz = cp.RawKernel(COLLATZ, "vgpu_collatz", backend="nvrtc")
    collatz((grid,), (block,), (start, steps, cp.int32(n)))
    sync()
    print(f"TIME rawkernel_first_call_ms={(time.perf_counter() - t0) * 1e3:.2f}")
    hsteps = collatz_host(cp.asnumpy(start))
    check("raw_collatz_array", np.array_equal(cp.asnumpy(steps), hsteps))
    exact("raw_collatz_sum", steps.sum(dtype=cp.int64), hsteps.sum(dtype=np.int64))
    exact("raw_collatz_max", steps.max(), hsteps.max())
    exact("raw_collatz_argmax", steps.argmax(), hsteps.argmax())
    timed("rawkernel_collatz_ms", lambda: collatz((grid,), (block,), (start, steps, cp.int32(n))))

    hist = cp.RawKernel(HISTOGRAM, "vgpu_histogram", backend="nvrtc")
    values = ((cp.arange(N, dtype=cp.uint64) * 2654435761) % (1 << 32)).astype(cp.uint32)
    bins = cp.zeros(256, dtype=cp.uint32)
    hist((264,), (256,), (values, cp.int64(N), bins))
    hbins = np.bincount(cp.asnumpy(values) % 256, minlength=256)
    check("raw_histogram_array", np.array_equal(cp.asnumpy(bins), hbins))
    exact("raw_histogram_total", bins.sum(dtype=cp.int64), N)
    exact(
        "raw_histogram_weighted",
        (bins.astype(cp.int64) * cp.arange(256)).sum(),
        (hbins * np.arange(256)).sum(),
    )

    def again():
        bins.fill(0)
        hist((264,), (256,), (values, cp.int64(N), bins))

    timed("rawkernel_histogram_ms", again)


def main():
    dev = cp.cuda.Device()
    result("cupy_device_count", cp.cuda.runtime.getDeviceCount())
    name = cp.cuda.runtime.getDeviceProperties(dev.id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    print(f"# {name}, CuPy {cp.__version__}")
    elementwise()
    reductions()
    raw_kernels()
    sync()
    print(f"TIME cupy_kernels_ms={(time.perf_counter() - T_START) * 1e3:.1f}")
    if failures:
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

# torch.compile on the vGPU: a function compiled by TorchDynamo + Inductor (the matrix multiply
# through cuBLAS, the bias + GELU + scale epilogue as a Triton kernel that Triton compiles,
# links against libcuda.so and loads through the driver) run on fixed input.
#
# Prints RESULT checksums at limited precision (compared between a native run and a run
# through our stack), RESULT compiled_matches_eager=1 after checking the compiled result
# against eager PyTorch, and TIME lines in ms: the first call (compilation included), the mean
# steady-state call, and the mean eager call for reference. Exits 1 if torch.compile (or the first
# compiled call, where compilation happens) raises, or if the results disagree.
#
# Inductor's and Triton's caches are pointed at a fresh directory unless the caller chose
# one, so each run really compiles (a native run must not warm the cache of the vGPU run).
import os
import shutil
import sys
import tempfile
import time
import traceback

_cache = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ and "TRITON_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="vgpu-torch-compile-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(_cache, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(_cache, "triton")

import torch  # noqa: E402

DEV = os.environ.get("TORCH_TEST_DEVICE", "cuda")
STEADY_CALLS = 50


def sync():
    if DEV.startswith("cuda"):
        torch.cuda.synchronize()


def fused(x, w, b, scale):
    return torch.nn.functional.gelu(x @ w + b) * scale


def checksums(key, y):
    y64 = y.double()
    print(f"RESULT {key}_sum={y64.sum().item():.4e}")
    print(f"RESULT {key}_abs_sum={y64.abs().sum().item():.4e}")
    flat = y.flatten()
    for i in (0, 1, 12345, flat.numel() - 1):
        print(f"RESULT {key}_elem_{i}={flat[i].item():.4e}")


def main():
    torch.manual_seed(0)
    # float32 matmuls are IEEE by default (no TF32); the setting is left alone because some
    # Inductor versions refuse to compile once the legacy and the new precision APIs are mixed.
    gen = torch.Generator().manual_seed(4321)
    m, k, n = 1024, 768, 1024
    x = torch.randn(m, k, generator=gen).to(DEV)
    w = (torch.randn(k, n, generator=gen) / k**0.5).to(DEV)
    b = (0.1 * torch.randn(n, generator=gen)).to(DEV)
    scale = 0.5

    eager = fused(x, w, b, scale)
    sync()
    t0 = time.perf_counter()
    for _ in range(STEADY_CALLS):
        eager = fused(x, w, b, scale)
    sync()
    eager_ms = (time.perf_counter() - t0) * 1e3 / STEADY_CALLS

    try:
        compiled = torch.compile(fused)  # mode="default"
        t0 = time.perf_counter()
        y = compiled(x, w, b, scale)
        sync()
        first_ms = (time.perf_counter() - t0) * 1e3
    except Exception as e:  # noqa: BLE001 (any failure to compile is the test's failure)
        traceback.print_exc()
        print(f"FAIL torch.compile raised {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)

    t0 = time.perf_counter()
    for _ in range(STEADY_CALLS):
        y = compiled(x, w, b, scale)
    sync()
    steady_ms = (time.perf_counter() - t0) * 1e3 / STEADY_CALLS

    checksums("compiled", y)
    # Same math, different kernels: close, not necessarily bit-identical.
    err = (y - eager).abs().max().item()
    ref = eager.abs().max().item()
    ok = err <= 1e-4 * max(ref, 1.0)
    print(f"RESULT compiled_matches_eager={int(ok)}")
    print(f"TIME compile_first_call_ms={first_ms:.1f}")
    print(f"TIME compiled_call_ms={steady_ms:.4f}")
    print(f"TIME eager_call_ms={eager_ms:.4f}")
    if not ok:
        print(
            f"FAIL compiled result differs from eager: max |diff| {err:.3e}, max |y| {ref:.3e}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    finally:
        if _cache is not None:
            shutil.rmtree(_cache, ignore_errors=True)

# CuPy on the vGPU: an NVRTC-compiled elementwise kernel and a reduction.
import cupy as cp

a = cp.arange(1_000_000, dtype=cp.float32)
print(f"RESULT cupy_elementwise={float((a * 2 + 1).sum()):.1f}")
k = cp.ElementwiseKernel("float32 x", "float32 y", "y = x * x + 1", "sq1")
print(f"RESULT cupy_kernel_sum={float(k(a[:1000]).sum()):.1f}")

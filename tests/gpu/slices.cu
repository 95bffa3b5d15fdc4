// Kernels of the slice tests: compute-bound, memory-bound, and one that faults.
extern "C" __global__ void spin(float *out, int iters) {
    float x = threadIdx.x * 1e-3f, y = 1.0001f;
    for (int i = 0; i < iters; i++) x = x * y + 1e-7f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = x;
}

extern "C" __global__ void copy4(const float4 *in, float4 *out, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = in[i];
}

extern "C" __global__ void fault(float *p) { p[threadIdx.x * 1024] = 1.0f; }

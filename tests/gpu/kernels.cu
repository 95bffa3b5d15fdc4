// Kernels of the GPU test programs (driver API: loaded from a cubin, fatbin or PTX).
extern "C" __global__ void vecAdd(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

extern "C" __global__ void empty() {}

extern "C" __global__ void saxpy(float a, const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

// Sum of `n` floats into one partial sum per block (shared-memory tree).
extern "C" __global__ void reduceSum(const float *in, float *out, int n) {
    extern __shared__ float s[];
    int tid = threadIdx.x;
    float v = 0;
    for (int i = blockIdx.x * blockDim.x + tid; i < n; i += gridDim.x * blockDim.x) v += in[i];
    s[tid] = v;
    __syncthreads();
    for (int step = blockDim.x / 2; step > 0; step >>= 1) {
        if (tid < step) s[tid] += s[tid + step];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = s[0];
}

// C = A * B for n x n row-major matrices, 16x16 tiles.
extern "C" __global__ void matmul(const float *A, const float *B, float *C, int n) {
    __shared__ float ta[16][16], tb[16][16];
    int row = blockIdx.y * 16 + threadIdx.y, col = blockIdx.x * 16 + threadIdx.x;
    float acc = 0;
    for (int t = 0; t < n; t += 16) {
        ta[threadIdx.y][threadIdx.x] = A[row * n + t + threadIdx.x];
        tb[threadIdx.y][threadIdx.x] = B[(t + threadIdx.y) * n + col];
        __syncthreads();
        for (int k = 0; k < 16; k++) acc += ta[threadIdx.y][k] * tb[k][threadIdx.x];
        __syncthreads();
    }
    C[row * n + col] = acc;
}

// A compute-bound loop: `iters` fused multiply-adds per thread.
extern "C" __global__ void spin(float *out, int iters) {
    float x = threadIdx.x * 1e-3f, y = 1.0001f;
    for (int i = 0; i < iters; i++) x = x * y + 1e-7f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = x;
}

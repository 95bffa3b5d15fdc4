// cudaMalloc / cudaMemcpy / kernel launch / cudaDeviceSynchronize through the CUDA runtime.
#include "common.h"

__global__ void saxpy(int n, float a, const float *x, float *y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

struct Pair {
    int a;
    double b;
};
__global__ void fill_struct(Pair p, long long *out) { out[threadIdx.x] = p.a + (long long)p.b + threadIdx.x; }

int main() {
    int runtime = 0, driver = 0, count = 0;
    CK(cudaRuntimeGetVersion(&runtime));
    CK(cudaDriverGetVersion(&driver));
    CK(cudaGetDeviceCount(&count));
    EXPECT(count >= 1);
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    std::printf("runtime %d driver %d device '%s' sm_%d%d %zu MiB\n", runtime, driver, prop.name, prop.major,
                prop.minor, prop.totalGlobalMem >> 20);
    CK(cudaSetDevice(0));

    const int n = 1 << 16;
    float *hx = (float *)std::malloc(n * sizeof(float));
    float *hy = (float *)std::malloc(n * sizeof(float));
    float *back = (float *)std::malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) {
        hx[i] = (float)i;
        hy[i] = 1.0f;
    }
    float *dx, *dy, *dz;
    CK(cudaMalloc(&dx, n * sizeof(float)));
    CK(cudaMalloc(&dy, n * sizeof(float)));
    CK(cudaMalloc(&dz, n * sizeof(float)));
    CK(cudaMemcpy(dx, hx, n * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dy, hy, n * sizeof(float), cudaMemcpyHostToDevice));
    // A device-to-device copy and back: the data must round-trip exactly.
    CK(cudaMemcpy(dz, dx, n * sizeof(float), cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(back, dz, n * sizeof(float), cudaMemcpyDeviceToHost));
    EXPECT(std::memcmp(back, hx, n * sizeof(float)) == 0);
    CK(cudaMemset(dz, 0, n * sizeof(float)));
    CK(cudaMemcpy(back, dz, n * sizeof(float), cudaMemcpyDefault));
    for (int i = 0; i < n; i++) EXPECT(back[i] == 0.0f);

    saxpy<<<(n + 255) / 256, 256>>>(n, 2.0f, dx, dy);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(back, dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    if (kernels_run())
        for (int i = 0; i < n; i++) EXPECT(back[i] == 2.0f * i + 1.0f);

    long long *dout, hout[32];
    CK(cudaMalloc(&dout, sizeof hout));
    fill_struct<<<1, 32>>>(Pair{40, 2.0}, dout);
    CK(cudaGetLastError());
    CK(cudaMemcpy(hout, dout, sizeof hout, cudaMemcpyDeviceToHost));
    if (kernels_run())
        for (int i = 0; i < 32; i++) EXPECT(hout[i] == 42 + i);

    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, saxpy));
    EXPECT(fa.maxThreadsPerBlock > 0);
    CK(release_all(cudaFree, dx, dy, dz, dout));
    std::free(hx);
    std::free(hy);
    std::free(back);
    std::printf("PASS rt_basic\n");
    return 0;
}

// Sum of 32M floats in two passes of a shared-memory reduction.
#include "common.h"
#include <string.h>
int main(int argc, char **argv) {
    init_ctx();
    CUmodule m = load_module(argc > 1 ? argv[1] : "kernels.cubin");
    CUfunction f;
    CK(cuModuleGetFunction(&f, m, "reduceSum"));
    const int n = 32 << 20, blocks = 1024, threads = 256;
    float *h = (float *)malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) h[i] = (float)(i % 1000) * 0.5f;
    CUdeviceptr din, dpart, dout;
    CK(cuMemAlloc(&din, (size_t)n * 4)); CK(cuMemAlloc(&dpart, blocks * 4)); CK(cuMemAlloc(&dout, 4));
    CK(cuMemcpyHtoD(din, h, (size_t)n * 4));
    double t0 = now_us();
    int nn = n, nb = blocks;
    void *a1[] = {&din, &dpart, &nn};
    CK(cuLaunchKernel(f, blocks, 1, 1, threads, 1, 1, threads * 4, 0, a1, 0));
    void *a2[] = {&dpart, &dout, &nb};
    CK(cuLaunchKernel(f, 1, 1, 1, threads, 1, 1, threads * 4, 0, a2, 0));
    float sum;
    CK(cuMemcpyDtoH(&sum, dout, 4));
    double t1 = now_us();
    uint32_t bits;
    memcpy(&bits, &sum, 4);
    printf("RESULT reduction_sum=%.1f bits=%08x\n", sum, bits);
    printf("TIME reduction_us=%.1f\n", t1 - t0);
    return 0;
}

// vecAdd from a module file (cubin or PTX): 16M elements, result hashed.
#include "common.h"
int main(int argc, char **argv) {
    init_ctx();
    CUmodule m = load_module(argc > 1 ? argv[1] : "kernels.cubin");
    CUfunction f;
    CK(cuModuleGetFunction(&f, m, "vecAdd"));
    const int n = 16 << 20;
    size_t bytes = (size_t)n * 4;
    float *a = (float *)malloc(bytes), *b = (float *)malloc(bytes), *c = (float *)malloc(bytes);
    for (int i = 0; i < n; i++) { a[i] = i * 0.5f; b[i] = (n - i) * 0.25f; }
    CUdeviceptr da, db, dc;
    CK(cuMemAlloc(&da, bytes)); CK(cuMemAlloc(&db, bytes)); CK(cuMemAlloc(&dc, bytes));
    CK(cuMemcpyHtoD(da, a, bytes)); CK(cuMemcpyHtoD(db, b, bytes));
    void *args[] = {&da, &db, &dc, (void *)&n};
    double t0 = now_us();
    CK(cuLaunchKernel(f, n / 256, 1, 1, 256, 1, 1, 0, 0, args, 0));
    CK(cuCtxSynchronize());
    double t1 = now_us();
    CK(cuMemcpyDtoH(c, dc, bytes));
    int bad = 0;
    for (int i = 0; i < n; i++) bad += c[i] != a[i] + b[i];
    printf("RESULT vecadd_hash=%016llx wrong=%d\n", (unsigned long long)fnv1a(c, bytes), bad);
    printf("TIME vecadd_kernel_us=%.1f\n", t1 - t0);
    return bad != 0;
}

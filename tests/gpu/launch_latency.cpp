// Launch costs: launch+synchronize round trip, async back-to-back launch rate, and the
// latency of 4-byte copies.
#include "common.h"
int main(int argc, char **argv) {
    init_ctx();
    CUmodule m = load_module(argc > 1 ? argv[1] : "kernels.cubin");
    CUfunction f;
    CK(cuModuleGetFunction(&f, m, "empty"));
    CUstream s;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    for (int i = 0; i < 1000; i++) CK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, 0, 0));
    CK(cuStreamSynchronize(s));
    const int rt = 20000;
    double t0 = now_us();
    for (int i = 0; i < rt; i++) {
        CK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, 0, 0));
        CK(cuStreamSynchronize(s));
    }
    double t1 = now_us();
    const int burst = 200000;
    for (int i = 0; i < burst; i++) CK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, 0, 0));
    CK(cuStreamSynchronize(s));
    double t2 = now_us();
    CUdeviceptr d;
    CK(cuMemAlloc(&d, 4));
    int v = 42, w = 0;
    const int small = 20000;
    double t3 = now_us();
    for (int i = 0; i < small; i++) CK(cuMemcpyHtoD(d, &v, 4));
    double t4 = now_us();
    for (int i = 0; i < small; i++) CK(cuMemcpyDtoH(&w, d, 4));
    double t5 = now_us();
    printf("RESULT latency_value=%d\n", w);
    printf("TIME launch_sync_us=%.2f\n", (t1 - t0) / rt);
    printf("TIME async_launch_us=%.3f\n", (t2 - t1) / burst);
    printf("TIME async_launch_per_s=%.0f\n", burst / ((t2 - t1) / 1e6));
    printf("TIME memcpy_h2d_4B_us=%.2f\n", (t4 - t3) / small);
    printf("TIME memcpy_d2h_4B_us=%.2f\n", (t5 - t4) / small);
    return 0;
}

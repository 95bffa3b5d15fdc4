// One VM's workload for the slice tests.
//   slice_bench MODULE spin|mem SECONDS START_MS   throughput from START_MS (unix ms) on
//   slice_bench MODULE quota LIMIT_BYTES           allocations around the slice's memory limit
//   slice_bench MODULE longjob SECONDS             a long job whose results are checked
//   slice_bench MODULE fault                       a kernel that writes to an illegal address
//   slice_bench MODULE ctxcost                     device memory a context costs (native)
#include "common.h"
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static double unix_ms() { struct timeval t; gettimeofday(&t, 0); return t.tv_sec * 1e3 + t.tv_usec / 1e3; }

int main(int argc, char **argv) {
    const char *kind = argv[2];
    if (!strcmp(kind, "ctxcost")) {
        CUdevice dev; CUcontext a, b; size_t f0, f1, f2, t;
        CK(cuInit(0)); CK(cuDeviceGet(&dev, 0));
        CK(cuDevicePrimaryCtxRetain(&a, dev)); CK(cuCtxSetCurrent(a));
        CK(cuMemGetInfo(&f0, &t));
        CK(cuCtxCreate(&b, NULL, 0, dev));
        CK(cuMemGetInfo(&f1, &t));
        CUdeviceptr p; CK(cuMemAlloc(&p, 1)); CK(cuMemGetInfo(&f2, &t));
        printf("TIME ctx_overhead_MiB=%.1f\nTIME alloc_1B_granule_KiB=%.0f\nRESULT ctxcost=done\n", (f0 - f1) / 1048576.0, (f1 - f2) / 1024.0);
        return 0;
    }
    CUcontext ctx = init_ctx();
    (void)ctx;
    CUdevice dev; CK(cuDeviceGet(&dev, 0));
    int sms = 0; CK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    size_t free_b, total_b; CK(cuMemGetInfo(&free_b, &total_b));
    printf("RESULT sms=%d total_mem=%zu\n", sms, total_b);
    if (!strcmp(kind, "quota")) {
        size_t limit = strtoull(argv[3], 0, 0);
        CUdeviceptr a, b, c, d;
        CUresult r1 = cuMemAlloc(&a, limit - 4096);
        CUresult r2 = cuMemAlloc(&b, 4097);
        CUresult r3 = cuMemAlloc(&c, 4096);
        CUresult r4 = cuMemAlloc(&d, 1);
        size_t f, t; CK(cuMemGetInfo(&f, &t));
        printf("RESULT quota_total=%zu alloc_limit_minus_4096=%d one_byte_over=%d exactly_at_limit=%d after_full=%d free_when_full=%zu\n",
               total_b, r1, r2, r3, r4, f);
        return 0;
    }
    CUmodule m = load_module(argv[1]);
    CUfunction spin, copy4, fault;
    CK(cuModuleGetFunction(&spin, m, "spin")); CK(cuModuleGetFunction(&copy4, m, "copy4")); CK(cuModuleGetFunction(&fault, m, "fault"));
    CUstream s; CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    const int blocks = 132 * 8, threads = 256; // the whole GPU's worth, whatever the slice says
    if (!strcmp(kind, "fault")) {
        CUdeviceptr bad = 0x10;
        void *args[] = {&bad};
        CK(cuLaunchKernel(fault, 1, 1, 1, 32, 1, 1, 0, s, args, 0));
        CUresult r = cuStreamSynchronize(s);
        const char *n = "?"; cuGetErrorName(r, &n);
        printf("RESULT fault_error=%s\n", n);
        return 0;
    }
    CUdeviceptr out; CK(cuMemAlloc(&out, (size_t)blocks * threads * 4));
    int iters = 20000;
    void *sargs[] = {&out, &iters};
    if (!strcmp(kind, "longjob")) {
        double secs = atof(argv[3]);
        float *ref = (float *)malloc((size_t)blocks * threads * 4), *got = (float *)malloc((size_t)blocks * threads * 4);
        CK(cuLaunchKernel(spin, blocks, 1, 1, threads, 1, 1, 0, s, sargs, 0));
        CK(cuStreamSynchronize(s));
        CK(cuMemcpyDtoH(ref, out, (size_t)blocks * threads * 4));
        double end = now_us() + secs * 1e6;
        int runs = 0, bad = 0;
        while (now_us() < end) {
            CK(cuMemsetD32(out, 0, blocks * threads));
            for (int i = 0; i < 4; i++) CK(cuLaunchKernel(spin, blocks, 1, 1, threads, 1, 1, 0, s, sargs, 0));
            CK(cuStreamSynchronize(s));
            CK(cuMemcpyDtoH(got, out, (size_t)blocks * threads * 4));
            bad += memcmp(ref, got, (size_t)blocks * threads * 4) != 0;
            runs++;
        }
        printf("RESULT longjob_runs_ok=%s runs=%d bad=%d\n", bad ? "NO" : "yes", runs, bad);
        return bad != 0;
    }
    double secs = atof(argv[3]), start = atof(argv[4]);
    size_t n4 = (512ull << 20) / 16;
    CUdeviceptr a = 0, b = 0;
    if (!strcmp(kind, "mem")) { CK(cuMemAlloc(&a, n4 * 16)); CK(cuMemAlloc(&b, n4 * 16)); CK(cuMemsetD32(a, 1, n4 * 4)); }
    void *margs[] = {&a, &b, &n4};
    CUfunction f = !strcmp(kind, "mem") ? copy4 : spin;
    void **args = !strcmp(kind, "mem") ? margs : sargs;
    CUevent ev[4]; for (int i = 0; i < 4; i++) CK(cuEventCreate(&ev[i], 0));
    CK(cuLaunchKernel(f, blocks, 1, 1, threads, 1, 1, 0, s, args, 0)); // warm up
    CK(cuStreamSynchronize(s));
    while (unix_ms() < start) usleep(200);
    double t0 = now_us(), end = t0 + secs * 1e6;
    long done = 0;
    // Keep a few launches queued; count those that completed inside the window.
    while (now_us() < end) {
        for (int i = 0; i < 4; i++) { CK(cuLaunchKernel(f, blocks, 1, 1, threads, 1, 1, 0, s, args, 0)); CK(cuEventRecord(ev[i], s)); }
        CK(cuEventSynchronize(ev[3]));
        done += 4;
    }
    double t1 = now_us();
    printf("TIME rate_per_s=%.2f\n", done / ((t1 - t0) / 1e6));
    return 0;
}

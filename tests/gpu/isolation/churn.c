// Churn test (issue 16): ROUNDS rounds of {module load, 1,000 launches, 64 allocations and
// frees, a stream and an event created and destroyed, module unload}; prints this process's
// VmRSS after the first tenth of the rounds and at the end, so a leak per round shows.
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char *n_ = "?"; \
    cuGetErrorName(r_, &n_); fprintf(stderr, "%s:%d: %s: %d %s\n", __FILE__, __LINE__, #x, r_, n_); \
    exit(1); } } while (0)

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r"); char line[256]; long v = -1;
    while (f && fgets(line, sizeof line, f)) if (!strncmp(line, "VmRSS:", 6)) v = atol(line + 6);
    if (f) fclose(f);
    return v;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CUBIN ROUNDS\n", argv[0]); return 2; }
    int rounds = atoi(argv[2]);
    CUdevice dev; CUcontext ctx;
    CK(cuInit(0)); CK(cuDeviceGet(&dev, 0)); CK(cuCtxCreate(&ctx, NULL, 0, dev));  // CUDA 13: cuCtxCreate_v4
    long early = 0;
    unsigned n = 1024, seed = 1;
    for (int r = 0; r < rounds; r++) {
        CUmodule m; CUfunction f; CUstream s; CUevent e; CUdeviceptr d[64];
        CK(cuModuleLoad(&m, argv[1]));
        CK(cuModuleGetFunction(&f, m, "fill"));
        for (int i = 0; i < 64; i++) CK(cuMemAlloc(&d[i], 4096 * (i + 1)));
        CK(cuStreamCreate(&s, 0));
        CK(cuEventCreate(&e, 0));
        void *args[] = { &d[0], &n, &seed };
        for (int i = 0; i < 1000; i++) CK(cuLaunchKernel(f, 4, 1, 1, 256, 1, 1, 0, s, args, 0));
        CK(cuEventRecord(e, s));
        CK(cuEventSynchronize(e));
        CK(cuEventDestroy(e));
        CK(cuStreamDestroy(s));
        for (int i = 0; i < 64; i++) CK(cuMemFree(d[i]));
        CK(cuModuleUnload(m));
        if (r + 1 == rounds / 10) early = rss_kib();
    }
    long end = rss_kib();
    printf("RESULT churn_rounds=%d\n", rounds);
    printf("TIME rss_early_kib=%ld\nTIME rss_end_kib=%ld\n", early, end);
    return 0;
}

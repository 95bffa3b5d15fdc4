/* The vGPU dies under a program: it holds a session (a context and device memory), says
 * READY, waits for a line on stdin (meanwhile the test stops and kills the daemon), then makes
 * synchronous calls. Each must return CUDA_ERROR_DEVICE_UNAVAILABLE (46) instead of waiting
 * for ever, later calls at once, and the exit path (an atexit handler that makes more calls)
 * must not hang either.
 *
 * usage: liveness [pinned]   (the first call is a copy back, or with "pinned" an 8 MiB
 * pinned allocation, whose shared memory the daemon must acknowledge; prints "RESULT first=N later=N,... first_s=S later_s=S"; exit 0 when all
 * are 46) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "vgpu_cuda_min.h"
#define CHECK_EXIT 2
#include "check.h"

#define CUDA_ERROR_DEVICE_UNAVAILABLE 46

static CUdeviceptr dptr;
static CUdevice dev;



/* What a runtime's teardown does: frees and releases, after the device is gone. */
static void teardown(void) {
    cuMemFree_v2(dptr);
    cuCtxSynchronize();
    cuDevicePrimaryCtxRelease_v2(dev);
    fprintf(stderr, "teardown done\n");
}

int main(int argc, char **argv) {
    int pinned = argc > 1 && strcmp(argv[1], "pinned") == 0;
    static unsigned char host[1 << 16];
    primary_ctx(&dev);
    CHECK(cuMemAlloc_v2(&dptr, sizeof host));
    CHECK(cuMemcpyHtoD_v2(dptr, host, sizeof host));
    atexit(teardown);
    printf("READY\n");
    fflush(stdout);

    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 3;

    double t0 = now_s();
    void *big = NULL;
    CUresult first = pinned ? cuMemAllocHost_v2(&big, 8u << 20)
                            : cuMemcpyDtoH_v2(host, dptr, sizeof host);
    double t1 = now_s();
    CUdeviceptr more = 0;
    CUresult later[6];
    int sms = 0;
    later[0] = cuMemAlloc_v2(&more, 4096);
    later[1] = cuCtxSynchronize();
    later[2] = cuMemcpyHtoD_v2(dptr, host, 16);
    CUstream s;
    later[3] = cuStreamCreate(&s, 0);
    later[4] = cuInit(0);
    /* Answered from what the shim cached, but the device is gone all the same. */
    later[5] = cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
    double t2 = now_s();
    printf("RESULT first=%d later=%d,%d,%d,%d,%d,%d first_s=%.3f later_s=%.3f\n", first,
           later[0], later[1], later[2], later[3], later[4], later[5], t1 - t0, t2 - t1);
    fflush(stdout);
    int ok = first == CUDA_ERROR_DEVICE_UNAVAILABLE;
    for (int i = 0; i < 6; i++) ok &= later[i] == CUDA_ERROR_DEVICE_UNAVAILABLE;
    return ok ? 0 : 1;
}

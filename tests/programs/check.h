/* Shared by the driver-API test programs here and by tests/gpu/common.h: a checked driver
 * call, a monotonic clock, and device 0's primary context. Include vgpu_cuda_min.h (or the
 * real <cuda.h>) first. */
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The exit status of a failed CHECK; a program may define another before the include. */
#ifndef CHECK_EXIT
#define CHECK_EXIT 1
#endif

/* A driver call that must succeed, else "FAIL file:line call -> code NAME" and exit. */
#define CHECK(call)                                                                  \
    do {                                                                             \
        CUresult r_ = (call);                                                        \
        if (r_ != CUDA_SUCCESS) {                                                    \
            const char *n_ = "?";                                                    \
            cuGetErrorName(r_, &n_);                                                 \
            fprintf(stderr, "FAIL %s:%d %s -> %d %s\n", __FILE__, __LINE__, #call, (int)r_, n_); \
            exit(CHECK_EXIT);                                                        \
        }                                                                            \
    } while (0)

/* Seconds on the monotonic clock. */
static inline double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Initialises the driver and makes device 0's primary context current; `dev`, when not
 * NULL, gets the device. */
static inline CUcontext primary_ctx(CUdevice *dev) {
    CUdevice d;
    CUcontext ctx;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&d, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, d));
    CHECK(cuCtxSetCurrent(ctx));
    if (dev) *dev = d;
    return ctx;
}

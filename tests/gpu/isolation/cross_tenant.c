// Cross-tenant read test (issue 16): `owner CUBIN FLAG` allocates 1 MiB, fills it, prints its
// device pointer, waits until FLAG exists, then checks its data. `thief CUBIN PTR` launches a
// kernel that copies 1 MiB from PTR (the owner's pointer, in the owner's address space) into
// its own buffer and reports the error it got and how many words match the owner's pattern.
// Natively two processes are isolated: the thief's kernel faults (700) in its own context.
//
// The thief's kernel is `steal` (tests/gpu/isolation/tenant_kernels.cu, built with nvcc) or,
// where the cubin has none, `vecAdd` of tests/fixtures/kernels.cubin adding a zeroed buffer:
// the pattern is floats holding integers below 2^23, which x + 0.0f copies bit for bit. So the
// test also runs in a guest with no nvcc (tests/vm/h200-guest.sh). It builds against the
// repository's minimal header, with no CUDA toolkit.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "vgpu_cuda_min.h"

#define N (256u * 1024u) /* 1 MiB of 32-bit words */
#define SEED 0x5a5a1234u
#define CK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char *n_ = "?"; \
    cuGetErrorName(r_, &n_); fprintf(stderr, "%s:%d: %s: %d %s\n", __FILE__, __LINE__, #x, r_, n_); \
    exit(1); } } while (0)

// Word i of the owner's buffer: the bits of a float holding a 23-bit integer.
static unsigned pattern(unsigned i) {
    float f = (float)(((i * 2654435761u) ^ SEED) >> 9);
    unsigned bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s owner CUBIN FLAG | thief CUBIN PTR\n", argv[0]); return 2; }
    CUdevice dev; CUcontext ctx; CUmodule mod;
    CK(cuInit(0)); CK(cuDeviceGet(&dev, 0)); CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx));
    CK(cuModuleLoad(&mod, argv[2]));
    unsigned *host = malloc(N * 4);
    unsigned n = N;
    if (strcmp(argv[1], "owner") == 0) {
        CUdeviceptr buf; CK(cuMemAlloc_v2(&buf, N * 4));
        for (unsigned i = 0; i < N; i++) host[i] = pattern(i);
        CK(cuMemcpyHtoD_v2(buf, host, N * 4));
        memset(host, 0, N * 4);
        printf("OWNER PTR 0x%llx\n", (unsigned long long)buf); fflush(stdout);
        for (int i = 0; i < 1200 && access(argv[3], F_OK) != 0; i++) usleep(50000);
        CK(cuMemcpyDtoH_v2(host, buf, N * 4));
        unsigned good = 0;
        for (unsigned i = 0; i < N; i++) good += host[i] == pattern(i);
        printf("RESULT owner_intact=%d\n", good == N); fflush(stdout);
        return good == N ? 0 : 1;
    }
    CUdeviceptr from = (CUdeviceptr)strtoull(argv[3], 0, 16), zeros, to;
    CK(cuMemAlloc_v2(&to, N * 4));
    CK(cuMemAlloc_v2(&zeros, N * 4));
    CK(cuMemsetD32_v2(to, 0, N));
    CK(cuMemsetD32_v2(zeros, 0, N));
    CUfunction steal;
    CUresult r;
    if (cuModuleGetFunction(&steal, mod, "steal") == CUDA_SUCCESS) {
        void *args[] = { &from, &to, &n };
        r = cuLaunchKernel(steal, N / 256, 1, 1, 256, 1, 1, 0, 0, args, 0);
    } else {
        CK(cuModuleGetFunction(&steal, mod, "vecAdd"));
        void *args[] = { &from, &zeros, &to, &n };
        r = cuLaunchKernel(steal, N / 256, 1, 1, 256, 1, 1, 0, 0, args, 0);
    }
    if (r == CUDA_SUCCESS) r = cuCtxSynchronize();
    const char *name = "?"; cuGetErrorName(r, &name);
    unsigned match = 0;
    if (r == CUDA_SUCCESS) {
        CK(cuMemcpyDtoH_v2(host, to, N * 4));
        for (unsigned i = 0; i < N; i++) match += host[i] == pattern(i);
    }
    printf("RESULT thief_error=%s thief_matching_words=%u\n", name, match); fflush(stdout);
    return 0;
}

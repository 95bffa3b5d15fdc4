// Cross-tenant read test (issue 16): `owner CUBIN FLAG` allocates 1 MiB, fills it, prints its
// device pointer, waits until FLAG exists, then checks its data. `thief CUBIN PTR` launches a
// kernel that copies 1 MiB from PTR (the owner's pointer, in the owner's address space) into
// its own buffer and reports the error it got and how many words match the owner's pattern.
// Natively two processes are isolated: the thief's kernel faults (700) in its own context.
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N (256u * 1024u) /* 1 MiB of 32-bit words */
#define SEED 0x5a5a1234u
#define CK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char *n_ = "?"; \
    cuGetErrorName(r_, &n_); fprintf(stderr, "%s:%d: %s: %d %s\n", __FILE__, __LINE__, #x, r_, n_); \
    exit(1); } } while (0)

static CUfunction load(const char *cubin, const char *name) {
    CUmodule m; CUfunction f;
    CK(cuModuleLoad(&m, cubin));
    CK(cuModuleGetFunction(&f, m, name));
    return f;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s owner CUBIN FLAG | thief CUBIN PTR\n", argv[0]); return 2; }
    CUdevice dev; CUcontext ctx;
    CK(cuInit(0)); CK(cuDeviceGet(&dev, 0)); CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx));
    unsigned *host = malloc(N * 4);
    unsigned n = N;
    if (strcmp(argv[1], "owner") == 0) {
        CUfunction fill = load(argv[2], "fill");
        CUdeviceptr buf; CK(cuMemAlloc(&buf, N * 4));
        unsigned seed = SEED;
        void *args[] = { &buf, &n, &seed };
        CK(cuLaunchKernel(fill, N / 256, 1, 1, 256, 1, 1, 0, 0, args, 0));
        CK(cuCtxSynchronize());
        printf("OWNER PTR 0x%llx\n", (unsigned long long)buf); fflush(stdout);
        for (int i = 0; i < 1200 && access(argv[3], F_OK) != 0; i++) usleep(50000);
        CK(cuMemcpyDtoH(host, buf, N * 4));
        unsigned good = 0;
        for (unsigned i = 0; i < N; i++) good += host[i] == ((i * 2654435761u) ^ SEED);
        printf("RESULT owner_intact=%d\n", good == N); fflush(stdout);
        return good == N ? 0 : 1;
    }
    CUfunction steal = load(argv[2], "steal");
    CUdeviceptr from = (CUdeviceptr)strtoull(argv[3], 0, 16), to;
    CK(cuMemAlloc(&to, N * 4));
    CK(cuMemsetD32(to, 0, N));
    void *args[] = { &from, &to, &n };
    CUresult r = cuLaunchKernel(steal, N / 256, 1, 1, 256, 1, 1, 0, 0, args, 0);
    if (r == CUDA_SUCCESS) r = cuCtxSynchronize();
    const char *name = "?"; cuGetErrorName(r, &name);
    unsigned match = 0;
    if (r == CUDA_SUCCESS) {
        CK(cuMemcpyDtoH(host, to, N * 4));
        for (unsigned i = 0; i < N; i++) match += host[i] == ((i * 2654435761u) ^ SEED);
    }
    printf("RESULT thief_error=%s thief_matching_words=%u\n", name, match); fflush(stdout);
    return 0;
}

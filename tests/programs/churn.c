/* Churn: what a long-lived program and a stream of short ones do to the vGPU.
 *
 * usage: churn tiny
 *          init, allocate, copy there and back, free, exit (one of many short programs).
 *        churn rounds MODULE ROUNDS LAUNCHES ALLOCS
 *          ROUNDS times: create and destroy a context, load MODULE (from memory), look up
 *          vecAdd, ask its occupancy, launch
 *          it LAUNCHES times, ALLOCS allocations and frees, a stream and an event created,
 *          used and destroyed, unload. At round ROUNDS/10 and at the end it prints
 *          "AT round=N rss_kib=K" with its own VmRSS and waits for a line on stdin (so that
 *          the test can measure the daemon at the same points). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vgpu_cuda_min.h"
#include "check.h"

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *n, CUfunction f, int block, size_t smem);


static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kib = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return kib;
}

static void checkpoint(int round) {
    char line[16];
    printf("AT round=%d rss_kib=%ld\n", round, rss_kib());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

static int tiny(void) {
    CUdevice dev;
    unsigned char in[4096], out[4096];
    for (int i = 0; i < 4096; i++) in[i] = (unsigned char)i;
    primary_ctx(&dev);
    CUdeviceptr d;
    CHECK(cuMemAlloc_v2(&d, sizeof in));
    CHECK(cuMemcpyHtoD_v2(d, in, sizeof in));
    CHECK(cuMemcpyDtoH_v2(out, d, sizeof out));
    CHECK(cuMemFree_v2(d));
    CHECK(cuDevicePrimaryCtxRelease_v2(dev));
    if (memcmp(in, out, sizeof in) != 0) { fprintf(stderr, "copy mismatch\n"); return 1; }
    return 0;
}

static int rounds(const char *path, int n, int launches, int allocs) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return 2; }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *image = malloc(len + 1);
    if (fread(image, 1, len, f) != (size_t)len) { perror(path); return 2; }
    image[len] = 0;
    fclose(f);

    CUdevice dev;
    CUcontext ctx = primary_ctx(&dev);
    const int elems = 1024;
    CUdeviceptr a, b, c;
    CHECK(cuMemAlloc_v2(&a, elems * sizeof(float)));
    CHECK(cuMemAlloc_v2(&b, elems * sizeof(float)));
    CHECK(cuMemAlloc_v2(&c, elems * sizeof(float)));
    CUdeviceptr *ptrs = calloc(allocs > 0 ? allocs : 1, sizeof *ptrs);
    int count = elems;
    void *params[] = {&a, &b, &c, &count};
    CUcontext last_created = NULL;
    for (int r = 1; r <= n; r++) {
        /* A context created and destroyed: its record is reused, not leaked. */
        CUcontext created, popped;
        CHECK(cuCtxCreate_v2(&created, 0, dev));
        CHECK(cuCtxDestroy_v2(created));
        if (last_created && created != last_created) {
            fprintf(stderr, "round %d: a destroyed context's record was not reused\n", r);
            return 1;
        }
        last_created = created;
        CHECK(cuCtxGetCurrent(&popped));
        if (popped != ctx) { fprintf(stderr, "the primary context is not current\n"); return 1; }
        CUmodule m;
        CUfunction fn;
        CHECK(cuModuleLoadData(&m, image));
        CHECK(cuModuleGetFunction(&fn, m, "vecAdd"));
        int blocks = 0;
        CHECK(cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, 256, 0));
        CUstream s;
        CUevent e;
        CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
        CHECK(cuEventCreate(&e, 0));
        for (int i = 0; i < launches; i++)
            CHECK(cuLaunchKernel(fn, elems / 256, 1, 1, 256, 1, 1, 0, s, params, NULL));
        CHECK(cuEventRecord(e, s));
        for (int i = 0; i < allocs; i++) CHECK(cuMemAlloc_v2(&ptrs[i], 4096 + 256 * i));
        for (int i = 0; i < allocs; i++) CHECK(cuMemFree_v2(ptrs[i]));
        CHECK(cuEventSynchronize(e));
        CHECK(cuEventDestroy_v2(e));
        CHECK(cuStreamDestroy_v2(s));
        CHECK(cuModuleUnload(m));
        /* The unloaded module's handles are dead. */
        if (cuModuleGetFunction(&fn, m, "vecAdd") == CUDA_SUCCESS) {
            fprintf(stderr, "an unloaded module still resolves\n");
            return 1;
        }
        if (r == n / 10 || r == n) checkpoint(r);
    }
    CHECK(cuMemFree_v2(a));
    CHECK(cuMemFree_v2(b));
    CHECK(cuMemFree_v2(c));
    free(ptrs);
    free(image);
    printf("CHURN DONE\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "tiny") == 0) return tiny();
    if (argc >= 6 && strcmp(argv[1], "rounds") == 0)
        return rounds(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: %s tiny | rounds MODULE ROUNDS LAUNCHES ALLOCS\n", argv[0]);
    return 2;
}

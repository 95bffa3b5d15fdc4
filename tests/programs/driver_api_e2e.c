/* End-to-end check of the CUDA driver API: device queries, contexts, 64 MiB copies with a
 * checksum, memset, async copies on two streams ordered by events, module load and kernel
 * launches. Runs unchanged on NVIDIA's libcuda.so.1 and on ours.
 *
 * usage: driver_api_e2e MODULE [--no-kernel-check]
 *   MODULE: a cubin/fatbin/PTX holding extern "C" vecAdd(const float*, const float*, float*, int)
 *   --no-kernel-check: the simulator records launches without running them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "vgpu_cuda_min.h"
#include "check.h"

static int failures = 0;


#define EXPECT(cond, ...)                                                            \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                     \
            fprintf(stderr, __VA_ARGS__);                                            \
            fprintf(stderr, "\n");                                                   \
            failures++;                                                              \
        }                                                                            \
    } while (0)

static uint64_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ull; }
    return h;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s MODULE [--no-kernel-check]\n", argv[0]); return 2; }
    int kernel_check = !(argc > 2 && strcmp(argv[2], "--no-kernel-check") == 0);

    /* Device queries. */
    CHECK(cuInit(0));
    int version = 0, count = 0, sms = 0, major = 0;
    CHECK(cuDriverGetVersion(&version));
    CHECK(cuDeviceGetCount(&count));
    EXPECT(count >= 1, "device count %d", count);
    CUdevice dev;
    CHECK(cuDeviceGet(&dev, 0));
    char name[256];
    CHECK(cuDeviceGetName(name, sizeof name, dev));
    size_t total = 0;
    CHECK(cuDeviceTotalMem_v2(&total, dev));
    CHECK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    CHECK(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
    CUuuid uuid;
    CHECK(cuDeviceGetUuid(&uuid, dev));
    EXPECT(sms > 0 && major >= 7 && total > (1ull << 30), "sms=%d cc=%d total=%zu", sms, major, total);
    EXPECT(cuDeviceGetAttribute(&sms, 100000, dev) == CUDA_ERROR_INVALID_VALUE, "unknown attribute accepted");
    printf("device: %s, %d SMs, cc %d.x, %zu MiB, driver %d\n", name, sms, major, total >> 20, version);

    /* A created context, pushed and popped, then the primary context for the rest. */
    CUcontext created, popped, primary, cur;
    CHECK(cuCtxCreate_v2(&created, 0, dev));
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == created, "new context is not current");
    CHECK(cuCtxPopCurrent_v2(&popped));
    EXPECT(popped == created, "popped the wrong context");
    CHECK(cuCtxPushCurrent_v2(created));
    CUdeviceptr in_created;
    CHECK(cuMemAlloc_v2(&in_created, 1 << 20));
    CHECK(cuCtxPopCurrent_v2(&popped));
    CHECK(cuCtxDestroy_v2(created));
    CHECK(cuDevicePrimaryCtxRetain(&primary, dev));
    CHECK(cuCtxSetCurrent(primary));

    size_t free_b = 0, total_b = 0;
    CHECK(cuMemGetInfo_v2(&free_b, &total_b));
    EXPECT(free_b <= total_b && total_b > 0, "meminfo %zu/%zu", free_b, total_b);
    /* What the device says is free (the tests compare it with what other processes hold). */
    printf("meminfo: free %zu total %zu\n", free_b, total_b);

    /* 64 MiB there and back from ordinary memory, with a checksum. */
    const size_t big = 64u << 20;
    unsigned char *src = malloc(big), *back = malloc(big);
    for (size_t i = 0; i < big; i++) src[i] = (unsigned char)(i * 2654435761u >> 13);
    CUdeviceptr d_big, d_big2;
    CHECK(cuMemAlloc_v2(&d_big, big));
    CHECK(cuMemAlloc_v2(&d_big2, big));
    CHECK(cuMemcpyHtoD_v2(d_big, src, big));
    CHECK(cuMemcpyDtoD_v2(d_big2, d_big, big));
    memset(back, 0, big);
    CHECK(cuMemcpyDtoH_v2(back, d_big2, big));
    uint64_t h_src = fnv1a(src, big), h_back = fnv1a(back, big);
    EXPECT(h_src == h_back, "64 MiB round trip checksum %016llx != %016llx",
           (unsigned long long)h_back, (unsigned long long)h_src);
    printf("copy 64 MiB: checksum %016llx %s\n", (unsigned long long)h_back, h_src == h_back ? "ok" : "MISMATCH");
    if (getenv("E2E_HOLD")) { /* lets a test kill us while we hold device memory */
        printf("HOLDING\n");
        fflush(stdout);
        sleep(60);
    }

    /* Memset. */
    CHECK(cuMemsetD32_v2(d_big, 0xdeadbeef, 1024));
    CHECK(cuMemsetD8_v2(d_big + 4096, 0x5a, 100));
    uint32_t words[1024];
    unsigned char bytes[100];
    CHECK(cuMemcpyDtoH_v2(words, d_big, sizeof words));
    CHECK(cuMemcpyDtoH_v2(bytes, d_big + 4096, sizeof bytes));
    int ok = 1;
    for (int i = 0; i < 1024; i++) ok &= words[i] == 0xdeadbeef;
    for (int i = 0; i < 100; i++) ok &= bytes[i] == 0x5a;
    EXPECT(ok, "memset results wrong");

    /* Two streams ordered by an event, through pinned memory. */
    const size_t chunk = 16u << 20;
    unsigned char *pin_in, *pin_out;
    CHECK(cuMemAllocHost_v2((void **)&pin_in, chunk));
    CHECK(cuMemAllocHost_v2((void **)&pin_out, chunk));
    for (size_t i = 0; i < chunk; i++) pin_in[i] = (unsigned char)(i ^ (i >> 8));
    memset(pin_out, 0, chunk);
    CUstream s1, s2;
    CUevent e_start, e_copied, e_done;
    CHECK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CHECK(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
    CHECK(cuEventCreate(&e_start, 0));
    CHECK(cuEventCreate(&e_copied, 0));
    CHECK(cuEventCreate(&e_done, 0));
    CHECK(cuEventRecord(e_start, s1));
    CHECK(cuMemcpyHtoDAsync_v2(d_big, pin_in, chunk, s1));
    CHECK(cuEventRecord(e_copied, s1));
    CHECK(cuStreamWaitEvent(s2, e_copied, 0));
    CHECK(cuMemcpyDtoDAsync_v2(d_big2, d_big, chunk, s2));
    CHECK(cuMemcpyDtoHAsync_v2(pin_out, d_big2, chunk, s2));
    CHECK(cuEventRecord(e_done, s2));
    CHECK(cuEventSynchronize(e_done));
    CHECK(cuEventQuery(e_done));
    float ms = -1;
    CHECK(cuEventElapsedTime(&ms, e_start, e_done));
    EXPECT(ms >= 0, "elapsed %f", ms);
    EXPECT(memcmp(pin_in, pin_out, chunk) == 0, "two-stream pinned copy mismatch");
    printf("streams: 16 MiB through two streams and events in %.3f ms, %s\n", ms,
           memcmp(pin_in, pin_out, chunk) == 0 ? "ok" : "MISMATCH");
    /* Async copies from ordinary memory are ordered on their stream too. */
    CHECK(cuMemcpyHtoDAsync_v2(d_big, src, chunk, s1));
    CHECK(cuMemsetD32Async(d_big, 7, 16, s1));
    CHECK(cuMemcpyDtoHAsync_v2(back, d_big, chunk, s1));
    CHECK(cuStreamSynchronize(s1));
    EXPECT(((uint32_t *)back)[0] == 7 && memcmp(back + 64, src + 64, chunk - 64) == 0, "pageable async copies wrong");

    /* Module load and launches. */
    CUmodule mod;
    CHECK(cuModuleLoad(&mod, argv[1]));
    CUfunction vec_add, missing;
    CHECK(cuModuleGetFunction(&vec_add, mod, "vecAdd"));
    EXPECT(cuModuleGetFunction(&missing, mod, "noSuchKernel") == CUDA_ERROR_NOT_FOUND, "missing kernel found");
    const int n = 1 << 20;
    float *ha = malloc(n * sizeof(float)), *hb = malloc(n * sizeof(float)), *hc = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) { ha[i] = (float)i; hb[i] = 2.0f * (float)i; hc[i] = -1; }
    CUdeviceptr da, db, dc;
    CHECK(cuMemAlloc_v2(&da, n * sizeof(float)));
    CHECK(cuMemAlloc_v2(&db, n * sizeof(float)));
    CHECK(cuMemAlloc_v2(&dc, n * sizeof(float)));
    CHECK(cuMemcpyHtoD_v2(da, ha, n * sizeof(float)));
    CHECK(cuMemcpyHtoD_v2(db, hb, n * sizeof(float)));
    CHECK(cuMemsetD32_v2(dc, 0, n));
    int nn = n;
    void *params[] = {&da, &db, &dc, &nn};
    const int launches = 1000;
    for (int i = 0; i < launches; i++)
        CHECK(cuLaunchKernel(vec_add, (n + 255) / 256, 1, 1, 256, 1, 1, 0, s1, params, NULL));
    CHECK(cuStreamSynchronize(s1));
    CHECK(cuMemcpyDtoH_v2(hc, dc, n * sizeof(float)));
    if (kernel_check) {
        int bad = 0;
        for (int i = 0; i < n; i++) bad += hc[i] != 3.0f * (float)i;
        EXPECT(bad == 0, "vecAdd: %d wrong results", bad);
        printf("kernels: %d launches of vecAdd, results %s\n", launches, bad ? "WRONG" : "ok");
    } else {
        printf("kernels: %d launches of vecAdd accepted (not executed: --no-kernel-check)\n", launches);
    }

    /* Errors come back as errors. */
    EXPECT(cuMemcpyDtoH_v2(hc, 0x1234, 16) != CUDA_SUCCESS, "copy from a bogus pointer succeeded");
    CUdeviceptr huge;
    EXPECT(cuMemAlloc_v2(&huge, (size_t)1 << 50) != CUDA_SUCCESS, "1 PiB allocation succeeded");
    void *fn = NULL;
    int status = -1;
    CHECK(cuGetProcAddress_v2("cuMemAlloc", &fn, 13000, 0, &status));
    EXPECT(fn != NULL && status == 0, "cuGetProcAddress(cuMemAlloc) failed");

    /* Clean up. */
    CHECK(cuModuleUnload(mod));
    CHECK(cuMemFree_v2(da));
    CHECK(cuMemFree_v2(db));
    CHECK(cuMemFree_v2(dc));
    CHECK(cuMemFree_v2(d_big));
    CHECK(cuMemFree_v2(d_big2));
    CHECK(cuMemFreeHost(pin_in));
    CHECK(cuMemFreeHost(pin_out));
    CHECK(cuEventDestroy_v2(e_start));
    CHECK(cuEventDestroy_v2(e_copied));
    CHECK(cuEventDestroy_v2(e_done));
    CHECK(cuStreamDestroy_v2(s1));
    CHECK(cuStreamDestroy_v2(s2));
    CHECK(cuMemGetInfo_v2(&free_b, &total_b));
    printf("meminfo after freeing: free %zu total %zu\n", free_b, total_b);
    CHECK(cuDevicePrimaryCtxRelease_v2(dev));
    if (failures) { printf("E2E FAIL (%d)\n", failures); return 1; }
    printf("E2E PASS\n");
    return 0;
}

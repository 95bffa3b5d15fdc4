/* Keeps the GPU busy for a while with a known memory footprint (tests/gpu/telemetry.sh): loads
 * the vecAdd module, allocates FOOTPRINT_MIB MiB in three buffers (written, so the memory is
 * really taken), then launches vecAdd over them until SECONDS have passed, synchronising
 * every 64 launches; frees everything and exits.
 *
 * usage: gpu_busy MODULE FOOTPRINT_MIB SECONDS
 * prints: "ALLOCATED bytes=N" once the footprint is held, then "BUSY launches=N seconds=S"
 * and "FREED" at the end. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vgpu_cuda_min.h"
#include "check.h"

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *image = malloc((size_t)len + 1);
    if (fread(image, 1, (size_t)len, f) != (size_t)len) { perror(path); exit(2); }
    image[len] = 0;
    fclose(f);
    return image;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODULE FOOTPRINT_MIB SECONDS\n", argv[0]);
        return 2;
    }
    char *image = read_file(argv[1]);
    size_t footprint = (size_t)atol(argv[2]) << 20;
    double seconds = atof(argv[3]);
    primary_ctx(NULL);
    CUmodule m;
    CUfunction fn;
    CHECK(cuModuleLoadData(&m, image));
    CHECK(cuModuleGetFunction(&fn, m, "vecAdd"));
    /* Three equal buffers of floats: a + b -> c. */
    size_t each = footprint / 3 / 4 * 4;
    int n = (int)(each / sizeof(float));
    CUdeviceptr a, b, c;
    CHECK(cuMemAlloc_v2(&a, each));
    CHECK(cuMemAlloc_v2(&b, each));
    CHECK(cuMemAlloc_v2(&c, each));
    CHECK(cuMemsetD32_v2(a, 0x3f800000u, (size_t)n)); /* 1.0f */
    CHECK(cuMemsetD32_v2(b, 0x40000000u, (size_t)n)); /* 2.0f */
    CHECK(cuMemsetD32_v2(c, 0, (size_t)n));
    CHECK(cuCtxSynchronize());
    printf("ALLOCATED bytes=%zu\n", 3 * each);
    fflush(stdout);
    void *params[] = {&a, &b, &c, &n};
    unsigned blocks = (unsigned)((n + 255) / 256);
    double start = now_s();
    long launches = 0;
    while (now_s() - start < seconds) {
        for (int i = 0; i < 64; i++, launches++)
            CHECK(cuLaunchKernel(fn, blocks, 1, 1, 256, 1, 1, 0, NULL, params, NULL));
        CHECK(cuCtxSynchronize());
    }
    printf("BUSY launches=%ld seconds=%.1f\n", launches, now_s() - start);
    CHECK(cuMemFree_v2(a));
    CHECK(cuMemFree_v2(b));
    CHECK(cuMemFree_v2(c));
    CHECK(cuModuleUnload(m));
    printf("FREED\n");
    free(image);
    return 0;
}

// Copy bandwidth over sizes 4 KiB .. 1 GiB, pinned and pageable, both directions.
#include "common.h"
#include <string.h>
static double gbps(size_t bytes, double us) { return bytes / us / 1e3; }
int main() {
    init_ctx();
    const size_t max = 1ull << 30;
    void *pinned, *pageable = malloc(max);
    memset(pageable, 1, max);
    CK(cuMemAllocHost(&pinned, max));
    memset(pinned, 2, max);
    CUdeviceptr d;
    CK(cuMemAlloc(&d, max));
    size_t sizes[] = {4ull << 10, 64ull << 10, 1ull << 20, 16ull << 20, 256ull << 20, 1ull << 30};
    for (size_t s : sizes) {
        int reps = s <= (1 << 20) ? 200 : (s <= (16 << 20) ? 20 : 4);
        for (int kind = 0; kind < 2; kind++) {
            void *h = kind == 0 ? pinned : pageable;
            const char *name = kind == 0 ? "pinned" : "pageable";
            CK(cuMemcpyHtoD(d, h, s));
            double t0 = now_us();
            for (int r = 0; r < reps; r++) CK(cuMemcpyHtoD(d, h, s));
            double t1 = now_us();
            for (int r = 0; r < reps; r++) CK(cuMemcpyDtoH(h, d, s));
            double t2 = now_us();
            printf("TIME bw_%s_h2d_%zuK_GBps=%.2f\n", name, s >> 10, gbps(s * reps, t1 - t0));
            printf("TIME bw_%s_d2h_%zuK_GBps=%.2f\n", name, s >> 10, gbps(s * reps, t2 - t1));
        }
    }
    printf("RESULT bandwidth=done\n");
    return 0;
}

// Round-trip cost of synchronous calls: N rounds of cuCtxSynchronize and of a 4-byte
// cuMemcpyHtoD + cuMemcpyDtoH pair; prints microseconds per call (median of 5 batches), the
// figure that the daemon's process model changes (one more hop per message).
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "vgpu_cuda_min.h"
#include "check.h"

#define CK CHECK

static double now_us(void) { return now_s() * 1e6; }
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    CUdevice dev; CUcontext ctx; CUdeviceptr d; unsigned v = 7, back = 0;
    CK(cuInit(0)); CK(cuDeviceGet(&dev, 0)); CK(cuCtxCreate_v2(&ctx, 0, dev));
    CK(cuMemAlloc_v2(&d, 4));
    double sync[5], copy[5];
    for (int b = 0; b < 5; b++) {
        double t0 = now_us();
        for (int i = 0; i < n; i++) CK(cuCtxSynchronize());
        double t1 = now_us();
        for (int i = 0; i < n; i++) { CK(cuMemcpyHtoD_v2(d, &v, 4)); CK(cuMemcpyDtoH_v2(&back, d, 4)); }
        double t2 = now_us();
        sync[b] = (t1 - t0) / n; copy[b] = (t2 - t1) / (2.0 * n);
    }
    qsort(sync, 5, sizeof sync[0], cmp); qsort(copy, 5, sizeof copy[0], cmp);
    printf("RESULT copy_value=%u\n", back);
    printf("TIME sync_us=%.2f\nTIME copy4_us=%.2f\n", sync[2], copy[2]);
    return back == v ? 0 : 1;
}

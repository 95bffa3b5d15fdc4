/* Work queued while the device is busy reaches it without another CUDA call: the program
 * queues a memset (sent at once; the test has stopped the daemon, so it stays in flight) and
 * a copy back into pinned memory (kept back in the batch: the device is busy), then waits for
 * the copy's bytes by reading the pinned memory, as programs that poll mapped memory do,
 * making no CUDA call.
 *
 * usage: held_batch   (READY, then QUEUED after a line on stdin; then "ARRIVED ms=N" or
 * "NEVER" after another line) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "vgpu_cuda_min.h"
#define CHECK_EXIT 2
#include "check.h"

static double now_ms(void) { return now_s() * 1e3; }

int main(void) {
    CUdevice dev;
    CUstream s;
    CUdeviceptr d;
    volatile uint32_t *pinned;
    char line[64];
    primary_ctx(&dev);
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CHECK(cuMemAlloc_v2(&d, 4096));
    CHECK(cuMemAllocHost_v2((void **)&pinned, 4096));
    memset((void *)pinned, 0, 4096);
    printf("READY\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 3;

    CHECK(cuMemsetD32Async(d, 0x5eed, 1024, s));
    CHECK(cuMemcpyDtoHAsync_v2((void *)pinned, d, 4096, s));
    printf("QUEUED\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 3;

    double start = now_ms();
    while (pinned[1023] != 0x5eed && now_ms() - start < 5000) {
    }
    if (pinned[1023] == 0x5eed)
        printf("ARRIVED ms=%.1f\n", now_ms() - start);
    else
        printf("NEVER\n");
    fflush(stdout);
    CHECK(cuStreamSynchronize(s));
    return pinned[1023] == 0x5eed ? 0 : 1;
}

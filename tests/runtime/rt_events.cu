// Events: timing between events, cudaEventQuery / cudaEventSynchronize, events without timing,
// blocking-sync events, and cross-stream ordering with cudaStreamWaitEvent (a consumer stream
// must see what a slow producer stream wrote).
#include "common.h"

// Spins for about `cycles` clock cycles, then writes a value derived from `seed`.
__global__ void slow_producer(int *out, int n, long long cycles, int seed) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = (int)(hash32(i + seed) & 0xffff);
}

__global__ void consumer(const int *in, int *out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = in[i] * 3 + 1;
}

int main() {
    Timer wall;
    const int n = 1 << 18, rounds = 8;
    int *prod, *cons, *h;
    CK(cudaMalloc(&prod, n * sizeof(int)));
    CK(cudaMalloc(&cons, n * sizeof(int)));
    CK(cudaMallocHost(&h, n * sizeof(int)));
    cudaStream_t s1, s2;
    CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaEvent_t start, stop, produced, notiming, blocking;
    CK(cudaEventCreate(&start));
    CK(cudaEventCreate(&stop));
    CK(cudaEventCreateWithFlags(&produced, cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&notiming, cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&blocking, cudaEventBlockingSync | cudaEventDisableTiming));

    // An event never recorded is complete.
    CK(cudaEventQuery(start));

    uint64_t sum = 0;
    int not_ready_seen = 0;
    CK(cudaEventRecord(start, s1));
    for (int r = 0; r < rounds; r++) {
        CK(cudaMemsetAsync(cons, 0, n * sizeof(int), s2));
        slow_producer<<<64, 256, 0, s1>>>(prod, n, 2000000, r);
        CK(cudaGetLastError());
        CK(cudaEventRecord(produced, s1));
        cudaError_t q = cudaEventQuery(produced);  // usually not ready yet: the kernel spins
        EXPECT(q == cudaSuccess || q == cudaErrorNotReady);
        if (q == cudaErrorNotReady) not_ready_seen++;
        (void)cudaGetLastError();
        CK(cudaStreamWaitEvent(s2, produced, 0));
        consumer<<<64, 256, 0, s2>>>(prod, cons, n);
        CK(cudaGetLastError());
        CK(cudaMemcpyAsync(h, cons, n * sizeof(int), cudaMemcpyDeviceToHost, s2));
        CK(cudaEventRecord(blocking, s2));
        CK(cudaEventSynchronize(blocking));
        CK(cudaEventQuery(blocking));
        CK(cudaEventQuery(produced));
        if (kernels_run())
            for (int i = 0; i < n; i++) EXPECT(h[i] == (int)(hash32(i + r) & 0xffff) * 3 + 1);
        sum += checksum(h, n * sizeof(int));
    }
    CK(cudaEventRecord(stop, s1));
    CK(cudaEventSynchronize(stop));
    float ms = -1;
    CK(cudaEventElapsedTime(&ms, start, stop));
    EXPECT(ms >= 0);
    // Both orders of the same pair: the reverse is negative (or zero).
    float back = 1;
    CK(cudaEventElapsedTime(&back, stop, start));
    EXPECT(back <= 0);
    // Events created without timing cannot be timed.
    CK(cudaEventRecord(notiming, s1));
    CK(cudaEventSynchronize(notiming));
    float dummy = 0;
    EXPECT_ERR_ON_GPU(cudaEventElapsedTime(&dummy, start, notiming), cudaErrorInvalidResourceHandle);

    // Default-stream ordering with a legacy event on stream 0.
    cudaEvent_t e0;
    CK(cudaEventCreate(&e0));
    CK(cudaEventRecord(e0, 0));
    CK(cudaEventSynchronize(e0));
    CK(cudaStreamWaitEvent(s1, e0, 0));
    CK(cudaStreamSynchronize(s1));

    result_hex("events_checksum", sum);
    result_int("events_rounds", rounds);
    result_int("events_reverse_nonpositive", back <= 0);
    std::printf("INFO not-ready queries seen: %d of %d\n", not_ready_seen, rounds);
    for (cudaEvent_t e : {start, stop, produced, notiming, blocking, e0}) CK(cudaEventDestroy(e));
    CK(cudaStreamDestroy(s1));
    CK(cudaStreamDestroy(s2));
    CK(release_all(cudaFree, prod, cons));
    CK(cudaFreeHost(h));
    time_ms("events_elapsed_ms", ms);
    return pass("rt_events", wall);
}

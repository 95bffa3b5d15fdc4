// Streams, events, pinned memory, async copies and memsets, host functions, pointer
// attributes and occupancy through the CUDA runtime.
#include "common.h"

__global__ void scale(int *v, int n, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] *= k;
}

static int host_fn_calls = 0;
static void CUDART_CB on_host(void *p) { host_fn_calls += *(int *)p; }

int main() {
    const int n = 1 << 20, chunks = 4, per = n / chunks;
    int *h, *back, *d;
    CK(cudaMallocHost(&h, n * sizeof(int)));
    CK(cudaHostAlloc(&back, n * sizeof(int), cudaHostAllocDefault));
    CK(cudaMalloc(&d, n * sizeof(int)));
    for (int i = 0; i < n; i++) h[i] = i;

    cudaPointerAttributes pa;
    CK(cudaPointerGetAttributes(&pa, d));
    EXPECT(pa.type == cudaMemoryTypeDevice && pa.device == 0);
    CK(cudaPointerGetAttributes(&pa, h));
    EXPECT(pa.type == cudaMemoryTypeHost);

    cudaStream_t s[chunks];
    cudaEvent_t start, stop;
    CK(cudaEventCreate(&start));
    CK(cudaEventCreate(&stop));
    int lo = 0, hi = 0;
    CK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    for (int c = 0; c < chunks; c++) CK(cudaStreamCreateWithPriority(&s[c], cudaStreamNonBlocking, hi));
    CK(cudaEventRecord(start, s[0]));
    for (int c = 0; c < chunks; c++) {
        int off = c * per;
        CK(cudaMemcpyAsync(d + off, h + off, per * sizeof(int), cudaMemcpyHostToDevice, s[c]));
        scale<<<(per + 255) / 256, 256, 0, s[c]>>>(d + off, per, 3);
        CK(cudaGetLastError());
        CK(cudaMemcpyAsync(back + off, d + off, per * sizeof(int), cudaMemcpyDeviceToHost, s[c]));
    }
    int one = 1;
    CK(cudaLaunchHostFunc(s[0], on_host, &one));
    for (int c = 1; c < chunks; c++) {
        cudaEvent_t e;
        CK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        CK(cudaEventRecord(e, s[c]));
        CK(cudaStreamWaitEvent(s[0], e, 0));
        CK(cudaEventDestroy(e));
    }
    CK(cudaEventRecord(stop, s[0]));
    CK(cudaEventSynchronize(stop));
    for (int c = 0; c < chunks; c++) CK(cudaStreamSynchronize(s[c]));
    float ms = -1;
    CK(cudaEventElapsedTime(&ms, start, stop));
    EXPECT(ms >= 0);
    EXPECT(host_fn_calls == 1);
    if (kernels_run())
        for (int i = 0; i < n; i++) EXPECT(back[i] == 3 * i);
    else
        for (int i = 0; i < n; i++) EXPECT(back[i] == i);

    // Memset on a stream, then the default stream.
    CK(cudaMemsetAsync(d, 0x01, n * sizeof(int), s[1]));
    CK(cudaStreamSynchronize(s[1]));
    CK(cudaMemcpy(back, d, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) EXPECT(back[i] == 0x01010101);
    EXPECT(cudaStreamQuery(s[1]) == cudaSuccess);

    int blocks = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, scale, 256, 0));
    EXPECT(blocks > 0);
    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    EXPECT(total_b > 0 && free_b <= total_b);

    for (int c = 0; c < chunks; c++) CK(cudaStreamDestroy(s[c]));
    CK(cudaEventDestroy(start));
    CK(cudaEventDestroy(stop));
    CK(cudaFree(d));
    CK(release_all(cudaFreeHost, h, back));
    CK(cudaDeviceReset());
    std::printf("PASS rt_streams (%.3f ms)\n", ms);
    return 0;
}

// A multi-stream pipeline: chunks go HtoD, through saxpy, back DtoH on 4 streams, ordered by
// events, from pinned memory.
#include "common.h"
int main(int argc, char **argv) {
    init_ctx();
    CUmodule m = load_module(argc > 1 ? argv[1] : "kernels.cubin");
    CUfunction f;
    CK(cuModuleGetFunction(&f, m, "saxpy"));
    const int streams = 4, chunks = 32, chunk_n = 4 << 20;
    size_t chunk_bytes = (size_t)chunk_n * 4, total = chunk_bytes * chunks;
    float *hx, *hy;
    CK(cuMemAllocHost((void **)&hx, total));
    CK(cuMemAllocHost((void **)&hy, total));
    for (size_t i = 0; i < total / 4; i++) { hx[i] = (float)(i % 977); hy[i] = (float)(i % 13); }
    CUstream s[streams];
    CUdeviceptr dx[streams], dy[streams];
    CUevent done[chunks];
    for (int i = 0; i < streams; i++) {
        CK(cuStreamCreate(&s[i], CU_STREAM_NON_BLOCKING));
        CK(cuMemAlloc(&dx[i], chunk_bytes)); CK(cuMemAlloc(&dy[i], chunk_bytes));
    }
    CUevent start, stop;
    CK(cuEventCreate(&start, 0)); CK(cuEventCreate(&stop, 0));
    CK(cuEventRecord(start, s[0]));
    for (int c = 0; c < chunks; c++) {
        int k = c % streams;
        if (c >= streams) CK(cuStreamWaitEvent(s[k], done[c - streams], 0));
        CK(cuEventCreate(&done[c], 0));
        CK(cuMemcpyHtoDAsync(dx[k], hx + (size_t)c * chunk_n, chunk_bytes, s[k]));
        CK(cuMemcpyHtoDAsync(dy[k], hy + (size_t)c * chunk_n, chunk_bytes, s[k]));
        float a = 2.0f;
        int n = chunk_n;
        void *args[] = {&a, &dx[k], &dy[k], &n};
        CK(cuLaunchKernel(f, chunk_n / 256, 1, 1, 256, 1, 1, 0, s[k], args, 0));
        CK(cuMemcpyDtoHAsync(hy + (size_t)c * chunk_n, dy[k], chunk_bytes, s[k]));
        CK(cuEventRecord(done[c], s[k]));
    }
    for (int i = 0; i < streams; i++) CK(cuStreamWaitEvent(s[0], done[chunks - 1 - i], 0));
    CK(cuEventRecord(stop, s[0]));
    CK(cuEventSynchronize(stop));
    float ms;
    CK(cuEventElapsedTime(&ms, start, stop));
    printf("RESULT pipeline_hash=%016llx\n", (unsigned long long)fnv1a(hy, total));
    printf("TIME pipeline_ms=%.3f\n", ms);
    return 0;
}

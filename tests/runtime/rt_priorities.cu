// Stream priorities: cudaDeviceGetStreamPriorityRange, streams created at the lowest and the
// highest priority (and out of range, which the runtime clamps), cudaStreamGetPriority and
// cudaStreamGetFlags read back; work on both kinds of stream is verified.
#include "common.h"
#include <vector>

__global__ void mix(int *v, int n, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] = (v[i] ^ (k * 2654435761u)) + k;
}

int main() {
    Timer wall;
    int least = 0, greatest = 0;
    CK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    result_int("priority_least", least);
    result_int("priority_greatest", greatest);
    EXPECT(greatest <= least);

    cudaStream_t lo, hi, clamped_lo, clamped_hi, plain;
    CK(cudaStreamCreateWithPriority(&lo, cudaStreamNonBlocking, least));
    CK(cudaStreamCreateWithPriority(&hi, cudaStreamDefault, greatest));
    CK(cudaStreamCreateWithPriority(&clamped_lo, cudaStreamNonBlocking, least + 10));
    CK(cudaStreamCreateWithPriority(&clamped_hi, cudaStreamNonBlocking, greatest - 10));
    CK(cudaStreamCreate(&plain));
    const char *names[] = {"lo", "hi", "clamped_lo", "clamped_hi", "plain"};
    cudaStream_t ss[] = {lo, hi, clamped_lo, clamped_hi, plain};
    char key[64];
    for (int i = 0; i < 5; i++) {
        int p = 12345;
        unsigned int f = 12345;
        CK(cudaStreamGetPriority(ss[i], &p));
        CK(cudaStreamGetFlags(ss[i], &f));
        std::snprintf(key, sizeof key, "stream_%s_priority", names[i]);
        result_int(key, p);
        std::snprintf(key, sizeof key, "stream_%s_flags", names[i]);
        result_int(key, f);
    }
    int p0 = 12345;
    CK(cudaStreamGetPriority(0, &p0));
    result_int("stream_null_priority", p0);

    // Work on every stream; each stream owns one buffer.
    const int n = 1 << 16, rounds = 20;
    std::vector<int *> d(5);
    std::vector<int> h(n);
    for (int i = 0; i < 5; i++) {
        CK(cudaMalloc(&d[i], n * sizeof(int)));
        CK(cudaMemsetAsync(d[i], 0, n * sizeof(int), ss[i]));
    }
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < 5; i++) mix<<<n / 256, 256, 0, ss[i]>>>(d[i], n, r + i);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    for (int i = 0; i < 5; i++) {
        CK(cudaMemcpy(h.data(), d[i], n * sizeof(int), cudaMemcpyDeviceToHost));
        if (kernels_run())
            for (int j = 0; j < n; j++) {
                unsigned v = 0;
                for (int r = 0; r < rounds; r++) v = (v ^ ((unsigned)(r + i) * 2654435761u)) + (r + i);
                EXPECT((unsigned)h[j] == v);
            }
        std::snprintf(key, sizeof key, "stream_%s_checksum", names[i]);
        result_hex(key, checksum(h.data(), n * sizeof(int)));
        CK(cudaFree(d[i]));
    }
    for (cudaStream_t s : ss) CK(cudaStreamDestroy(s));
    return pass("rt_priorities", wall);
}

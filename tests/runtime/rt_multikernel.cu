// Many small launches: 10,000 launches of three alternating kernels on the default stream,
// then 10,000 on a non-blocking stream with a synchronisation every 1,000; integer results
// checked against the host model. Measures launch throughput.
#include "common.h"

__global__ void add(int *v, int k) { v[threadIdx.x] += k; }
__global__ void xor_k(int *v, int k) { v[threadIdx.x] ^= k; }
__global__ void mul(int *v, int k) { v[threadIdx.x] = v[threadIdx.x] * k & 0xffffff; }

int main() {
    Timer wall;
    const int launches = 10000;
    int *d, h[64], want[64];
    CK(cudaMalloc(&d, sizeof h));
    CK(cudaMemset(d, 0, sizeof h));
    std::memset(want, 0, sizeof want);

    Timer t;
    for (int l = 0; l < launches; l++) {
        switch (l % 3) {
        case 0: add<<<1, 64>>>(d, l % 97); break;
        case 1: xor_k<<<1, 64>>>(d, l % 97); break;
        default: mul<<<1, 64>>>(d, (l % 97) | 1); break;
        }
    }
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    double default_ms = t.ms();
    CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int l = 0; l < launches; l++)
        for (int i = 0; i < 64; i++) {
            int k = l % 97;
            switch (l % 3) {
            case 0: want[i] += k; break;
            case 1: want[i] ^= k; break;
            default: want[i] = want[i] * (k | 1) & 0xffffff; break;
            }
        }
    if (kernels_run()) EXPECT(std::memcmp(h, want, sizeof h) == 0);
    result_hex("multikernel_default_checksum", checksum(h, sizeof h));

    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaMemsetAsync(d, 0, sizeof h, s));
    t.reset();
    for (int l = 0; l < launches; l++) {
        add<<<1, 64, 0, s>>>(d, 1);
        if (l % 1000 == 999) CK(cudaStreamSynchronize(s));
    }
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(s));
    double stream_ms = t.ms();
    CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    if (kernels_run())
        for (int i = 0; i < 64; i++) EXPECT(h[i] == launches);
    result_int("multikernel_stream_value", h[0]);
    result_int("multikernel_launches", 2 * launches);
    CK(cudaStreamDestroy(s));
    CK(cudaFree(d));
    time_ms("multikernel_10k_default_ms", default_ms);
    time_ms("multikernel_10k_stream_ms", stream_ms);
    std::printf("INFO %.2f us per launch (default stream)\n", default_ms * 1000.0 / launches);
    return pass("rt_multikernel", wall);
}

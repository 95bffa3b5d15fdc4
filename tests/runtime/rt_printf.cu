// Device printf: one thread prints several formatted lines, then thread 0 of each of four
// blocks prints one line after a __syncthreads (the order across blocks is not fixed; the GPU
// suite compares the DEVPRINTF lines sorted). The lines must reach stdout by the time
// cudaDeviceSynchronize returns; the program then prints its RESULT lines.
#include "common.h"

__global__ void one_thread_prints(int base) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        for (int i = 0; i < 5; i++) printf("DEVPRINTF single line=%d value=%d\n", i, base + i * i);
        printf("DEVPRINTF formats d=%d u=%u lld=%lld x=%x s=%s c=%c f=%.3f e=%.2e\n", -42, 4000000000u,
               -1234567890123ll, 0xbeefu, "str", 'Z', 1.25, 65536.0);
    }
}

__global__ void per_block_prints(int *data) {
    __shared__ int sum;
    if (threadIdx.x == 0) sum = 0;
    __syncthreads();
    atomicAdd(&sum, data[blockIdx.x * blockDim.x + threadIdx.x]);
    __syncthreads();
    if (threadIdx.x == 0) printf("DEVPRINTF block=%d sum=%d\n", blockIdx.x, sum);
}

int main() {
    Timer wall;
    size_t fifo = 0;
    CK(cudaDeviceSetLimit(cudaLimitPrintfFifoSize, 4 << 20));
    CK(cudaDeviceGetLimit(&fifo, cudaLimitPrintfFifoSize));
    EXPECT(fifo >= (4u << 20));
    std::printf("RESULT printf_fifo_ge_4MiB=%d\n", fifo >= (4u << 20));
    std::fflush(stdout);

    const int blocks = 4, threads = 64;
    int h[blocks * threads], *d;
    for (int i = 0; i < blocks * threads; i++) h[i] = i;
    CK(cudaMalloc(&d, sizeof h));
    CK(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice));
    one_thread_prints<<<2, 32>>>(100);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    per_block_prints<<<blocks, threads>>>(d);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::fflush(stdout);
    // A printing kernel on a stream, synchronised by the stream.
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    one_thread_prints<<<1, 1, 0, s>>>(7);
    CK(cudaStreamSynchronize(s));
    CK(cudaStreamDestroy(s));
    CK(cudaFree(d));
    result_int("printf_kernels", 3);
    result_int("printf_lines_expected", 6 + blocks + 6);
    return pass("rt_printf", wall);
}

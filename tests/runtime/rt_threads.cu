// Four host threads share the device, each with its own non-blocking stream, pinned buffers
// and device memory: async copies and kernels in a loop, each thread verifying its own data.
// Results are printed after join, in thread order.
#include "common.h"
#include <thread>
#include <vector>

__global__ void affine(int *v, int n, int a, int b) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] = (v[i] * a + b) & 0x7fffffff;
}

struct Out {
    uint64_t sum = 0;
    int ok = 0;
    double ms = 0;
};

static void worker(int id, Out *o) {
    Timer t;
    CK(cudaSetDevice(0));
    const int n = (1 << 18) + id * 1000, iters = 50;
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int *h, *d;
    CK(cudaMallocHost(&h, n * sizeof(int)));
    CK(cudaMalloc(&d, n * sizeof(int)));
    std::vector<int> want(n);
    uint64_t sum = 0;
    int ok = 1;
    for (int it = 0; it < iters; it++) {
        for (int i = 0; i < n; i++) h[i] = (int)(hash32(i * 4 + id + it * 7919) & 0xffff);
        for (int i = 0; i < n; i++) want[i] = (((h[i] * 3 + id) & 0x7fffffff) * 5 + it) & 0x7fffffff;
        CK(cudaMemcpyAsync(d, h, n * sizeof(int), cudaMemcpyHostToDevice, s));
        affine<<<(n + 255) / 256, 256, 0, s>>>(d, n, 3, id);
        affine<<<(n + 255) / 256, 256, 0, s>>>(d, n, 5, it);
        CK(cudaGetLastError());
        CK(cudaMemcpyAsync(h, d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        if (kernels_run() && std::memcmp(h, want.data(), n * sizeof(int)) != 0) ok = 0;
        sum = checksum(h, n * sizeof(int), sum);
    }
    CK(cudaStreamDestroy(s));
    CK(cudaFreeHost(h));
    CK(cudaFree(d));
    o->sum = sum;
    o->ok = ok;
    o->ms = t.ms();
}

int main() {
    Timer wall;
    const int nthreads = 4;
    CK(cudaFree(0));  // initialise the runtime before the threads race for it
    Out outs[nthreads];
    std::vector<std::thread> ts;
    for (int i = 0; i < nthreads; i++) ts.emplace_back(worker, i, &outs[i]);
    for (auto &t : ts) t.join();
    char key[64];
    for (int i = 0; i < nthreads; i++) {
        EXPECT(outs[i].ok == 1);
        std::snprintf(key, sizeof key, "thread%d_checksum", i);
        result_hex(key, outs[i].sum);
        std::printf("INFO thread %d: %.3f ms\n", i, outs[i].ms);
    }
    result_int("threads_ok", nthreads);
    return pass("rt_threads", wall);
}

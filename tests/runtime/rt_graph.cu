// CUDA graphs by stream capture: capture kernels, a device-to-device copy and a memset on a
// stream, instantiate, launch the graph 10 times, and check the result against the host.
#include "common.h"
#include <vector>

__global__ void step(int *x, int n, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = (x[i] * 3 + k + i) & 0xffffff;
}
__global__ void combine(const int *x, const int *y, int *z, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) z[i] = (x[i] ^ y[i]) + z[i];
}

int main() {
    Timer wall;
    const int n = 1 << 16, launches = 10, threads = 256, blocks = (n + threads - 1) / threads;
    int *x, *y, *z;
    CK(cudaMalloc(&x, n * sizeof(int)));
    CK(cudaMalloc(&y, n * sizeof(int)));
    CK(cudaMalloc(&z, n * sizeof(int)));
    int *h = (int *)std::malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) h[i] = i % 1000;
    CK(cudaMemcpy(x, h, n * sizeof(int), cudaMemcpyHostToDevice));
    CK(cudaMemset(z, 0, n * sizeof(int)));

    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaStreamCaptureStatus st;
    CK(cudaStreamIsCapturing(s, &st));
    EXPECT(st == cudaStreamCaptureStatusNone);
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CK(cudaStreamIsCapturing(s, &st));
    EXPECT(st == cudaStreamCaptureStatusActive);
    step<<<blocks, threads, 0, s>>>(x, n, 1);
    step<<<blocks, threads, 0, s>>>(x, n, 2);
    CK(cudaMemcpyAsync(y, x, n * sizeof(int), cudaMemcpyDeviceToDevice, s));
    step<<<blocks, threads, 0, s>>>(y, n, 3);
    combine<<<blocks, threads, 0, s>>>(x, y, z, n);
    CK(cudaMemsetAsync(y, 0, n * sizeof(int), s));
    CK(cudaGetLastError());
    cudaGraph_t g;
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaStreamIsCapturing(s, &st));
    EXPECT(st == cudaStreamCaptureStatusNone);
    cudaGraphExec_t e;
    CK(cudaGraphInstantiate(&e, g, 0));

    Timer t;
    for (int r = 0; r < launches; r++) CK(cudaGraphLaunch(e, s));
    CK(cudaStreamSynchronize(s));
    double launch_ms = t.ms();

    // Nothing ran during capture; the host model of 10 launches.
    std::vector<int> hx(n), hy(n), hz(n, 0);
    for (int i = 0; i < n; i++) hx[i] = i % 1000;
    for (int r = 0; r < launches; r++)
        for (int i = 0; i < n; i++) {
            hx[i] = (hx[i] * 3 + 1 + i) & 0xffffff;
            hx[i] = (hx[i] * 3 + 2 + i) & 0xffffff;
            hy[i] = (hx[i] * 3 + 3 + i) & 0xffffff;
            hz[i] = (hx[i] ^ hy[i]) + hz[i];
        }
    CK(cudaMemcpy(h, z, n * sizeof(int), cudaMemcpyDeviceToHost));
    if (kernels_run())
        for (int i = 0; i < n; i++) EXPECT(h[i] == hz[i]);
    result_hex("graph_z_checksum", checksum(h, n * sizeof(int)));
    CK(cudaMemcpy(h, y, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) EXPECT(h[i] == 0);  // the captured memset ran last
    CK(cudaMemcpy(h, x, n * sizeof(int), cudaMemcpyDeviceToHost));
    result_hex("graph_x_checksum", checksum(h, n * sizeof(int)));
    result_int("graph_launches", launches);

    CK(cudaGraphExecDestroy(e));
    CK(cudaGraphDestroy(g));
    CK(cudaStreamDestroy(s));
    CK(release_all(cudaFree, x, y, z));
    std::free(h);
    time_ms("graph_10_launches_ms", launch_ms);
    return pass("rt_graph", wall);
}

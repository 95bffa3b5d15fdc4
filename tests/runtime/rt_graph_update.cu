// CUDA graph update: a graph captured from a stream is instantiated once; a second capture of
// the same shape with new kernel arguments and a new buffer updates it in place
// (cudaGraphExecUpdate) and the relaunch uses them; a capture of another shape is refused with
// cudaErrorGraphExecUpdateFailure and the reason "topology changed".
#include "common.h"
#include <vector>

__global__ void axpb(int *v, int n, int a, int b) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] = v[i] * a + b;
}

static cudaGraph_t capture(cudaStream_t s, int *d, int n, int a, int b, int kernels) {
    cudaGraph_t g;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int k = 0; k < kernels; k++) axpb<<<(n + 255) / 256, 256, 0, s>>>(d, n, a, b);
    CK(cudaStreamEndCapture(s, &g));
    return g;
}

int main() {
    Timer wall;
    const int n = 1 << 16;
    std::vector<int> h(n), back(n);
    for (int i = 0; i < n; i++) h[i] = i % 1000;
    int *d1, *d2;
    CK(cudaMalloc(&d1, n * sizeof(int)));
    CK(cudaMalloc(&d2, n * sizeof(int)));
    CK(cudaMemcpy(d1, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d2, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    cudaGraph_t g1 = capture(s, d1, n, 2, 1, 1);
    cudaGraphExec_t exec;
    CK(cudaGraphInstantiate(&exec, g1, 0));
    CK(cudaGraphLaunch(exec, s));
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(back.data(), d1, n * sizeof(int), cudaMemcpyDeviceToHost));
    if (kernels_run())
        for (int i = 0; i < n; i++) EXPECT(back[i] == h[i] * 2 + 1);
    result_hex("graph_first_checksum", checksum(back.data(), n * sizeof(int)));

    // Same shape, new arguments and buffer: updated in place.
    cudaGraph_t g2 = capture(s, d2, n, 3, 5, 1);
    cudaGraphExecUpdateResultInfo info;
    cudaError_t e = cudaGraphExecUpdate(exec, g2, &info);
    result_int("update_same_shape_error", (int)e);
    result_int("update_same_shape_result", (int)info.result);
    EXPECT(e == cudaSuccess && info.result == cudaGraphExecUpdateSuccess);
    for (int r = 0; r < 2; r++) CK(cudaGraphLaunch(exec, s));
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(back.data(), d2, n * sizeof(int), cudaMemcpyDeviceToHost));
    if (kernels_run())
        for (int i = 0; i < n; i++) EXPECT(back[i] == (h[i] * 3 + 5) * 3 + 5);
    result_hex("graph_updated_checksum", checksum(back.data(), n * sizeof(int)));
    // The first buffer was not touched by the updated graph.
    CK(cudaMemcpy(back.data(), d1, n * sizeof(int), cudaMemcpyDeviceToHost));
    result_hex("graph_first_buffer_after_update", checksum(back.data(), n * sizeof(int)));

    // Another shape: refused, and the executable graph still works as updated.
    cudaGraph_t g3 = capture(s, d2, n, 1, 1, 2);
    e = cudaGraphExecUpdate(exec, g3, &info);
    result_int("update_new_shape_error", (int)e);
    result_int("update_new_shape_result", (int)info.result);
    EXPECT(e == cudaErrorGraphExecUpdateFailure);
    EXPECT(info.result == cudaGraphExecUpdateErrorTopologyChanged);
    (void)cudaGetLastError();

    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(g1));
    CK(cudaGraphDestroy(g2));
    CK(cudaGraphDestroy(g3));
    CK(cudaStreamDestroy(s));
    CK(release_all(cudaFree, d1, d2));
    return pass("rt_graph_update", wall);
}

// Occupancy and function attributes: cudaOccupancyMaxPotentialBlockSize (fixed and
// block-size-dependent dynamic shared memory), cudaOccupancyMaxActiveBlocksPerMultiprocessor,
// cudaOccupancyAvailableDynamicSMemPerBlock and cudaFuncGetAttributes of kernels with and
// without __launch_bounds__ and static shared memory; then a launch with the suggested shape.
#include "common.h"
#include <vector>

__global__ void plain(float *v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] = v[i] * 2.0f + 1.0f;
}

__global__ void __launch_bounds__(128) bounded(float *v, int n) {
    __shared__ float tile[128 * 4];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? v[i] : 0.0f;
    __syncthreads();
    if (i < n) v[i] = tile[threadIdx.x] + tile[(threadIdx.x + 1) % blockDim.x];
}

__global__ void dyn(float *v, int n) {
    extern __shared__ float s[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? v[i] : 0.0f;
    __syncthreads();
    if (i < n) v[i] = s[blockDim.x - 1 - threadIdx.x];
}

struct SmemPerThread {
    __host__ __device__ size_t operator()(int block) const { return (size_t)block * sizeof(float); }
};

template <typename K> static void attrs(const char *name, K k) {
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, k));
    char key[96];
    std::snprintf(key, sizeof key, "%s_maxThreadsPerBlock", name);
    result_int(key, fa.maxThreadsPerBlock);
    std::snprintf(key, sizeof key, "%s_sharedSizeBytes", name);
    result_int(key, (long long)fa.sharedSizeBytes);
    std::snprintf(key, sizeof key, "%s_binaryVersion", name);
    result_int(key, fa.binaryVersion);
    std::printf("INFO %s: %d registers, %zu local bytes, ptx %d\n", name, fa.numRegs, fa.localSizeBytes,
                fa.ptxVersion);
}

int main() {
    Timer wall;
    attrs("plain", plain);
    attrs("bounded", bounded);
    attrs("dyn", dyn);

    int min_grid = 0, block = 0;
    CK(cudaOccupancyMaxPotentialBlockSize(&min_grid, &block, plain, 0, 0));
    result_int("plain_potential_block", block);
    result_int("plain_min_grid", min_grid);
    int bmin_grid = 0, bblock = 0;
    CK(cudaOccupancyMaxPotentialBlockSize(&bmin_grid, &bblock, bounded, 0, 0));
    result_int("bounded_potential_block", bblock);
    if (kernels_run()) EXPECT(bblock <= 128);
    int dmin_grid = 0, dblock = 0;
    CK(cudaOccupancyMaxPotentialBlockSizeVariableSMem(&dmin_grid, &dblock, dyn, SmemPerThread(), 0));
    result_int("dyn_potential_block", dblock);
    for (int bs : {32, 128, 256, 1024}) {
        int nb = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, plain, bs, 0));
        char key[64];
        std::snprintf(key, sizeof key, "plain_active_blocks_%d", bs);
        result_int(key, nb);
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, dyn, bs, 16 * 1024));
        std::snprintf(key, sizeof key, "dyn16k_active_blocks_%d", bs);
        result_int(key, nb);
    }
    size_t avail = 0;
    CK(cudaOccupancyAvailableDynamicSMemPerBlock(&avail, dyn, 2, 256));
    result_int("dyn_available_smem_2blocks_256", (long long)avail);

    // Launch with the suggested shapes and check.
    const int n = 1000003;
    std::vector<float> h(n), back(n);
    for (int i = 0; i < n; i++) h[i] = (float)(i % 4096);
    float *d;
    CK(cudaMalloc(&d, n * sizeof(float)));
    CK(cudaMemcpy(d, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    plain<<<(n + block - 1) / block, block>>>(d, n);
    dyn<<<(n + dblock - 1) / dblock, dblock, dblock * sizeof(float)>>>(d, n);
    CK(cudaGetLastError());
    CK(cudaMemcpy(back.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
    if (kernels_run())
        for (int i = 0; i < n; i++) {
            int b0 = i / dblock * dblock, j = i - b0, src = b0 + dblock - 1 - j;
            float want = src < n ? h[src] * 2.0f + 1.0f : 0.0f;
            EXPECT(back[i] == want);
        }
    result_hex("occupancy_launch_checksum", checksum(back.data(), n * sizeof(float)));
    CK(cudaFree(d));
    return pass("rt_occupancy", wall);
}

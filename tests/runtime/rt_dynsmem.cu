// Dynamic shared memory: extern __shared__ sized at launch; cudaFuncSetAttribute
// (MaxDynamicSharedMemorySize) to go above the default 48 KiB (100 KiB, then the device's
// opt-in maximum); a launch above the limit before opting in must fail with
// cudaErrorInvalidValue and leave the context usable.
#include "common.h"
#include <vector>

// Each block stages its segment of `in` in shared memory and writes it out reversed, plus
// the block's segment sum in the last slot of `sums`.
__global__ void reverse_segments(const int *in, int *out, long long *sums, int per_block) {
    extern __shared__ int buf[];
    const int *src = in + (size_t)blockIdx.x * per_block;
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) buf[i] = src[i];
    __syncthreads();
    int *dst = out + (size_t)blockIdx.x * per_block;
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) dst[i] = buf[per_block - 1 - i];
    if (threadIdx.x == 0 && per_block > 0) {
        long long s = 0;
        for (int i = 0; i < per_block; i++) s += buf[i];
        sums[blockIdx.x] = s;
    }
}

static uint64_t run(int bytes, int blocks, bool check) {
    int per = bytes / sizeof(int);
    size_t n = (size_t)per * blocks;
    std::vector<int> h(n), back(n);
    for (size_t i = 0; i < n; i++) h[i] = (int)(hash32((uint32_t)i) % 100000);
    int *in, *out;
    long long *sums;
    CK(cudaMalloc(&in, n * sizeof(int)));
    CK(cudaMalloc(&out, n * sizeof(int)));
    CK(cudaMalloc(&sums, blocks * sizeof(long long)));
    CK(cudaMemcpy(in, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    reverse_segments<<<blocks, 256, bytes>>>(in, out, sums, per);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(back.data(), out, n * sizeof(int), cudaMemcpyDeviceToHost));
    std::vector<long long> hs(blocks);
    CK(cudaMemcpy(hs.data(), sums, blocks * sizeof(long long), cudaMemcpyDeviceToHost));
    if (check && kernels_run())
        for (int b = 0; b < blocks; b++) {
            long long s = 0;
            for (int i = 0; i < per; i++) {
                EXPECT(back[(size_t)b * per + i] == h[(size_t)b * per + per - 1 - i]);
                s += h[(size_t)b * per + i];
            }
            EXPECT(hs[b] == s);
        }
    CK(release_all(cudaFree, in, out, sums));
    return checksum(back.data(), n * sizeof(int), checksum(hs.data(), blocks * sizeof(long long)));
}

int main() {
    Timer wall;
    int optin = 0, per_block = 0, per_sm = 0;
    CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    CK(cudaDeviceGetAttribute(&per_block, cudaDevAttrMaxSharedMemoryPerBlock, 0));
    CK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, 0));
    result_int("smem_optin_max", optin);
    result_int("smem_per_block", per_block);
    result_int("smem_per_sm", per_sm);
    EXPECT(optin >= 100 * 1024);

    // Within the default limit.
    result_hex("dynsmem_16k", run(16 * 1024, 40, true));

    // 100 KiB before opting in: the launch is refused.
    const int big = 100 * 1024;
    reverse_segments<<<1, 256, big>>>(nullptr, nullptr, nullptr, 0);
    EXPECT_ERR_ON_GPU(cudaGetLastError(), cudaErrorInvalidValue);
    CK(cudaDeviceSynchronize());  // the context is still good

    CK(cudaFuncSetAttribute(reverse_segments, cudaFuncAttributeMaxDynamicSharedMemorySize, big));
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, reverse_segments));
    result_int("func_max_dynamic_smem", fa.maxDynamicSharedSizeBytes);
    EXPECT(fa.maxDynamicSharedSizeBytes == big);
    Timer t;
    result_hex("dynsmem_100k", run(big, 132, true));
    double big_ms = t.ms();

    // The device's opt-in maximum (minus the kernel's static shared memory, none here).
    CK(cudaFuncSetAttribute(reverse_segments, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    result_hex("dynsmem_optin", run(optin & ~1023, 8, true));
    // One byte more than the opt-in maximum cannot be set.
    EXPECT_ERR_ON_GPU(cudaFuncSetAttribute(reverse_segments, cudaFuncAttributeMaxDynamicSharedMemorySize, optin + 1),
               cudaErrorInvalidValue);
    CK(cudaFuncSetAttribute(reverse_segments, cudaFuncAttributePreferredSharedMemoryCarveout,
                            cudaSharedmemCarveoutMaxShared));
    result_hex("dynsmem_100k_carveout", run(big, 16, true));
    time_ms("dynsmem_100k_ms", big_ms);
    return pass("rt_dynsmem", wall);
}

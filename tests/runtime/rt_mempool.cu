// Stream-ordered allocation: cudaMallocAsync / cudaFreeAsync on a stream from the device's
// default pool (with a release threshold set through cudaMemPoolSetAttribute and read back),
// and from an explicitly created pool (cudaMemPoolCreate + cudaMallocFromPoolAsync); data
// written into each allocation is verified before it is freed; cudaMemPoolTrimTo at the end.
#include "common.h"
#include <vector>

__global__ void fill(int *v, int n, int seed) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] = (int)(hash32(i + seed) & 0xfffff);
}

static uint64_t churn(cudaStream_t s, cudaMemPool_t pool, int rounds, int *h, bool check) {
    uint64_t sum = 0;
    for (int r = 0; r < rounds; r++) {
        int n = 1000 + (int)(hash32(r) % (1 << 20));
        int *d;
        if (pool)
            CK(cudaMallocFromPoolAsync((void **)&d, n * sizeof(int), pool, s));
        else
            CK(cudaMallocAsync((void **)&d, n * sizeof(int), s));
        fill<<<(n + 255) / 256, 256, 0, s>>>(d, n, r);
        CK(cudaGetLastError());
        CK(cudaMemcpyAsync(h, d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
        CK(cudaFreeAsync(d, s));
        CK(cudaStreamSynchronize(s));
        if (check && kernels_run())
            for (int i = 0; i < n; i++) EXPECT(h[i] == (int)(hash32(i + r) & 0xfffff));
        sum = checksum(h, n * sizeof(int), sum);
    }
    return sum;
}

int main() {
    Timer wall;
    int supported = 0;
    CK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0));
    result_int("mempool_supported", supported);
    EXPECT(supported == 1);

    cudaMemPool_t def;
    CK(cudaDeviceGetDefaultMemPool(&def, 0));
    cudaMemPool_t cur;
    CK(cudaDeviceGetMemPool(&cur, 0));
    EXPECT(cur == def);
    uint64_t threshold = 64ull << 20, got = 0;
    CK(cudaMemPoolSetAttribute(def, cudaMemPoolAttrReleaseThreshold, &threshold));
    CK(cudaMemPoolGetAttribute(def, cudaMemPoolAttrReleaseThreshold, &got));
    EXPECT(got == threshold);
    result_int("mempool_release_threshold", (long long)got);

    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int *h;
    CK(cudaMallocHost(&h, (1 << 20) * sizeof(int) + 4000 * sizeof(int)));
    Timer t;
    result_hex("mempool_default_checksum", churn(s, nullptr, 100, h, true));
    double default_ms = t.ms();
    uint64_t reserved = 0, used = 0;
    CK(cudaMemPoolGetAttribute(def, cudaMemPoolAttrReservedMemCurrent, &reserved));
    CK(cudaMemPoolGetAttribute(def, cudaMemPoolAttrUsedMemCurrent, &used));
    result_int("mempool_reserved_nonzero", reserved > 0);
    result_int("mempool_used_after_free", (long long)used);

    // An explicit pool on device 0.
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = 0;
    cudaMemPool_t pool;
    CK(cudaMemPoolCreate(&pool, &props));
    uint64_t zero = 0;
    CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &zero));
    result_hex("mempool_explicit_checksum", churn(s, pool, 50, h, true));

    // Several allocations alive at once, freed in a different order than allocated.
    std::vector<int *> live(8);
    for (int i = 0; i < 8; i++) {
        CK(cudaMallocAsync((void **)&live[i], (i + 1) * 4096 * sizeof(int), s));
        fill<<<(i + 1) * 16, 256, 0, s>>>(live[i], (i + 1) * 4096, 1000 + i);
    }
    CK(cudaGetLastError());
    uint64_t live_sum = 0;
    for (int i = 7; i >= 0; i--) {
        CK(cudaMemcpyAsync(h, live[i], (i + 1) * 4096 * sizeof(int), cudaMemcpyDeviceToHost, s));
        CK(cudaFreeAsync(live[i], s));
        CK(cudaStreamSynchronize(s));
        live_sum = checksum(h, (i + 1) * 4096 * sizeof(int), live_sum);
    }
    result_hex("mempool_live_checksum", live_sum);

    CK(cudaMemPoolTrimTo(def, 0));
    CK(cudaMemPoolTrimTo(pool, 0));
    CK(cudaStreamSynchronize(s));
    CK(cudaMemPoolDestroy(pool));
    CK(cudaStreamDestroy(s));
    CK(cudaFreeHost(h));
    time_ms("mempool_100_alloc_rounds_ms", default_ms);
    return pass("rt_mempool", wall);
}

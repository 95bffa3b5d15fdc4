// cudaMemGetInfo around a 256 MiB allocation: free memory drops by at least 256 MiB while it
// is held (and touched) and comes back after cudaFree; total stays the same and equals
// totalGlobalMem. Only comparisons are printed as results, not the raw numbers.
#include "common.h"

int main() {
    Timer wall;
    const size_t big = 256u << 20, slack = 64u << 20;
    CK(cudaFree(0));
    size_t free0 = 0, total0 = 0, free1 = 0, total1 = 0, free2 = 0, total2 = 0;
    CK(cudaMemGetInfo(&free0, &total0));
    EXPECT(free0 > big && free0 <= total0);
    void *p;
    CK(cudaMalloc(&p, big));
    CK(cudaMemset(p, 0x5a, big));
    CK(cudaDeviceSynchronize());
    CK(cudaMemGetInfo(&free1, &total1));
    unsigned char probe[16];
    CK(cudaMemcpy(probe, (char *)p + big - 16, 16, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 16; i++) EXPECT(probe[i] == 0x5a);
    CK(cudaFree(p));
    CK(cudaDeviceSynchronize());
    CK(cudaMemGetInfo(&free2, &total2));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));

    std::printf("INFO free %zu -> %zu -> %zu MiB of %zu MiB\n", free0 >> 20, free1 >> 20, free2 >> 20,
                total0 >> 20);
    int decreased = free0 >= free1 + big;
    int restored = free2 + slack >= free0;
    int total_same = total0 == total1 && total1 == total2;
    int total_is_prop = total0 == prop.totalGlobalMem;
    result_int("meminfo_free_decreased_ge_256MiB", decreased);
    result_int("meminfo_free_restored", restored);
    result_int("meminfo_total_constant", total_same);
    result_int("meminfo_total_eq_prop", total_is_prop);
    EXPECT(decreased && restored && total_same && total_is_prop);

    // Allocation failure: far more than the device has.
    void *q = nullptr;
    EXPECT_ERR(cudaMalloc(&q, total0 * 2), cudaErrorMemoryAllocation);
    CK(cudaMemGetInfo(&free2, &total2));  // still usable
    return pass("rt_meminfo", wall);
}

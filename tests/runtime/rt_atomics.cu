// Integer atomics, on shared and global memory: a 256-bin histogram with atomicAdd,
// atomicMax/atomicMin, atomicCAS (exactly one winner per slot, and a CAS-loop xor),
// atomicInc with wrap-around, atomicAnd/atomicOr and 64-bit atomicAdd. Every result is an
// integer that does not depend on the order of the atomics; all are checked on the host.
#include "common.h"
#include <vector>

struct Totals {
    unsigned int maxv, minv, inc, andv, orv, xorv, cas_wins;
    unsigned long long sum64;
};

// Block-level atomics on shared memory (bins, max, min, and, or, 64-bit sum, a CAS-loop xor),
// then one global atomic per block and value; atomicInc on global memory for the first
// `inc_n` elements.
__global__ void hist(const uint32_t *v, int n, unsigned int *bins, Totals *t, unsigned int inc_limit, int inc_n) {
    __shared__ unsigned int local[256];
    __shared__ unsigned int smax, smin, sand, sor, sxor;
    __shared__ unsigned long long ssum;
    for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
    if (threadIdx.x == 0) {
        smax = 0;
        smin = 0xffffffffu;
        sand = 0xffffffffu;
        sor = 0;
        sxor = 0;
        ssum = 0;
    }
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        uint32_t x = v[i];
        atomicAdd(&local[x & 255], 1u);
        atomicMax(&smax, x);
        atomicMin(&smin, x);
        atomicAdd(&ssum, (unsigned long long)x);
        atomicAnd(&sand, x | 0x00ff00ffu);
        atomicOr(&sor, x & 0x0f0f0f0fu);
        unsigned int old = sxor, seen;  // xor through a CAS loop
        do {
            seen = old;
            old = atomicCAS(&sxor, seen, seen ^ x);
        } while (old != seen);
        if (i < inc_n) atomicInc(&t->inc, inc_limit);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x)
        if (local[b]) atomicAdd(&bins[b], local[b]);
    if (threadIdx.x == 0) {
        atomicMax(&t->maxv, smax);
        atomicMin(&t->minv, smin);
        atomicAdd(&t->sum64, ssum);
        atomicAnd(&t->andv, sand);
        atomicOr(&t->orv, sor);
        unsigned int old = atomicAdd(&t->xorv, 0u), seen;
        do {
            seen = old;
            old = atomicCAS(&t->xorv, seen, seen ^ sxor);
        } while (old != seen);
    }
}

// Every thread tries to claim slot (i % slots) from 0 to 1: exactly one win per slot.
__global__ void claim(unsigned int *slots, int nslots, int n, Totals *t) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && atomicCAS(&slots[i % nslots], 0u, 1u) == 0u) atomicAdd(&t->cas_wins, 1u);
}

int main() {
    Timer wall;
    const int n = 1 << 22, nslots = 1000;
    const unsigned int inc_limit = 999;
    const int inc_n = 1 << 17;
    std::vector<uint32_t> v(n);
    for (int i = 0; i < n; i++) v[i] = hash32(i * 2654435761u + 7);
    uint32_t *dv;
    unsigned int *bins, *slots;
    Totals *dt;
    CK(cudaMalloc(&dv, n * sizeof(uint32_t)));
    CK(cudaMalloc(&bins, 256 * sizeof(unsigned int)));
    CK(cudaMalloc(&slots, nslots * sizeof(unsigned int)));
    CK(cudaMalloc(&dt, sizeof(Totals)));
    CK(cudaMemcpy(dv, v.data(), n * sizeof(uint32_t), cudaMemcpyHostToDevice));
    CK(cudaMemset(bins, 0, 256 * sizeof(unsigned int)));
    CK(cudaMemset(slots, 0, nslots * sizeof(unsigned int)));
    Totals init = {0, 0xffffffffu, 0, 0xffffffffu, 0, 0, 0, 0};
    CK(cudaMemcpy(dt, &init, sizeof init, cudaMemcpyHostToDevice));

    Timer t;
    hist<<<264, 256>>>(dv, n, bins, dt, inc_limit, inc_n);
    CK(cudaGetLastError());
    claim<<<(n + 255) / 256, 256>>>(slots, nslots, n, dt);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    double kernel_ms = t.ms();

    unsigned int hbins[256];
    Totals got;
    CK(cudaMemcpy(hbins, bins, sizeof hbins, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(&got, dt, sizeof got, cudaMemcpyDeviceToHost));

    unsigned int want_bins[256] = {0};
    Totals want = init;
    for (int i = 0; i < n; i++) {
        uint32_t x = v[i];
        want_bins[x & 255]++;
        want.maxv = x > want.maxv ? x : want.maxv;
        want.minv = x < want.minv ? x : want.minv;
        want.sum64 += x;
        want.andv &= x | 0x00ff00ffu;
        want.orv |= x & 0x0f0f0f0fu;
        want.xorv ^= x;
    }
    want.inc = inc_n % (inc_limit + 1);
    want.cas_wins = nslots;
    if (kernels_run()) {
        EXPECT(std::memcmp(hbins, want_bins, sizeof hbins) == 0);
        EXPECT(got.maxv == want.maxv && got.minv == want.minv);
        EXPECT(got.sum64 == want.sum64);
        EXPECT(got.inc == want.inc);
        EXPECT(got.andv == want.andv && got.orv == want.orv && got.xorv == want.xorv);
        EXPECT(got.cas_wins == want.cas_wins);
    }
    result_hex("hist_checksum", checksum(hbins, sizeof hbins));
    result_int("hist_bin0", hbins[0]);
    result_int("atomic_max", got.maxv);
    result_int("atomic_min", got.minv);
    result_int("atomic_inc_wrapped", got.inc);
    result_int("atomic_sum64", (long long)got.sum64);
    result_int("atomic_and", got.andv);
    result_int("atomic_or", got.orv);
    result_int("atomic_cas_xor", got.xorv);
    result_int("atomic_cas_wins", got.cas_wins);
    CK(release_all(cudaFree, dv, bins, slots, dt));
    time_ms("atomics_kernels_ms", kernel_ms);
    return pass("rt_atomics", wall);
}

// cudaMemcpy from and to pageable (malloc) and pinned (cudaMallocHost) memory: host to
// device, device to device and device to host, 4 B to 64 MiB, odd sizes and unaligned host
// addresses; every round trip is checked byte for byte and its checksum printed.
#include "common.h"

int main() {
    Timer wall;
    const size_t max = 64u << 20;
    const size_t sizes[] = {4, 64, 1000, 4096, 65536 + 3, 1u << 20, (16u << 20) + 12, max};
    unsigned char *src = (unsigned char *)std::malloc(max + 64);
    unsigned char *dst = (unsigned char *)std::malloc(max + 64);
    unsigned char *psrc, *pdst;
    CK(cudaMallocHost(&psrc, max + 64));
    CK(cudaHostAlloc(&pdst, max + 64, cudaHostAllocDefault));
    for (size_t i = 0; i < max + 64; i++) src[i] = (unsigned char)(hash32((uint32_t)i) >> 7);
    std::memcpy(psrc, src, max + 64);
    unsigned char *d1, *d2;
    CK(cudaMalloc(&d1, max + 64));
    CK(cudaMalloc(&d2, max + 64));

    uint64_t all = 0;
    double pageable_h2d = 0, pageable_d2h = 0, pinned_h2d = 0, pinned_d2h = 0;
    for (size_t n : sizes) {
        for (int unaligned = 0; unaligned < 2; unaligned++) {
            size_t off = unaligned ? 3 : 0;  // host and device offsets
            uint64_t want = checksum(src + off, n);
            char key[64];

            // pageable -> device -> device -> pageable
            std::memset(dst, 0xee, n + off + 8);
            Timer t;
            CK(cudaMemcpy(d1 + off, src + off, n, cudaMemcpyHostToDevice));
            if (n == max && !unaligned) pageable_h2d = t.ms();
            CK(cudaMemcpy(d2 + off + 1, d1 + off, n, cudaMemcpyDeviceToDevice));
            t.reset();
            CK(cudaMemcpy(dst + off, d2 + off + 1, n, cudaMemcpyDeviceToHost));
            if (n == max && !unaligned) pageable_d2h = t.ms();
            EXPECT(std::memcmp(dst + off, src + off, n) == 0);
            EXPECT(dst[n + off] == 0xee);  // nothing written past the end
            EXPECT(checksum(dst + off, n) == want);

            // pinned -> device -> pinned
            std::memset(pdst, 0xee, n + off + 8);
            t.reset();
            CK(cudaMemcpy(d1 + off, psrc + off, n, cudaMemcpyHostToDevice));
            if (n == max && !unaligned) pinned_h2d = t.ms();
            t.reset();
            CK(cudaMemcpy(pdst + off, d1 + off, n, cudaMemcpyDeviceToHost));
            if (n == max && !unaligned) pinned_d2h = t.ms();
            EXPECT(std::memcmp(pdst + off, src + off, n) == 0);
            EXPECT(pdst[n + off] == 0xee);

            // pinned -> pageable through cudaMemcpyDefault (host to host) and pageable -> device
            // with cudaMemcpyDefault
            std::memset(dst, 0, n + off);
            CK(cudaMemcpy(dst + off, psrc + off, n, cudaMemcpyDefault));
            EXPECT(std::memcmp(dst + off, src + off, n) == 0);
            CK(cudaMemcpy(d2, src + off, n, cudaMemcpyDefault));
            CK(cudaMemcpy(pdst, d2, n, cudaMemcpyDefault));
            EXPECT(checksum(pdst, n) == want);

            std::snprintf(key, sizeof key, "copy_%zu%s", n, unaligned ? "_off3" : "");
            result_hex(key, want);
            all = checksum(&want, sizeof want, all);
        }
    }
    result_hex("copies_all", all);
    CK(release_all(cudaFree, d1, d2));
    CK(release_all(cudaFreeHost, psrc, pdst));
    std::free(src);
    std::free(dst);
    time_ms("pageable_h2d_64MiB_ms", pageable_h2d);
    time_ms("pageable_d2h_64MiB_ms", pageable_d2h);
    time_ms("pinned_h2d_64MiB_ms", pinned_h2d);
    time_ms("pinned_d2h_64MiB_ms", pinned_d2h);
    return pass("rt_pinned_pageable", wall);
}

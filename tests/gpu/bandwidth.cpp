// Copy bandwidth over sizes 4 KiB .. 1 GiB, pinned and pageable, both directions, with the
// data checked at every size: the host buffer is filled with a pattern of its own (size, kind),
// copied to the device (the h2d loop), cleared, copied back (the d2h loop) and hashed. Each
// size and kind prints `RESULT bw_<kind>_<size>K_fnv=<hash of what came back> ok|MISMATCH`
// (compared with the native run by tests/gpu/run.sh), and the program fails on a mismatch.
#include "common.h"
#include <string.h>
static double gbps(size_t bytes, double us) { return bytes / us / 1e3; }

// FNV-1a over 64-bit words, each step followed by an xor-shift (the sizes are multiples of 8;
// a byte at a time is 8x slower). Every step is a bijection of the state, so a change to any
// one word always changes the hash.
static uint64_t hash_words(const void *p, size_t n) {
    const uint64_t *w = (const uint64_t *)p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n / 8; i++) { h ^= w[i]; h *= 1099511628211ull; h ^= h >> 32; }
    return h;
}

static void fill(void *p, size_t n, uint64_t seed) {
    uint64_t *w = (uint64_t *)p;
    for (size_t i = 0; i < n / 8; i++) w[i] = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
}

int main() {
    init_ctx();
    const size_t max = 1ull << 30;
    void *pinned, *pageable = malloc(max);
    if (!pageable) { fprintf(stderr, "FAIL: no 1 GiB of pageable memory\n"); return 1; }
    CK(cuMemAllocHost(&pinned, max));
    CUdeviceptr d;
    CK(cuMemAlloc(&d, max));
    size_t sizes[] = {4ull << 10, 64ull << 10, 1ull << 20, 16ull << 20, 256ull << 20, 1ull << 30};
    int mismatches = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        int reps = s <= (1 << 20) ? 200 : (s <= (16 << 20) ? 20 : 4);
        for (int kind = 0; kind < 2; kind++) {
            void *h = kind == 0 ? pinned : pageable;
            const char *name = kind == 0 ? "pinned" : "pageable";
            fill(h, s, (uint64_t)(i * 2 + kind) << 56);
            uint64_t sent = hash_words(h, s);
            CK(cuMemcpyHtoD(d, h, s));
            double t0 = now_us();
            for (int r = 0; r < reps; r++) CK(cuMemcpyHtoD(d, h, s));
            double t1 = now_us();
            memset(h, 0, s);  // what comes back must come from the device
            double t2 = now_us();
            for (int r = 0; r < reps; r++) CK(cuMemcpyDtoH(h, d, s));
            double t3 = now_us();
            uint64_t back = hash_words(h, s);
            if (back != sent) {
                mismatches++;
                fprintf(stderr, "FAIL bandwidth: %s %zuK came back as %016llx, sent %016llx\n", name,
                        s >> 10, (unsigned long long)back, (unsigned long long)sent);
            }
            printf("RESULT bw_%s_%zuK_fnv=%016llx %s\n", name, s >> 10, (unsigned long long)back,
                   back == sent ? "ok" : "MISMATCH");
            printf("TIME bw_%s_h2d_%zuK_GBps=%.2f\n", name, s >> 10, gbps(s * reps, t1 - t0));
            printf("TIME bw_%s_d2h_%zuK_GBps=%.2f\n", name, s >> 10, gbps(s * reps, t3 - t2));
        }
    }
    printf("RESULT bandwidth_mismatches=%d\n", mismatches);
    return mismatches ? 1 : 0;
}

// Shared by the runtime test programs: every CUDA call is checked; the program prints PASS or
// exits non-zero with the failing call. RT_SIM=1 (set by the CI test against the simulator,
// which records kernel launches without executing them) skips checks of kernel results.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime.h>

#define CK(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            std::fprintf(stderr, "FAIL %s:%d %s -> %d %s\n", __FILE__, __LINE__, #call, (int)e_, \
                         cudaGetErrorString(e_));                                             \
            std::exit(1);                                                                     \
        }                                                                                     \
    } while (0)

// A library call (cuBLAS, cuFFT, cuRAND) must return `ok`; `what` names the status in the
// failure line ("cublas status", "cufft result", ...). Each program defines its short form
// (CKB, CKF, CKR) with this.
#define CK_LIB(call, ok, what)                                                                \
    do {                                                                                      \
        auto r_ = (call);                                                                     \
        if (r_ != (ok)) {                                                                     \
            std::fprintf(stderr, "FAIL %s:%d %s -> " what " %d\n", __FILE__, __LINE__, #call, (int)r_); \
            std::exit(1);                                                                     \
        }                                                                                     \
    } while (0)

#define EXPECT(cond)                                                                          \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            std::fprintf(stderr, "FAIL %s:%d %s\n", __FILE__, __LINE__, #cond);               \
            std::exit(1);                                                                     \
        }                                                                                     \
    } while (0)

static inline bool kernels_run() {
    const char *s = std::getenv("RT_SIM");
    return !(s && s[0] == '1');
}

// --- helpers for the larger suite (tests/gpu/run.sh compares RESULT lines native vs vGPU) ---
#include <chrono>
#include <cstdint>

// Wall-clock milliseconds since construction (or the last reset()).
struct Timer {
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    void reset() { t0 = std::chrono::steady_clock::now(); }
    double ms() const {
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }
};

// A 64-bit checksum of bytes (FNV-1a over 8-byte words, then the tail bytes); deterministic
// and independent of the buffer's alignment.
static inline uint64_t checksum(const void *data, size_t n, uint64_t h = 1469598103934665603ull) {
    const unsigned char *p = (const unsigned char *)data;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = (h ^ w) * 1099511628211ull;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static inline void result_hex(const char *key, uint64_t v) {
    std::printf("RESULT %s=%016llx\n", key, (unsigned long long)v);
}
static inline void result_int(const char *key, long long v) { std::printf("RESULT %s=%lld\n", key, v); }
static inline void result_str(const char *key, const char *v) { std::printf("RESULT %s=%s\n", key, v); }
static inline void time_ms(const char *key, double ms) { std::printf("TIME %s=%.3f\n", key, ms); }

// Calls `release` (cudaFree, cudaFreeHost) on each pointer; returns the first error, if any
// (callers check it with CK, so that a failure names their line).
template <typename... P> static inline cudaError_t release_all(cudaError_t (*release)(void *), P... p) {
    cudaError_t first = cudaSuccess;
    for (void *q : {(void *)p...}) {
        cudaError_t e = release(q);
        if (first == cudaSuccess) first = e;
    }
    return first;
}

// The end of a program that got through: its own time (`TIME <name>_ms`, since `wall` started)
// and `PASS <name>`. main returns what this returns.
static inline int pass(const char *name, const Timer &wall) {
    std::printf("TIME %s_ms=%.3f\n", name, wall.ms());
    std::printf("PASS %s\n", name);
    return 0;
}

// A deterministic integer hash (for test data).
__host__ __device__ static inline uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

// Passes `call` (which must return cudaError_t) and expects exactly `want` back; clears the
// runtime's last error so the expected failure does not leak into later checks.
#define EXPECT_ERR(call, want)                                                                \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        (void)cudaGetLastError();                                                             \
        if (e_ != (want)) {                                                                   \
            std::fprintf(stderr, "FAIL %s:%d %s -> %d %s (wanted %d)\n", __FILE__, __LINE__, #call, \
                         (int)e_, cudaGetErrorString(e_), (int)(want));                       \
            std::exit(1);                                                                     \
        }                                                                                     \
    } while (0)

// As EXPECT_ERR, but the simulator (RT_SIM=1) does not model device limits and timing flags:
// there the call is made and its result ignored.
#define EXPECT_ERR_ON_GPU(call, want)                                                         \
    do {                                                                                      \
        if (kernels_run()) {                                                                  \
            EXPECT_ERR(call, want);                                                           \
        } else {                                                                              \
            (void)(call);                                                                     \
            (void)cudaGetLastError();                                                         \
        }                                                                                     \
    } while (0)

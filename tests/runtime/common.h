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

// Shared helpers of the GPU test programs: error checks, timing and the primary context (from
// tests/programs/check.h, shared with the CI's programs), hashing, and the two kinds of output
// lines the runner compares: RESULT (must match native exactly) and TIME.
#pragma once
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../programs/check.h"

// The GPU programs' name for CHECK.
#define CK(call) CHECK(call)

static inline double now_us() { return now_s() * 1e6; }

static inline uint64_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ull; }
    return h;
}

static inline CUcontext init_ctx() { return primary_ctx(NULL); }

static inline CUmodule load_module(const char *path) {
    CUmodule m;
    CK(cuModuleLoad(&m, path));
    return m;
}

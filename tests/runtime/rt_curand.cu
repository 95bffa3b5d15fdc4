// cuRAND's host API: Philox and XORWOW generators with fixed seeds fill device buffers with
// uniform, normal and integer numbers; the bit patterns are a pure function of the seed, so a
// native run and a run on the vGPU must print the same checksums.
#include "common.h"
#include <curand.h>
#include <vector>

#define CKR(call) CK_LIB(call, CURAND_STATUS_SUCCESS, "curand status")

int main() {
    Timer wall;
    const size_t n = 1 << 20;
    float *d_f;
    unsigned int *d_u;
    CK(cudaMalloc(&d_f, n * sizeof(float)));
    CK(cudaMalloc(&d_u, n * sizeof(unsigned int)));
    std::vector<float> f(n);
    std::vector<unsigned int> u(n);
    cudaStream_t s;
    CK(cudaStreamCreate(&s));

    const struct { curandRngType_t type; const char *name; } gens[] = {
        {CURAND_RNG_PSEUDO_PHILOX4_32_10, "philox"},
        {CURAND_RNG_PSEUDO_XORWOW, "xorwow"},
    };
    for (const auto &g : gens) {
        curandGenerator_t gen;
        CKR(curandCreateGenerator(&gen, g.type));
        CKR(curandSetStream(gen, s));
        CKR(curandSetPseudoRandomGeneratorSeed(gen, 1234ull));
        char key[64];
        CKR(curandGenerateUniform(gen, d_f, n));
        CK(cudaMemcpyAsync(f.data(), d_f, n * sizeof(float), cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        if (kernels_run()) {
            double mean = 0;
            for (float v : f) { EXPECT(v > 0.0f && v <= 1.0f); mean += v; }
            mean /= n;
            EXPECT(mean > 0.49 && mean < 0.51);
        }
        std::snprintf(key, sizeof key, "%s_uniform", g.name);
        result_hex(key, checksum(f.data(), n * sizeof(float)));
        CKR(curandGenerateNormal(gen, d_f, n, 0.0f, 1.0f));
        CK(cudaMemcpyAsync(f.data(), d_f, n * sizeof(float), cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        std::snprintf(key, sizeof key, "%s_normal", g.name);
        result_hex(key, checksum(f.data(), n * sizeof(float)));
        CKR(curandGenerate(gen, d_u, n));
        CK(cudaMemcpyAsync(u.data(), d_u, n * sizeof(unsigned int), cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        std::snprintf(key, sizeof key, "%s_u32", g.name);
        result_hex(key, checksum(u.data(), n * sizeof(unsigned int)));
        CKR(curandDestroyGenerator(gen));
    }
    CK(cudaStreamDestroy(s));
    CK(release_all(cudaFree, d_f, d_u));
    return pass("rt_curand", wall);
}

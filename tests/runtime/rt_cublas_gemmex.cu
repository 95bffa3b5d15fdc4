// cuBLAS GemmEx: FP16 and BF16 inputs, FP32 output, CUBLAS_COMPUTE_32F (tensor cores allowed),
// a non-square 256x384x512 problem; inputs are small multiples of 1/8, exact in FP16/BF16, so
// FP32 accumulation is exact whatever the order and the result is checked exactly.
#include "common.h"
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector>

#define CKB(call) CK_LIB(call, CUBLAS_STATUS_SUCCESS, "cublas status")

static float val(uint32_t i, uint32_t salt) { return (float)((int)(hash32(i * 17 + salt) % 15) - 7) * 0.125f; }

int main() {
    Timer wall;
    const int m = 256, n = 384, k = 512, reps = 20;
    std::vector<float> A(m * k), B(k * n), R(m * n);
    std::vector<__half> Ah(m * k), Bh(k * n);
    std::vector<__nv_bfloat16> Ab(m * k), Bb(k * n);
    for (int i = 0; i < m * k; i++) {
        A[i] = val(i, 5);
        Ah[i] = __float2half(A[i]);
        Ab[i] = __float2bfloat16(A[i]);
    }
    for (int i = 0; i < k * n; i++) {
        B[i] = val(i, 9);
        Bh[i] = __float2half(B[i]);
        Bb[i] = __float2bfloat16(B[i]);
    }
    // Column-major reference, exact in double.
    std::vector<double> ref(m * n);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double acc = 0;
            for (int p = 0; p < k; p++) acc += (double)A[i + p * m] * B[p + j * k];
            ref[i + j * m] = acc;
        }

    void *dAh, *dBh, *dAb, *dBb;
    float *dC;
    CK(cudaMalloc(&dAh, m * k * sizeof(__half)));
    CK(cudaMalloc(&dBh, k * n * sizeof(__half)));
    CK(cudaMalloc(&dAb, m * k * sizeof(__nv_bfloat16)));
    CK(cudaMalloc(&dBb, k * n * sizeof(__nv_bfloat16)));
    CK(cudaMalloc(&dC, m * n * sizeof(float)));
    CK(cudaMemcpy(dAh, Ah.data(), m * k * sizeof(__half), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dBh, Bh.data(), k * n * sizeof(__half), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dAb, Ab.data(), m * k * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dBb, Bb.data(), k * n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));

    cublasHandle_t h;
    CKB(cublasCreate(&h));
    const float alpha = 1.0f, beta = 0.0f;
    struct Case {
        const char *name;
        const void *a, *b;
        cudaDataType t;
    } cases[] = {{"gemmex_f16", dAh, dBh, CUDA_R_16F}, {"gemmex_bf16", dAb, dBb, CUDA_R_16BF}};
    for (const Case &c : cases) {
        CK(cudaMemset(dC, 0xff, m * n * sizeof(float)));
        CKB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, c.a, c.t, m, c.b, c.t, k, &beta, dC,
                         CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(R.data(), dC, m * n * sizeof(float), cudaMemcpyDeviceToHost));
        long long bad = 0;
        double sum = 0;
        for (int i = 0; i < m * n; i++) {
            if ((double)R[i] != ref[i]) bad++;
            sum += R[i];
        }
        if (kernels_run()) EXPECT(bad == 0);
        char key[64];
        std::snprintf(key, sizeof key, "%s_checksum", c.name);
        result_hex(key, checksum(R.data(), m * n * sizeof(float)));
        std::printf("RESULT %s_sum=%.6e\n", c.name, sum);
    }

    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0, 0));
    for (int r = 0; r < reps; r++)
        CKB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, dAh, CUDA_R_16F, m, dBh, CUDA_R_16F, k,
                         &beta, dC, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CKB(cublasDestroy(h));
    for (void *p : {dAh, dBh, dAb, dBb, (void *)dC}) CK(cudaFree(p));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    time_ms("gemmex_f16_x20_ms", ms);
    return pass("rt_cublas_gemmex", wall);
}

// cuBLAS SGEMM, 512x512x512: C = A*B + 0.5*C with inputs that are small multiples of 1/8, so
// every product and partial sum is exact in FP32 (and TF32) whatever the summation order; the
// result is checked exactly against the host and its checksum printed.
#include "common.h"
#include <cublas_v2.h>
#include <vector>

#define CKB(call) CK_LIB(call, CUBLAS_STATUS_SUCCESS, "cublas status")

static float val(uint32_t i, uint32_t salt) { return (float)((int)(hash32(i * 31 + salt) % 13) - 6) * 0.125f; }

int main() {
    Timer wall;
    const int n = 512, reps = 20;
    std::vector<float> A(n * n), B(n * n), C(n * n), R(n * n);
    for (int i = 0; i < n * n; i++) {
        A[i] = val(i, 1);
        B[i] = val(i, 2);
        C[i] = val(i, 3);
    }
    float *dA, *dB, *dC, *dW;
    CK(cudaMalloc(&dA, n * n * sizeof(float)));
    CK(cudaMalloc(&dB, n * n * sizeof(float)));
    CK(cudaMalloc(&dC, n * n * sizeof(float)));
    CK(cudaMalloc(&dW, n * n * sizeof(float)));
    cublasHandle_t h;
    CKB(cublasCreate(&h));
    int ver = 0;
    CKB(cublasGetVersion(h, &ver));
    std::printf("INFO cublas version %d\n", ver);
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    CKB(cublasSetStream(h, s));
    CKB(cublasSetMatrix(n, n, sizeof(float), A.data(), n, dA, n));
    CKB(cublasSetMatrix(n, n, sizeof(float), B.data(), n, dB, n));
    CK(cudaMemcpy(dC, C.data(), n * n * sizeof(float), cudaMemcpyHostToDevice));

    const float alpha = 1.0f, beta = 0.5f;
    CKB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, dA, n, dB, n, &beta, dC, n));
    CKB(cublasGetMatrix(n, n, sizeof(float), dC, n, R.data(), n));  // synchronous

    // Column-major host reference in double (exact here).
    double sum = 0;
    long long mismatches = 0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < n; i++) {
            double acc = 0;
            for (int k = 0; k < n; k++) acc += (double)A[i + k * n] * B[k + j * n];
            double want = acc + 0.5 * C[i + j * n];
            if ((double)R[i + j * n] != want) mismatches++;
            sum += R[i + j * n];
        }
    if (kernels_run()) EXPECT(mismatches == 0);
    result_hex("sgemm_checksum", checksum(R.data(), n * n * sizeof(float)));
    std::printf("RESULT sgemm_sum=%.6e\n", sum);
    result_int("sgemm_mismatches", kernels_run() ? mismatches : 0);

    // Transposed operands with the pointer mode on the device.
    float *dAlpha, *dBeta;
    CK(cudaMalloc(&dAlpha, sizeof(float)));
    CK(cudaMalloc(&dBeta, sizeof(float)));
    const float two = 2.0f, zero = 0.0f;
    CK(cudaMemcpy(dAlpha, &two, sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dBeta, &zero, sizeof(float), cudaMemcpyHostToDevice));
    CKB(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
    CKB(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, dAlpha, dA, n, dB, n, dBeta, dW, n));
    CKB(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(R.data(), dW, n * n * sizeof(float), cudaMemcpyDeviceToHost));
    if (kernels_run())
        for (int j = 0; j < n; j += 37)
            for (int i = 0; i < n; i += 41) {
                double acc = 0;
                for (int k = 0; k < n; k++) acc += (double)A[k + i * n] * B[k + j * n];
                EXPECT((double)R[i + j * n] == 2 * acc);
            }
    result_hex("sgemm_tn_checksum", checksum(R.data(), n * n * sizeof(float)));

    // Timing: reps GEMMs on the stream between events.
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0, s));
    for (int r = 0; r < reps; r++)
        CKB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, dA, n, dB, n, &zero, dW, n));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));

    CKB(cublasDestroy(h));
    CK(cudaStreamDestroy(s));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    for (float *p : {dA, dB, dC, dW, dAlpha, dBeta}) CK(cudaFree(p));
    time_ms("sgemm_512_x20_ms", ms);
    return pass("rt_cublas_sgemm", wall);
}

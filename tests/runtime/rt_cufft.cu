// cuFFT: a batched 1-D complex-to-complex plan (cufftPlan1d), forward then inverse on a
// stream. The input is a sum of complex exponentials at integer bins with integer amplitudes,
// so the spectrum is known exactly: the program checks it, checks the round trip against the
// input, and prints rounded (order-independent) values.
#include "common.h"
#include <cmath>
#include <cufft.h>
#include <vector>

#define CKF(call) CK_LIB(call, CUFFT_SUCCESS, "cufft result")

int main() {
    Timer wall;
    const int N = 4096, batch = 4, reps = 50;
    const double pi = 3.14159265358979323846;
    // Batch b: bins (3+b) with amplitude (b+1), (100*b+17) with amplitude -2i, N-5 with 4.
    std::vector<cufftComplex> x(N * batch), X(N * batch), y(N * batch);
    for (int b = 0; b < batch; b++) {
        int bins[3] = {3 + b, 100 * b + 17, N - 5};
        double re_amp[3] = {(double)(b + 1), 0, 4}, im_amp[3] = {0, -2, 0};
        for (int t = 0; t < N; t++) {
            double re = 0, im = 0;
            for (int q = 0; q < 3; q++) {
                double ph = 2 * pi * (double)((long long)bins[q] * t % N) / N;
                double c = std::cos(ph), s = std::sin(ph);
                re += re_amp[q] * c - im_amp[q] * s;
                im += re_amp[q] * s + im_amp[q] * c;
            }
            x[b * N + t].x = (float)re;
            x[b * N + t].y = (float)im;
        }
    }
    int ver = 0;
    CKF(cufftGetVersion(&ver));
    std::printf("INFO cufft version %d\n", ver);

    cufftComplex *d;
    CK(cudaMalloc(&d, sizeof(cufftComplex) * N * batch));
    CK(cudaMemcpy(d, x.data(), sizeof(cufftComplex) * N * batch, cudaMemcpyHostToDevice));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cufftHandle plan;
    CKF(cufftPlan1d(&plan, N, CUFFT_C2C, batch));
    CKF(cufftSetStream(plan, s));
    size_t ws = 0;
    CKF(cufftGetSize(plan, &ws));

    CKF(cufftExecC2C(plan, d, d, CUFFT_FORWARD));
    CK(cudaMemcpyAsync(X.data(), d, sizeof(cufftComplex) * N * batch, cudaMemcpyDeviceToHost, s));
    CKF(cufftExecC2C(plan, d, d, CUFFT_INVERSE));
    CK(cudaMemcpyAsync(y.data(), d, sizeof(cufftComplex) * N * batch, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));

    // Spectrum: N * amplitude at the chosen bins, ~0 elsewhere.
    long long nonzero = 0, rounded_sum = 0;
    double max_leak = 0;
    for (int b = 0; b < batch; b++)
        for (int f = 0; f < N; f++) {
            const cufftComplex &v = X[b * N + f];
            long long re = std::llround(v.x / N), im = std::llround(v.y / N);
            if (re || im) nonzero++;
            rounded_sum += (re * 7 + im * 13) * (f + 1) * (b + 1);
            if (!re && !im) max_leak = std::fmax(max_leak, std::fabs(v.x) + std::fabs(v.y));
        }
    if (kernels_run()) {
        EXPECT(nonzero == 3 * batch);
        for (int b = 0; b < batch; b++) {
            EXPECT(std::llround(X[b * N + 3 + b].x / N) == b + 1);
            EXPECT(std::llround(X[b * N + 100 * b + 17].y / N) == -2);
            EXPECT(std::llround(X[b * N + N - 5].x / N) == 4);
        }
        EXPECT(max_leak < 0.1 * N);
    }
    // Round trip: inverse(forward(x)) / N == x.
    double max_err = 0;
    for (int i = 0; i < N * batch; i++)
        max_err = std::fmax(max_err, std::fabs(y[i].x / N - x[i].x) + std::fabs(y[i].y / N - x[i].y));
    if (kernels_run()) EXPECT(max_err < 1e-3);
    result_int("fft_nonzero_bins", nonzero);
    result_int("fft_rounded_sum", rounded_sum);
    result_int("fft_roundtrip_ok", max_err < 1e-3);
    result_int("fft_workspace_nonzero", ws > 0);
    std::printf("INFO fft roundtrip max error %.3e, max leak %.3e\n", max_err, max_leak);

    // Timing: reps forward+inverse pairs.
    Timer t;
    for (int r = 0; r < reps; r++) {
        CKF(cufftExecC2C(plan, d, d, CUFFT_FORWARD));
        CKF(cufftExecC2C(plan, d, d, CUFFT_INVERSE));
    }
    CK(cudaStreamSynchronize(s));
    double fft_ms = t.ms();
    CKF(cufftDestroy(plan));
    CK(cudaStreamDestroy(s));
    CK(cudaFree(d));
    time_ms("fft_4096x4_50_pairs_ms", fft_ms);
    return pass("rt_cufft", wall);
}

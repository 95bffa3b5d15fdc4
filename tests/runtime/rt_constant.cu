// Module globals: __constant__ arrays written with cudaMemcpyToSymbol (whole and at an
// offset, sync and async) and read back with cudaMemcpyFromSymbol; a __device__ global
// reached through cudaGetSymbolAddress / cudaGetSymbolSize and plain cudaMemcpy; kernels read
// the constants and update the global.
#include "common.h"

__constant__ int ctable[256];
__constant__ float coef[4];
__device__ int gdata[1024];
__device__ unsigned long long gcounter;

__global__ void apply(int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = coef[0] + coef[1] * (float)ctable[i & 255] + coef[2] * (float)gdata[i];
        gdata[i] = (int)v + (int)coef[3];
        atomicAdd(&gcounter, (unsigned long long)ctable[(i * 7) & 255]);
    }
}

int main() {
    Timer wall;
    int table[256], back[256];
    for (int i = 0; i < 256; i++) table[i] = (int)(hash32(i) % 1000);
    CK(cudaMemcpyToSymbol(ctable, table, sizeof table));
    CK(cudaMemcpyFromSymbol(back, ctable, sizeof back));
    EXPECT(std::memcmp(table, back, sizeof table) == 0);
    // Overwrite entries 100..149 at an offset, asynchronously.
    int patch[50];
    for (int i = 0; i < 50; i++) patch[i] = 5000 + i;
    CK(cudaMemcpyToSymbolAsync(ctable, patch, sizeof patch, 100 * sizeof(int), cudaMemcpyHostToDevice, 0));
    CK(cudaStreamSynchronize(0));
    for (int i = 0; i < 50; i++) table[100 + i] = patch[i];
    int part[60];
    CK(cudaMemcpyFromSymbol(part, ctable, sizeof part, 95 * sizeof(int)));
    EXPECT(std::memcmp(part, table + 95, sizeof part) == 0);
    CK(cudaMemcpyFromSymbol(back, ctable, sizeof back));
    EXPECT(std::memcmp(table, back, sizeof table) == 0);

    const float hc[4] = {1.0f, 2.0f, 0.5f, 3.0f};  // exact arithmetic below 2^24
    CK(cudaMemcpyToSymbol(coef, hc, sizeof hc));

    int *gptr = nullptr;
    size_t gsize = 0;
    CK(cudaGetSymbolAddress((void **)&gptr, gdata));
    CK(cudaGetSymbolSize(&gsize, gdata));
    EXPECT(gptr != nullptr && gsize == sizeof(int) * 1024);
    result_int("symbol_size", (long long)gsize);
    int g[1024], gb[1024];
    for (int i = 0; i < 1024; i++) g[i] = 2 * i;
    CK(cudaMemcpy(gptr, g, sizeof g, cudaMemcpyHostToDevice));
    unsigned long long zero = 0, counter = 0;
    CK(cudaMemcpyToSymbol(gcounter, &zero, sizeof zero));

    const int launches = 3;
    for (int l = 0; l < launches; l++) apply<<<4, 256>>>(1024);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpyFromSymbol(gb, gdata, sizeof gb));
    CK(cudaMemcpyFromSymbol(&counter, gcounter, sizeof counter));
    // The same through the address.
    int gb2[1024];
    CK(cudaMemcpy(gb2, gptr, sizeof gb2, cudaMemcpyDeviceToHost));
    EXPECT(std::memcmp(gb, gb2, sizeof gb) == 0);

    long long want_counter = 0;
    for (int l = 0; l < launches; l++)
        for (int i = 0; i < 1024; i++) {
            g[i] = (int)(1.0f + 2.0f * (float)table[i & 255] + 0.5f * (float)g[i]) + 3;
            want_counter += table[(i * 7) & 255];
        }
    if (kernels_run()) {
        EXPECT(std::memcmp(gb, g, sizeof g) == 0);
        EXPECT((long long)counter == want_counter);
    }
    result_hex("constant_table_checksum", checksum(back, sizeof back));
    result_hex("device_global_checksum", checksum(gb, sizeof gb));
    result_int("device_counter", (long long)counter);
    return pass("rt_constant", wall);
}

/* CUDA graphs by stream capture: capture 10 launches of vecAdd (c += a + b would not be
 * idempotent, so each launch writes c = a + b into a rotating output), instantiate, launch the
 * graph 3 times, check. Runs unchanged on NVIDIA's libcuda.so.1 and on ours.
 * usage: graph_e2e MODULE [--no-kernel-check] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vgpu_cuda_min.h"
#include "check.h"

int main(int argc, char **argv) {
    int kernel_check = !(argc > 2 && strcmp(argv[2], "--no-kernel-check") == 0);
    CUdevice dev;
    primary_ctx(&dev);
    CUmodule mod;
    CUfunction f;
    CHECK(cuModuleLoad(&mod, argv[1]));
    CHECK(cuModuleGetFunction(&f, mod, "vecAdd"));
    const int n = 1 << 16, outs = 10;
    float *ha = malloc(n * 4), *hb = malloc(n * 4), *hc = malloc(n * 4);
    for (int i = 0; i < n; i++) { ha[i] = (float)i; hb[i] = 0.5f * (float)i; }
    CUdeviceptr da, db, dc[10];
    CHECK(cuMemAlloc_v2(&da, n * 4));
    CHECK(cuMemAlloc_v2(&db, n * 4));
    for (int k = 0; k < outs; k++) { CHECK(cuMemAlloc_v2(&dc[k], n * 4)); CHECK(cuMemsetD32_v2(dc[k], 0, n)); }
    CHECK(cuMemcpyHtoD_v2(da, ha, n * 4));
    CHECK(cuMemcpyHtoD_v2(db, hb, n * 4));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CHECK(cuStreamBeginCapture_v2(s, 0));
    int status = 0;
    CHECK(cuStreamIsCapturing(s, &status));
    if (status != 1) { fprintf(stderr, "FAIL stream not capturing (%d)\n", status); return 1; }
    int nn = n;
    void *params[10][4];
    for (int k = 0; k < outs; k++) {
        params[k][0] = &da; params[k][1] = &db; params[k][2] = &dc[k]; params[k][3] = &nn;
        CHECK(cuLaunchKernel(f, n / 256, 1, 1, 256, 1, 1, 0, s, params[k], NULL));
    }
    CUgraph g;
    CUgraphExec e;
    CHECK(cuStreamEndCapture(s, &g));
    CHECK(cuStreamIsCapturing(s, &status));
    if (status != 0) { fprintf(stderr, "FAIL stream still capturing\n"); return 1; }
    CHECK(cuGraphInstantiateWithFlags(&e, g, 0));
    for (int r = 0; r < 3; r++) CHECK(cuGraphLaunch(e, s));
    CHECK(cuStreamSynchronize(s));
    int bad = 0;
    if (kernel_check) {
        for (int k = 0; k < outs; k++) {
            CHECK(cuMemcpyDtoH_v2(hc, dc[k], n * 4));
            for (int i = 0; i < n; i++) bad += hc[i] != ha[i] + hb[i];
        }
    }
    CHECK(cuGraphExecDestroy(e));
    CHECK(cuGraphDestroy(g));
    printf("graph: 10 captured launches, 3 graph launches, %s\n", kernel_check ? (bad ? "results WRONG" : "results ok") : "not executed");
    printf(bad ? "GRAPH FAIL\n" : "GRAPH PASS\n");
    return bad != 0;
}

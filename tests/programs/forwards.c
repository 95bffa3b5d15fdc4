/* The plain forwards of the protocol's table (vgpu_protocol::for_each_forward!), each called
 * once and its answer printed as a RESULT line, so a native run and a vGPU run can be
 * compared line by line. With --sim-checks it also passes bad input the real driver is not
 * asked (a stream handle nobody created, a NULL out-pointer) and checks the simulator's fixed
 * answers. */
#include <stdio.h>
#include <string.h>
#include "vgpu_cuda_min.h"

typedef union { char pad[64]; int sync_policy; int priority; } AttrValue;
CUresult cuStreamGetAttribute(CUstream s, unsigned attr, AttrValue *v);
CUresult cuStreamSetAttribute(CUstream s, unsigned attr, const AttrValue *v);
CUresult cuStreamCopyAttributes(CUstream dst, CUstream src);
CUresult cuDeviceGetP2PAttribute(int *v, unsigned attr, CUdevice src, CUdevice dst);
CUresult cuDeviceGetTexture1DLinearMaxWidth(size_t *w, unsigned format, unsigned channels, CUdevice d);
CUresult cuDeviceGetExecAffinitySupport(int *v, unsigned type, CUdevice d);
CUresult cuCtxResetPersistingL2Cache(void);
CUresult cuFlushGPUDirectRDMAWrites(unsigned target, unsigned scope);

#define SYNC_POLICY 3   /* CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY */
#define SYNC_YIELD 3    /* CU_SYNC_POLICY_YIELD */

int main(int argc, char **argv) {
    int sim = argc > 1 && strcmp(argv[1], "--sim-checks") == 0;
    CUdevice dev; CUcontext ctx; CUstream a, b;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
        cuCtxSetCurrent(ctx) || cuStreamCreate(&a, CU_STREAM_NON_BLOCKING) ||
        cuStreamCreate(&b, CU_STREAM_NON_BLOCKING)) {
        fprintf(stderr, "FAIL setup\n");
        return 1;
    }
    AttrValue v; memset(&v, 0, sizeof v); v.sync_policy = SYNC_YIELD;
    printf("RESULT set_sync_policy=%d\n", cuStreamSetAttribute(a, SYNC_POLICY, &v));
    memset(&v, 0, sizeof v);
    CUresult r = cuStreamGetAttribute(a, SYNC_POLICY, &v);
    printf("RESULT get_sync_policy=%d value=%d\n", r, v.sync_policy);
    printf("RESULT copy_attributes=%d\n", cuStreamCopyAttributes(b, a));
    memset(&v, 0, sizeof v);
    r = cuStreamGetAttribute(b, SYNC_POLICY, &v);
    printf("RESULT copied_sync_policy=%d value=%d\n", r, v.sync_policy);
    printf("RESULT bad_attribute=%d\n", cuStreamGetAttribute(a, 9999, &v));
    int p2p = -1;
    r = cuDeviceGetP2PAttribute(&p2p, 1, dev, dev);
    printf("RESULT p2p_same_device=%d\n", r);
    size_t width = 0;
    r = cuDeviceGetTexture1DLinearMaxWidth(&width, 0x20 /* FLOAT */, 1, dev);
    printf("RESULT tex1d_linear_max_width=%d width=%zu\n", r, width);
    int affinity = -1;
    r = cuDeviceGetExecAffinitySupport(&affinity, 0 /* SM_COUNT */, dev);
    printf("RESULT exec_affinity_sm_count=%d supported=%d\n", r, affinity);
    printf("RESULT reset_persisting_l2=%d\n", cuCtxResetPersistingL2Cache());
    printf("RESULT flush_rdma_writes=%d\n", cuFlushGPUDirectRDMAWrites(0, 100));
    if (sim) {
        printf("SIM bogus_stream=%d\n", cuStreamGetAttribute((CUstream)0x123456, SYNC_POLICY, &v));
        printf("SIM null_out=%d\n", cuStreamGetAttribute(a, SYNC_POLICY, NULL));
        printf("SIM other_device=%d\n", cuDeviceGetExecAffinitySupport(&affinity, 0, 7));
    }
    cuStreamDestroy_v2(a);
    cuStreamDestroy_v2(b);
    cuDevicePrimaryCtxRelease_v2(dev);
    printf("FORWARDS DONE\n");
    return 0;
}

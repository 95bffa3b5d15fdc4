// Device identity and limits as the runtime reports them: cudaGetDeviceProperties (name,
// compute capability, SM count, memory size and more) cross-checked against
// cudaDeviceGetAttribute, plus cudaGetDeviceCount/cudaGetDevice/cudaSetDevice,
// cudaChooseDevice and cudaDeviceGetLimit. For an unsliced vGPU every value equals native.
#include "common.h"

int main() {
    Timer wall;
    int count = 0, dev = -1;
    CK(cudaGetDeviceCount(&count));
    EXPECT(count >= 1);
    CK(cudaSetDevice(0));
    CK(cudaGetDevice(&dev));
    EXPECT(dev == 0);
    EXPECT_ERR(cudaSetDevice(count), cudaErrorInvalidDevice);
    result_int("device_count", count);

    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    result_str("name", p.name);
    std::printf("RESULT compute_capability=%d.%d\n", p.major, p.minor);
    result_int("multiProcessorCount", p.multiProcessorCount);
    result_int("totalGlobalMem", (long long)p.totalGlobalMem);
    result_int("totalConstMem", (long long)p.totalConstMem);
    result_int("sharedMemPerBlock", (long long)p.sharedMemPerBlock);
    result_int("sharedMemPerBlockOptin", (long long)p.sharedMemPerBlockOptin);
    result_int("regsPerBlock", p.regsPerBlock);
    result_int("warpSize", p.warpSize);
    result_int("maxThreadsPerBlock", p.maxThreadsPerBlock);
    result_int("maxThreadsPerMultiProcessor", p.maxThreadsPerMultiProcessor);
    std::printf("RESULT maxThreadsDim=%d,%d,%d\n", p.maxThreadsDim[0], p.maxThreadsDim[1], p.maxThreadsDim[2]);
    std::printf("RESULT maxGridSize=%d,%d,%d\n", p.maxGridSize[0], p.maxGridSize[1], p.maxGridSize[2]);
    result_int("l2CacheSize", p.l2CacheSize);
    result_int("memoryBusWidth", p.memoryBusWidth);
    result_int("concurrentKernels", p.concurrentKernels);
    result_int("asyncEngineCount", p.asyncEngineCount);
    result_int("unifiedAddressing", p.unifiedAddressing);
    result_int("managedMemory", p.managedMemory);
    result_int("cooperativeLaunch", p.cooperativeLaunch);
    result_int("ECCEnabled", p.ECCEnabled);

    // The same numbers through cudaDeviceGetAttribute.
    struct {
        cudaDeviceAttr a;
        int want;
    } checks[] = {
        {cudaDevAttrComputeCapabilityMajor, p.major},
        {cudaDevAttrComputeCapabilityMinor, p.minor},
        {cudaDevAttrMultiProcessorCount, p.multiProcessorCount},
        {cudaDevAttrWarpSize, p.warpSize},
        {cudaDevAttrMaxThreadsPerBlock, p.maxThreadsPerBlock},
        {cudaDevAttrMaxSharedMemoryPerBlock, (int)p.sharedMemPerBlock},
        {cudaDevAttrL2CacheSize, p.l2CacheSize},
        {cudaDevAttrGlobalMemoryBusWidth, p.memoryBusWidth},
        {cudaDevAttrMaxRegistersPerBlock, p.regsPerBlock},
    };
    for (auto &c : checks) {
        int v = -1;
        CK(cudaDeviceGetAttribute(&v, c.a, 0));
        if (v != c.want) {
            std::fprintf(stderr, "FAIL attribute %d: %d, properties say %d\n", (int)c.a, v, c.want);
            return 1;
        }
    }
    int clock_khz = 0, mem_clock_khz = 0;
    CK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
    CK(cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, 0));
    result_int("clockRate_kHz", clock_khz);
    result_int("memoryClockRate_kHz", mem_clock_khz);

    cudaDeviceProp want;
    std::memset(&want, 0, sizeof want);
    want.major = p.major;
    want.minor = p.minor;
    int chosen = -1;
    CK(cudaChooseDevice(&chosen, &want));
    result_int("chosen_device", chosen);

    size_t stack = 0, heap = 0;
    CK(cudaDeviceGetLimit(&stack, cudaLimitStackSize));
    CK(cudaDeviceGetLimit(&heap, cudaLimitMallocHeapSize));
    result_int("limit_stack", (long long)stack);
    result_int("limit_malloc_heap", (long long)heap);
    return pass("rt_device_props", wall);
}

// Prints every device attribute the driver answers, the device's name, memory and UUID: the
// vGPU must describe the GPU exactly as NVIDIA's driver does (libraries such as cuBLAS choose
// their kernels from these values).
#include <cuda.h>
#include <stdio.h>

int main(void) {
    CUdevice dev;
    if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS) {
        fprintf(stderr, "FAIL cuInit/cuDeviceGet\n");
        return 1;
    }
    char name[256];
    size_t total = 0;
    cuDeviceGetName(name, sizeof name, dev);
    cuDeviceTotalMem(&total, dev);
    printf("RESULT name=%s\nRESULT total_mem=%zu\n", name, total);
    int answered = 0;
    for (int a = 1; a < CU_DEVICE_ATTRIBUTE_MAX; a++) {
        int v = 0;
        CUresult r = cuDeviceGetAttribute(&v, (CUdevice_attribute)a, dev);
        if (r == CUDA_SUCCESS) {
            printf("RESULT attr_%d=%d\n", a, v);
            answered++;
        } else {
            printf("RESULT attr_%d=error_%d\n", a, (int)r);
        }
    }
    printf("PASS device_attrs (%d answered)\n", answered);
    return 0;
}

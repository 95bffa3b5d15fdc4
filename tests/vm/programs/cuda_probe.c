// SPDX-License-Identifier: Apache-2.0
/*
 * cuda_probe - loads libcuda.so.1 the way an application does (dlopen by soname) and makes the
 * first driver calls: cuInit, cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceTotalMem.
 * In the test guest this is the shim over /dev/vgpu0. Exit 0 and "OK cuda_probe ..." on success.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stddef.h>

typedef int (*init_t)(unsigned);
typedef int (*count_t)(int *);
typedef int (*get_t)(int *, int);
typedef int (*name_t)(char *, int, int);
typedef int (*mem_t)(size_t *, int);

int main(void)
{
	void *h = dlopen("libcuda.so.1", RTLD_NOW);
	if (!h) { printf("FAIL cuda_probe dlopen: %s\n", dlerror()); return 1; }
	init_t cuInit = (init_t)dlsym(h, "cuInit");
	count_t cuDeviceGetCount = (count_t)dlsym(h, "cuDeviceGetCount");
	get_t cuDeviceGet = (get_t)dlsym(h, "cuDeviceGet");
	name_t cuDeviceGetName = (name_t)dlsym(h, "cuDeviceGetName");
	mem_t cuDeviceTotalMem = (mem_t)dlsym(h, "cuDeviceTotalMem_v2");
	if (!cuInit || !cuDeviceGetCount || !cuDeviceGet || !cuDeviceGetName || !cuDeviceTotalMem) {
		printf("FAIL cuda_probe: missing symbols\n"); return 1;
	}
	int r = cuInit(0);
	if (r) { printf("FAIL cuda_probe cuInit -> %d\n", r); return 1; }
	int n = 0, dev = 0;
	char name[256] = "";
	size_t mem = 0;
	if ((r = cuDeviceGetCount(&n)) || n < 1) { printf("FAIL cuda_probe cuDeviceGetCount -> %d, n=%d\n", r, n); return 1; }
	if ((r = cuDeviceGet(&dev, 0))) { printf("FAIL cuda_probe cuDeviceGet -> %d\n", r); return 1; }
	if ((r = cuDeviceGetName(name, sizeof(name), dev))) { printf("FAIL cuda_probe cuDeviceGetName -> %d\n", r); return 1; }
	if ((r = cuDeviceTotalMem(&mem, dev))) { printf("FAIL cuda_probe cuDeviceTotalMem -> %d\n", r); return 1; }
	printf("OK cuda_probe devices=%d name='%s' total_mem=%zu\n", n, name, mem);
	return 0;
}

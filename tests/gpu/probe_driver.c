/* Records facts of the real driver that the shim must reproduce:
 *  - for every name, CUDA version and flag, what cuGetProcAddress_v2 returns (the symbol it
 *    resolves to, found with dladdr), printed only where the answer changes with the version;
 *  - every device attribute of device 0.
 * usage: probe_driver NAMES_FILE > probe.tsv */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static const int versions[] = {2000, 3000, 3020, 4000, 5000, 5050, 6000, 6050, 7000, 7050, 8000, 9000, 9020, 10000, 10010,
                               10020, 11000, 11010, 11020, 11030, 11040, 11050, 11060, 11070, 11080, 12000, 12010,
                               12020, 12030, 12040, 12050, 12060, 12080, 12090, 13000};

int main(int argc, char **argv) {
    if (cuInit(0) != CUDA_SUCCESS) return 1;
    FILE *f = fopen(argv[1], "r");
    if (!f) return 2;
    char name[256];
    printf("# procaddr\tname\tflags\tfrom_version\tresult\tstatus\tsymbol\n");
    while (fscanf(f, "%255s", name) == 1) {
        for (unsigned long long flags = 0; flags <= 2; flags++) {
            char last[512] = "";
            for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
                void *p = NULL;
                CUdriverProcAddressQueryResult st = 0;
                CUresult r = cuGetProcAddress_v2(name, &p, versions[i], flags, &st);
                Dl_info info;
                const char *sym = "-";
                if (p && dladdr(p, &info) && info.dli_sname) sym = info.dli_sname;
                char now[512];
                snprintf(now, sizeof now, "%d\t%d\t%s", (int)r, (int)st, sym);
                if (strcmp(now, last) != 0) {
                    printf("procaddr\t%s\t%llu\t%d\t%s\n", name, flags, versions[i], now);
                    strcpy(last, now);
                }
            }
        }
    }
    CUdevice dev;
    cuDeviceGet(&dev, 0);
    for (int a = 1; a < 200; a++) {
        int v = 0;
        CUresult r = cuDeviceGetAttribute(&v, (CUdevice_attribute)a, dev);
        if (r == CUDA_SUCCESS) printf("attribute\t%d\t%d\n", a, v);
    }
    return 0;
}

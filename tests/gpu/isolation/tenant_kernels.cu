// Kernels of the cross-tenant test: the owner fills its buffer; the thief copies from a raw
// device pointer it was given (another tenant's).
extern "C" __global__ void fill(unsigned *p, unsigned n, unsigned seed) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = (i * 2654435761u) ^ seed;
}
extern "C" __global__ void steal(const unsigned *from, unsigned *to, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) to[i] = from[i];
}

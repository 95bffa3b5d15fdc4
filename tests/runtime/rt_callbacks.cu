// Host callbacks: cudaLaunchHostFunc and cudaStreamAddCallback run in stream order, once each,
// after the work before them (they see the values copied back by earlier async copies) and
// before the work after them (a later copy sees what the callback wrote to pinned memory).
#include "common.h"
#include <atomic>
#include <vector>

__global__ void add_k(int *v, int n, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] += k;
}

struct State {
    int *pinned_in;   // what the last D2H copy wrote
    int *pinned_out;  // the callback writes here; the next H2D copy reads it
    int n;
    std::vector<long long> seen;  // pinned_in[0] + pinned_in[n-1] at each callback
    std::vector<int> order;       // callback ids, in the order they ran
    std::atomic<int> calls{0};
    int bad_status = 0;
};

struct Arg {
    State *st;
    int id;
};

static void observe(Arg *a) {
    State *st = a->st;
    st->seen.push_back((long long)st->pinned_in[0] + st->pinned_in[st->n - 1]);
    st->order.push_back(a->id);
    for (int i = 0; i < st->n; i++) st->pinned_out[i] = st->pinned_in[i] + 1000;
    st->calls++;
}
static void CUDART_CB host_fn(void *p) { observe((Arg *)p); }
static void CUDART_CB stream_cb(cudaStream_t, cudaError_t status, void *p) {
    if (status != cudaSuccess) ((Arg *)p)->st->bad_status++;
    observe((Arg *)p);
}

int main() {
    Timer wall;
    const int n = 4096, rounds = 20;
    State st;
    st.n = n;
    CK(cudaMallocHost(&st.pinned_in, n * sizeof(int)));
    CK(cudaMallocHost(&st.pinned_out, n * sizeof(int)));
    for (int i = 0; i < n; i++) st.pinned_out[i] = i;
    int *d;
    CK(cudaMalloc(&d, n * sizeof(int)));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<Arg> args(2 * rounds);
    for (int r = 0; r < rounds; r++) {
        // upload what the previous callback produced, add r, download, observe
        CK(cudaMemcpyAsync(d, st.pinned_out, n * sizeof(int), cudaMemcpyHostToDevice, s));
        add_k<<<(n + 255) / 256, 256, 0, s>>>(d, n, r);
        CK(cudaGetLastError());
        CK(cudaMemcpyAsync(st.pinned_in, d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
        args[2 * r] = {&st, 2 * r};
        if (r % 2 == 0)
            CK(cudaLaunchHostFunc(s, host_fn, &args[2 * r]));
        else
            CK(cudaStreamAddCallback(s, stream_cb, &args[2 * r], 0));
        // a second callback straight after the first: sees the same input
        args[2 * r + 1] = {&st, 2 * r + 1};
        if (r % 2 == 0)
            CK(cudaStreamAddCallback(s, stream_cb, &args[2 * r + 1], 0));
        else
            CK(cudaLaunchHostFunc(s, host_fn, &args[2 * r + 1]));
    }
    CK(cudaStreamSynchronize(s));
    EXPECT(st.calls.load() == 2 * rounds);
    EXPECT(st.bad_status == 0);
    for (int i = 0; i < 2 * rounds; i++) EXPECT(st.order[i] == i);
    // Model: out starts at i; each round: in = out + r; out = in + 1000.
    long long want0 = 0, wantn = n - 1;
    for (int r = 0; r < rounds; r++) {
        long long in0 = want0 + r, inn = wantn + r;
        if (kernels_run()) {
            EXPECT(st.seen[2 * r] == in0 + inn);
            EXPECT(st.seen[2 * r + 1] == in0 + inn);
        }
        want0 = in0 + 1000;
        wantn = inn + 1000;
    }
    long long total = 0;
    for (long long v : st.seen) total += v;
    result_int("callbacks_calls", st.calls.load());
    result_int("callbacks_in_order", 1);
    result_int("callbacks_seen_total", total);
    result_hex("callbacks_final_checksum", checksum(st.pinned_out, n * sizeof(int)));
    CK(cudaStreamDestroy(s));
    CK(cudaFree(d));
    CK(cudaFreeHost(st.pinned_in));
    CK(cudaFreeHost(st.pinned_out));
    return pass("rt_callbacks", wall);
}

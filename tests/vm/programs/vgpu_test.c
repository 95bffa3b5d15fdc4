// SPDX-License-Identifier: Apache-2.0
/*
 * vgpu_test - exercises /dev/vgpuN through the ioctl ABI of guest-driver-shim/kmod/vgpu_uapi.h.
 *
 *   vgpu_test hello  [dev]                 INFO + a protocol Hello round trip
 *   vgpu_test bench  [dev] [iters] [bytes] small-call round trips, then copy bandwidth
 *                                          (data-in -> data-out echo: needs the echo backend)
 *   vgpu_test abi    [dev]                 rejected inputs (EINVAL/EFAULT/E2BIG), NOWAIT
 *   vgpu_test hostile [dev]                malformed device replies (echo backend opcodes 0xFFF0..2)
 *   vgpu_test hang   [dev]                 a request the device never completes (0xFFF3); the
 *                                          caller kills us and checks the module survives
 *   vgpu_test badid  [dev]                 device completes a wrong descriptor id (0xFFF4):
 *                                          EIO, queue broken until the device is re-probed
 *   vgpu_test memcpy [dev] [bytes] [reps]  real daemon: ctx, MemAlloc, HtoD/DtoH verified + timed
 *   vgpu_test hold   [dev] [bytes]         as memcpy, then keeps the allocation and loops forever
 *   vgpu_test flood  [dev] [n] [opcode]    n fire-and-forget messages, then a synchronous one
 *   vgpu_test loop   [dev] [seconds]       Hello round trips in a loop (a second process)
 * Prints "OK <what>" lines; exit status 0 on success.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "vgpu_uapi.h"

static const char *dev = "/dev/vgpu0";
static int fails;
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL %s:%d: ", __func__, __LINE__); printf(__VA_ARGS__); printf("\n"); fails++; } } while (0)

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* header + optional single call record of @body_len bytes with @opcode */
static size_t build_msg(uint8_t *m, uint16_t flags, uint16_t opcode, const void *body, uint32_t body_len,
			uint32_t resp_cap, uint64_t seq)
{
	size_t len = 32;
	memset(m, 0, 32);
	if (opcode) {
		put16(m + 32, opcode); put16(m + 34, 0); put32(m + 36, body_len);
		memcpy(m + 40, body, body_len);
		len = 40 + ((body_len + 7) & ~7u);
	}
	put32(m, VGPU_MSG_MAGIC); put16(m + 4, 1); put16(m + 6, flags);
	put32(m + 8, 0xdeadbeef);	/* the driver must overwrite this */
	put32(m + 12, opcode ? 1 : 0); put32(m + 16, (uint32_t)len); put32(m + 20, resp_cap);
	put64(m + 24, seq);
	return len;
}

static int submit(int fd, const uint8_t *msg, size_t len, uint8_t *resp, uint32_t cap,
		  struct vgpu_seg *in, unsigned nin, struct vgpu_seg *out, unsigned nout, uint32_t flags,
		  struct vgpu_submit *res)
{
	struct vgpu_submit s = {
		.req_ptr = (uintptr_t)msg, .req_len = (uint32_t)len,
		.resp_ptr = (uintptr_t)resp, .resp_cap = cap,
		.data_in_ptr = (uintptr_t)in, .n_data_in = nin,
		.data_out_ptr = (uintptr_t)out, .n_data_out = nout, .flags = flags,
	};
	int r = ioctl(fd, VGPU_IOC_SUBMIT, &s);
	if (res)
		*res = s;
	return r < 0 ? -errno : 0;
}

static int open_dev(struct vgpu_info *info)
{
	int fd = open(dev, O_RDWR | O_CLOEXEC);
	if (fd < 0) { printf("FAIL open %s: %s\n", dev, strerror(errno)); exit(1); }
	if (ioctl(fd, VGPU_IOC_INFO, info) < 0) { printf("FAIL INFO: %s\n", strerror(errno)); exit(1); }
	return fd;
}

static int hello(int fd, int quiet)
{
	uint8_t body[56] = {0}, msg[128], resp[512];
	struct vgpu_submit r;
	put16(body, 1); put16(body + 2, 0); put32(body + 4, 1u << 2);
	memcpy(body + 8, "vgpu_test (tests/vm)", 20);
	size_t len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0x0001, body, sizeof(body), sizeof(resp), 42);
	memset(resp, 0, sizeof(resp));
	int e = submit(fd, msg, len, resp, sizeof(resp), NULL, 0, NULL, 0, 0, &r);
	CHECK(e == 0, "hello submit: %s", strerror(-e));
	if (e) return e;
	CHECK(r.resp_len >= 24 && get32(resp) == VGPU_MSG_MAGIC, "reply len %u magic %#x", r.resp_len, get32(resp));
	CHECK(get32(msg + 8) == 0xdeadbeef, "user copy of the message was modified");
	/* RespHeader (24 B), ReplyHeader (16 B: opcode, reserved, result, len, pad), HelloReply */
	if (!quiet && r.resp_len >= 24 + 16 + 224)
		printf("OK hello reply_len=%u nreplies=%u result=%u device_count=%u message='%.160s'\n",
		       r.resp_len, get32(resp + 4), get32(resp + 24 + 4), get32(resp + 40 + 8),
		       (const char *)resp + 40 + 64);
	else if (!quiet)
		printf("OK hello reply_len=%u nreplies=%u\n", r.resp_len, get32(resp + 4));
	return 0;
}

static int cmd_hello(void)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	printf("OK info uapi=%u client=%u virtio_id=%u proto=%u queues=%u qsize=%u queue=%u max_sg=%u features=%#x minor=%u\n",
	       in.uapi_version, in.client_id, in.virtio_id, in.proto_major, in.num_queues, in.queue_size,
	       in.queue, in.max_sg, in.features, in.minor);
	CHECK(in.client_id != 0, "client id 0");
	int fd2 = open(dev, O_RDWR);
	struct vgpu_info in2;
	CHECK(fd2 >= 0 && ioctl(fd2, VGPU_IOC_INFO, &in2) == 0 && in2.client_id != in.client_id,
	      "second open has a distinct client id");
	if (fd2 >= 0) close(fd2);
	hello(fd, 0);
	close(fd);
	return fails;
}

static int cmd_bench(int iters, size_t bytes)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	uint8_t msg[64], resp[64];
	struct vgpu_submit r;
	double t0, t;
	int i;

	hello(fd, 1);
	size_t len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0, NULL, 0, 64, 1);
	for (i = 0; i < 20; i++) submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, 0, NULL);
	t0 = now();
	for (i = 0; i < iters; i++) {
		int e = submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, 0, &r);
		if (e) { CHECK(0, "rtt submit %d: %s", i, strerror(-e)); break; }
	}
	t = now() - t0;
	printf("OK rtt iters=%d mean_us=%.1f (ncalls=0 message, 32 B request, 24 B reply)\n", iters, t / iters * 1e6);

	/* copy: data-in of @bytes, data-out of @bytes, echo backend copies in -> out */
	uint8_t *src = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *dst = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t k = 0; k < bytes; k++) src[k] = (uint8_t)(k * 7 + 3);
	memset(dst, 0, bytes);
	struct vgpu_seg si = { (uintptr_t)src, bytes }, so = { (uintptr_t)dst, bytes };
	len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0, NULL, 0, 64, 2);
	int reps = 5;
	int e = submit(fd, msg, len, resp, 64, &si, 1, &so, 1, 0, &r);
	CHECK(e == 0, "copy submit: %s", strerror(-e));
	CHECK(e || (r.data_out_written == bytes && memcmp(src, dst, bytes) == 0),
	      "echo data mismatch (written %llu of %zu)", (unsigned long long)r.data_out_written, bytes);
	t0 = now();
	for (i = 0; i < reps && !e; i++) {
		e = submit(fd, msg, len, resp, 64, &si, 1, NULL, 0, 0, &r);	/* host-to-device only */
	}
	t = now() - t0;
	printf("OK copy_in bytes=%zu reps=%d MB/s=%.1f\n", bytes, reps, bytes * (double)reps / t / 1e6);
	t0 = now();
	for (i = 0; i < reps && !e; i++)
		e = submit(fd, msg, len, resp, 64, &si, 1, &so, 1, 0, &r);	/* in + out */
	t = now() - t0;
	printf("OK copy_in_out bytes=%zu reps=%d MB/s(each way)=%.1f\n", bytes, reps, bytes * (double)reps / t / 1e6);
	close(fd);
	return fails;
}

static int cmd_abi(void)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	uint8_t msg[64], resp[64];
	struct vgpu_submit s = {0};
	size_t len;
	int e;

	len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0, NULL, 0, 64, 1);
	msg[0] ^= 1;
	e = submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, 0, NULL);
	CHECK(e == -EINVAL, "bad magic -> %d", e);
	len = build_msg(msg, VGPU_MSG_F_CLIENT_CLOSE, 0, NULL, 0, 0, 1);
	CHECK(submit(fd, msg, len, NULL, 0, NULL, 0, NULL, 0, 0, NULL) == -EINVAL, "CLIENT_CLOSE from user");
	len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0, NULL, 0, 64, 1);
	CHECK(submit(fd, msg, len - 1, resp, 64, NULL, 0, NULL, 0, 0, NULL) == -EINVAL, "req_len mismatch");
	CHECK(submit(fd, msg, len, resp, 32, NULL, 0, NULL, 0, 0, NULL) == -EINVAL, "resp buffer smaller than resp_cap");
	CHECK(submit(fd, msg, len, (uint8_t *)8, 64, NULL, 0, NULL, 0, 0, NULL) == -EFAULT, "bad resp pointer");
	struct vgpu_seg bad = { 0x10, 4096 };
	CHECK(submit(fd, msg, len, resp, 64, &bad, 1, NULL, 0, 0, NULL) == -EFAULT, "bad data-in pointer");
	CHECK(submit(fd, msg, len, resp, 64, NULL, VGPU_MAX_SEGS + 1, NULL, 0, 0, NULL) == -E2BIG, "too many segs");
	CHECK(submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, VGPU_SUBMIT_F_NOWAIT, NULL) == -EINVAL, "NOWAIT with reply");
	s.req_ptr = (uintptr_t)msg; s.req_len = (uint32_t)len; s.resp_ptr = (uintptr_t)resp; s.resp_cap = 64; s.reserved[1] = 1;
	CHECK(ioctl(fd, VGPU_IOC_SUBMIT, &s) < 0 && errno == EINVAL, "reserved nonzero");
	CHECK(ioctl(fd, _IO(VGPU_IOC_MAGIC, 0x7f)) < 0 && errno == ENOTTY, "unknown ioctl");
	/* scatter limit: a 64 MiB data-in of 4 KiB-discontiguous pages exceeds max_sg */
	size_t big = 64u << 20;
	uint8_t *b = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t k = 0; k < big; k += 4096) b[k] = 1;
	struct vgpu_seg bs = { (uintptr_t)b, big };
	e = submit(fd, msg, len, resp, 64, &bs, 1, NULL, 0, 0, NULL);
	CHECK(e == -E2BIG || e == 0, "64 MiB data-in -> %d", e);
	printf("OK abi 64MiB data-in -> %s\n", e ? strerror(-e) : "accepted (pages merged)");
	munmap(b, big);
	/* fire-and-forget with data-in, then a synchronous call orders after it */
	uint8_t *d = malloc(1 << 20);
	memset(d, 0x5a, 1 << 20);
	struct vgpu_seg ds = { (uintptr_t)d, 1 << 20 };
	for (int i = 0; i < 200; i++) {
		len = build_msg(msg, 0, 0, NULL, 0, 0, 100 + i);
		e = submit(fd, msg, len, NULL, 0, &ds, 1, NULL, 0, VGPU_SUBMIT_F_NOWAIT, NULL);
		if (e) { CHECK(0, "NOWAIT %d: %s", i, strerror(-e)); break; }
	}
	CHECK(hello(fd, 1) == 0, "sync after 200 NOWAIT");
	free(d);	/* pages stay pinned in the kernel until the device returned them */
	printf("OK abi (%d failures)\n", fails);
	close(fd);
	return fails;
}

static int cmd_hostile(void)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	uint8_t msg[64], resp[64], body[8] = {0};
	size_t len;
	int e;
	len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0xFFF0, body, 8, 64, 1);
	e = submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, 0, NULL);
	CHECK(e == -EIO, "used length beyond buffers -> %d", e);
	len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0xFFF1, body, 8, 64, 2);
	e = submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, 0, NULL);
	CHECK(e == -EBADMSG, "empty reply -> %d", e);
	len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0xFFF2, body, 8, 64, 3);
	e = submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, 0, NULL);
	CHECK(e == -EBADMSG, "reply without magic -> %d", e);
	CHECK(hello(fd, 1) == 0, "device still usable after hostile replies");
	printf("OK hostile (%d failures)\n", fails);
	close(fd);
	return fails;
}

/* the device completes a descriptor id that is not a chain head: the ring core marks the queue
 * broken; this request and later ones on the queue must fail with EIO, not hang or oops */
static int cmd_badid(void)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	uint8_t msg[64], resp[64], body[8] = {0};
	size_t len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0xFFF4, body, 8, 64, 1);
	int e = submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, 0, NULL);
	CHECK(e == -EIO, "bad id completion -> %d", e);
	len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0, NULL, 0, 64, 2);
	e = submit(fd, msg, len, resp, 64, NULL, 0, NULL, 0, 0, NULL);
	CHECK(e == -EIO, "request on the broken queue -> %d", e);
	printf("OK badid queue %u broken, requests fail with EIO (%d failures)\n", in.queue, fails);
	close(fd);
	return fails;
}

/* @n fire-and-forget messages (one call record with @opcode if nonzero), then a synchronous one */
static int cmd_flood(int n, unsigned opcode)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	uint8_t msg[64], body[8] = {0};
	double t0 = now();
	int i, e = 0;
	for (i = 0; i < n; i++) {
		size_t len = build_msg(msg, 0, (uint16_t)opcode, body, 8, 0, 1000 + i);
		e = submit(fd, msg, len, NULL, 0, NULL, 0, NULL, 0, VGPU_SUBMIT_F_NOWAIT, NULL);
		if (e) { CHECK(0, "flood %d: %s", i, strerror(-e)); break; }
	}
	double t1 = now();
	CHECK(hello(fd, 1) == 0, "sync after flood");
	printf("OK flood n=%d opcode=%#x submit_us=%.1f each, drained after %.3f s\n", i, opcode,
	       (t1 - t0) / (i ? i : 1) * 1e6, now() - t0);
	close(fd);
	return fails;
}

/* one call, synchronous, against the real daemon; returns the reply body pointer or NULL */
static uint8_t rbuf[4096];
static const uint8_t *call1(int fd, uint16_t opcode, const void *body, uint32_t blen,
			    struct vgpu_seg *in, unsigned nin, struct vgpu_seg *out, unsigned nout,
			    struct vgpu_submit *res)
{
	uint8_t msg[256];
	static uint64_t seq = 100;
	size_t len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, opcode, body, blen, sizeof(rbuf), seq++);
	int e = submit(fd, msg, len, rbuf, sizeof(rbuf), in, nin, out, nout, 0, res);
	if (e) { printf("FAIL call %#x: %s\n", opcode, strerror(-e)); fails++; return NULL; }
	if (get32(rbuf + 4) < 1 || get32(rbuf + 24 + 4) != 0) {
		printf("FAIL call %#x: nreplies %u result %u\n", opcode, get32(rbuf + 4), get32(rbuf + 28));
		fails++; return NULL;
	}
	return rbuf + 24 + 16;	/* RespHeader, ReplyHeader */
}

static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/*
 * Real-daemon data path: Hello, PrimaryCtxRetain, MemAlloc, then MemcpyHtoD from pinned guest
 * pages (data-in) and MemcpyDtoH into pinned guest pages (data-out), checked byte for byte and
 * timed. With hold=1 it then keeps the allocation and loops (for the kill test).
 */
static int cmd_memcpy(size_t bytes, int reps, int hold)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	struct vgpu_submit r;
	uint8_t b[64] = {0};
	const uint8_t *p;

	if (hello(fd, 1)) return 1;
	put32(b, 0); put32(b + 4, 0);					/* DeviceArg{device 0} */
	if (!(p = call1(fd, 0x0022, b, 8, NULL, 0, NULL, 0, NULL))) return 1;
	uint64_t ctx = get64(p);
	put64(b, ctx); put64(b + 8, bytes);				/* MemAlloc{ctx, size} */
	if (!(p = call1(fd, 0x0030, b, 16, NULL, 0, NULL, 0, NULL))) return 1;
	uint64_t dptr = get64(p);
	uint8_t *src = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *dst = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t k = 0; k < bytes; k++) src[k] = (uint8_t)(k * 13 + 5);
	memset(dst, 0, bytes);
	/* MemcpyHtoD{ctx, stream, dst, DataRef{offset, len}} / MemcpyDtoH{ctx, stream, src, DataRef} */
	uint8_t h2d[48], d2h[48];
	put64(h2d, ctx); put64(h2d + 8, 0); put64(h2d + 16, dptr); put64(h2d + 24, 0); put64(h2d + 32, bytes);
	put64(d2h, ctx); put64(d2h + 8, 0); put64(d2h + 16, dptr); put64(d2h + 24, 0); put64(d2h + 32, bytes);
	struct vgpu_seg si = { (uintptr_t)src, bytes }, so = { (uintptr_t)dst, bytes };
	if (!call1(fd, 0x0034, h2d, 40, &si, 1, NULL, 0, &r)) return 1;
	if (!call1(fd, 0x0035, d2h, 40, NULL, 0, &so, 1, &r)) return 1;
	CHECK(r.data_out_written == bytes, "DtoH data_out_written %llu", (unsigned long long)r.data_out_written);
	CHECK(memcmp(src, dst, bytes) == 0, "DtoH data differs from HtoD data");
	double t0 = now();
	for (int i = 0; i < reps && !fails; i++) call1(fd, 0x0034, h2d, 40, &si, 1, NULL, 0, &r);
	double t1 = now();
	for (int i = 0; i < reps && !fails; i++) call1(fd, 0x0035, d2h, 40, NULL, 0, &so, 1, &r);
	double t2 = now();
	printf("OK memcpy ctx=%#llx dptr=%#llx bytes=%zu verified; HtoD %.1f MB/s, DtoH %.1f MB/s (%d reps)\n",
	       (unsigned long long)ctx, (unsigned long long)dptr, bytes,
	       bytes * (double)reps / (t1 - t0) / 1e6, bytes * (double)reps / (t2 - t1) / 1e6, reps);
	if (hold) {
		printf("HOLD client=%u holds %zu bytes of device memory\n", in.client_id, bytes);
		for (;;) hello(fd, 1);
	}
	close(fd);
	return fails;
}

static int cmd_hang(void)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	uint8_t msg[64], resp[64], body[8] = {0};
	uint8_t *d = malloc(1 << 16);
	struct vgpu_seg ds = { (uintptr_t)d, 1 << 16 };
	size_t len = build_msg(msg, VGPU_MSG_F_WANT_REPLY, 0xFFF3, body, 8, 64, 1);
	printf("HANG submitting a request the device never completes (client %u)\n", in.client_id);
	fflush(stdout);
	int e = submit(fd, msg, len, resp, 64, &ds, 1, NULL, 0, 0, NULL);
	printf("HANG returned %d\n", e);
	return 1;
}

static int cmd_loop(int secs)
{
	struct vgpu_info in;
	int fd = open_dev(&in);
	double end = now() + secs;
	long n = 0;
	printf("LOOP client=%u pid=%d for %ds\n", in.client_id, (int)getpid(), secs);
	while (now() < end && !fails) { hello(fd, 1); n++; }
	printf("OK loop client=%u round_trips=%ld\n", in.client_id, n);
	close(fd);
	return fails;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "hello";
	if (argc > 2) dev = argv[2];
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(cmd, "hello")) return cmd_hello() ? 1 : 0;
	if (!strcmp(cmd, "bench")) return cmd_bench(argc > 3 ? atoi(argv[3]) : 1000, argc > 4 ? strtoul(argv[4], 0, 0) : (16u << 20)) ? 1 : 0;
	if (!strcmp(cmd, "abi")) return cmd_abi() ? 1 : 0;
	if (!strcmp(cmd, "hostile")) return cmd_hostile() ? 1 : 0;
	if (!strcmp(cmd, "hang")) return cmd_hang();
	if (!strcmp(cmd, "badid")) return cmd_badid() ? 1 : 0;
	if (!strcmp(cmd, "memcpy") || !strcmp(cmd, "hold"))
		return cmd_memcpy(argc > 3 ? strtoul(argv[3], 0, 0) : (4u << 20), argc > 4 ? atoi(argv[4]) : 10,
				  !strcmp(cmd, "hold")) ? 1 : 0;
	if (!strcmp(cmd, "flood")) return cmd_flood(argc > 3 ? atoi(argv[3]) : 1000, argc > 4 ? strtoul(argv[4], 0, 0) : 0) ? 1 : 0;
	if (!strcmp(cmd, "loop")) return cmd_loop(argc > 3 ? atoi(argv[3]) : 5) ? 1 : 0;
	fprintf(stderr, "usage: %s hello|bench|abi|hostile|hang|loop [dev] ...\n", argv[0]);
	return 2;
}

/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR Apache-2.0 */
/*
 * vgpu_uapi.h - userspace ABI of the vgpu guest driver (/dev/vgpuN).
 *
 * One open file = one client of the host daemon. The driver assigns the client id (nonzero u32,
 * from a module-wide counter with a random start: unique among the files of a device, and not
 * reused after a device reset or module reload short of 2^32 opens) and writes it into every
 * request header, so a process can never speak for another. Closing the file (or the death of the process) sends a
 * CLIENT_CLOSE message and the host frees everything that client held.
 *
 * All structures have fixed-size fields, natural alignment and no implicit padding: the same
 * layout on 32- and 64-bit userspace. Pointers are passed as __u64.
 * Documented in docs/vm.md ("Guest driver ABI").
 */
#ifndef _UAPI_VGPU_H
#define _UAPI_VGPU_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define VGPU_UAPI_VERSION	1

/* Wire constants shared with the protocol crate (protocol/src/lib.rs). */
#define VGPU_MSG_MAGIC		0x55504756u	/* "VGPU" little-endian */
#define VGPU_MSG_HDR_LEN	32
#define VGPU_MSG_F_WANT_REPLY	(1u << 0)
#define VGPU_MSG_F_CLIENT_CLOSE	(1u << 1)	/* reserved to the kernel driver */

/* One user memory range of a data stream. */
struct vgpu_seg {
	__u64 addr;	/* user virtual address */
	__u64 len;	/* bytes; 0 is allowed and skipped */
};

/* VGPU_IOC_SUBMIT flags */
#define VGPU_SUBMIT_F_NOWAIT	(1u << 0)	/* fire-and-forget, see below */

/*
 * struct vgpu_submit - one request, one descriptor chain.
 *
 * in:  req_ptr/req_len   the request message (32-byte header + call records). Copied into the
 *                        kernel; header magic must be VGPU_MSG_MAGIC and header.req_len must
 *                        equal req_len; header.flags must not have CLIENT_CLOSE; the driver
 *                        overwrites header.client.
 *      resp_ptr/resp_cap user buffer for the reply. The reply area on the ring is exactly
 *                        header.resp_cap bytes (kernel buffer, copied back); resp_cap (the
 *                        user buffer size) must be >= header.resp_cap. header.flags WANT_REPLY
 *                        requires header.resp_cap >= 4.
 *      data_in_ptr/n_data_in    array of struct vgpu_seg: device-readable bulk data, placed on
 *                        the ring after the message (zero copy: pages are pinned).
 *      data_out_ptr/n_data_out  array of struct vgpu_seg: device-writable bulk data, placed
 *                        after the reply area (zero copy).
 *      flags             VGPU_SUBMIT_F_NOWAIT: return as soon as the chain is queued. Allowed
 *                        only when header.resp_cap == 0, WANT_REPLY is clear and n_data_out == 0.
 *                        The data-in pages stay pinned until the device returns the buffer, and
 *                        the device reads them *then*: userspace must not modify data-in
 *                        memory until a later synchronous request on the same file has
 *                        completed (requests of one file go to one queue, in order).
 *      reserved          must be zero.
 * out: resp_len          bytes of the reply area the device wrote (min(used, header.resp_cap));
 *                        the first resp_len bytes of resp_ptr are valid.
 *      data_out_written  bytes the device wrote into the data-out stream (used - header.resp_cap,
 *                        when used > header.resp_cap).
 *
 * Return: 0 on success, -1 with errno:
 *   EINVAL   malformed submit or header; E2BIG  more than VGPU_MAX_SEGS segments per direction,
 *            more than 1 GiB of data,
 *            more scatter entries than vgpu_info.max_sg, or message/reply above the limits;
 *   EFAULT   bad user pointer; ENOMEM; ENODEV  device removed;
 *   EIO      the device returned a malformed completion (used length beyond the buffers) or
 *            the virtqueue broke; EBADMSG  the reply area does not start with VGPU_MSG_MAGIC;
 *   ETIMEDOUT  the module parameter timeout_ms expired; the request stays owned by the device
 *            (its pages stay pinned) until the device returns it;
 *   EINTR    only for a fatal signal (the process is dying) - a submitted request is not
 *            interrupted by ordinary signals, because the host would execute it anyway.
 */
struct vgpu_submit {
	__u64 req_ptr;
	__u64 resp_ptr;
	__u64 data_in_ptr;
	__u64 data_out_ptr;
	__u32 req_len;
	__u32 resp_cap;
	__u32 n_data_in;
	__u32 n_data_out;
	__u32 flags;
	__u32 resp_len;		/* out */
	__u64 data_out_written;	/* out */
	__u64 reserved[2];
};

/* VGPU_IOC_INFO: what this file and device are. */
struct vgpu_info {
	__u32 uapi_version;	/* VGPU_UAPI_VERSION */
	__u32 client_id;	/* this file's client id */
	__u32 virtio_id;	/* 41 (vhost-user-gpio-pci) or 38/39 (generic device) */
	__u16 proto_major;	/* from config space */
	__u16 num_queues;	/* queues the driver uses */
	__u32 queue_size;	/* entries of queue 0 */
	__u32 queue;		/* queue this file's requests go to */
	__u32 max_sg;		/* scatter entries per request (message+data+reply) */
	__u32 max_segs;		/* vgpu_seg entries per direction */
	__u32 max_req_len;	/* bytes */
	__u32 max_resp_len;	/* bytes */
	__u32 features;		/* VGPU_INFO_F_* */
	__u32 minor;		/* N of /dev/vgpuN */
	__u64 reserved[2];
};
#define VGPU_INFO_F_INDIRECT	(1u << 0)	/* VIRTIO_RING_F_INDIRECT_DESC negotiated */
#define VGPU_INFO_F_EVENT_IDX	(1u << 1)
#define VGPU_INFO_F_POLL	(1u << 2)	/* module is in polling mode */

#define VGPU_MAX_SEGS		256

#define VGPU_IOC_MAGIC		0xB8	/* not registered in ioctl-number.rst */
#define VGPU_IOC_INFO		_IOR(VGPU_IOC_MAGIC, 0x00, struct vgpu_info)
#define VGPU_IOC_SUBMIT		_IOWR(VGPU_IOC_MAGIC, 0x01, struct vgpu_submit)

#endif /* _UAPI_VGPU_H */

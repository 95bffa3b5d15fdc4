// SPDX-License-Identifier: GPL-2.0
/*
 * vgpu.ko - guest driver for the vGPU paravirtual virtio device.
 *
 * The device is served by the host's vhost-gpu daemon over vhost-user. With stock QEMU it is
 * attached as vhost-user-gpio-pci (virtio id 41); with a QEMU whose generic
 * vhost-user-device-pci is user-creatable it may use virtio id 38 or 39. In every case the
 * driver only binds when the 8-byte config space starts with "VGPU", so a real virtio-gpio
 * device is never claimed.
 *
 * Each open file of /dev/vgpuN is one client. VGPU_IOC_SUBMIT sends one request as one
 * descriptor chain: [message (kernel copy)] [data-in (pinned user pages)] readable, then
 * [reply area (kernel buffer)] [data-out (pinned user pages)] writable. See vgpu_uapi.h and
 * docs/vm.md.
 *
 * Lifetime rules:
 *  - a request (struct vgpu_req) is refcounted: one reference belongs to the ring while the
 *    chain is queued, one to the waiting ioctl. Pages stay pinned until the last reference
 *    goes, so an interrupted, timed-out or fire-and-forget request never frees memory the
 *    device may still access.
 *  - the device struct is refcounted by probe and by every open file; after remove() files
 *    see -ENODEV.
 *  - nothing the device returns is trusted: used lengths are checked against the buffers,
 *    tokens come from the ring's own bookkeeping (which marks the queue broken on a bad id),
 *    and a broken queue fails the waiters instead of hanging them.
 */
#include <linux/module.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <linux/scatterlist.h>
#include <linux/uaccess.h>
#include <linux/kref.h>
#include <linux/completion.h>
#include <linux/workqueue.h>
#include <linux/idr.h>
#include <linux/sched/signal.h>
#include <linux/ktime.h>
#include <linux/sizes.h>
#include <linux/random.h>
#include <asm/unaligned.h>

#include "vgpu_uapi.h"

#define VGPU_VIRTIO_ID_GPIO	41	/* posing as vhost-user-gpio-pci on stock QEMU */
#define VGPU_VIRTIO_ID_GEN_A	38	/* generic vhost-user-device-pci, virtio-id=38 */
#define VGPU_VIRTIO_ID_GEN_B	39
#define VGPU_MAX_QUEUES		16
#define VGPU_MAX_REQ_LEN	(4u << 20)
#define VGPU_MAX_RESP_LEN	(4u << 20)
#define VGPU_SG_MAX_SEGMENT	(1u << 30)
#define VGPU_MAX_DATA		(1ull << 30)	/* data-in + data-out bytes per request */

static bool poll_mode;
module_param_named(poll, poll_mode, bool, 0644);
MODULE_PARM_DESC(poll, "busy-poll the used ring for poll_us before sleeping (default off)");
static unsigned int poll_us = 200;
module_param(poll_us, uint, 0644);
MODULE_PARM_DESC(poll_us, "polling window in microseconds when poll=1 (max 10000)");
static unsigned int timeout_ms;
module_param(timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms, "give up waiting for a reply after this many ms (0 = never)");
static unsigned int max_sg = 2048;
module_param(max_sg, uint, 0444);
MODULE_PARM_DESC(max_sg, "max scatter entries per request (message + data + reply)");
static unsigned int max_queues = VGPU_MAX_QUEUES;
module_param(max_queues, uint, 0444);
MODULE_PARM_DESC(max_queues, "use at most this many virtqueues");
static bool debug;
module_param(debug, bool, 0644);
MODULE_PARM_DESC(debug, "log every request");

static DEFINE_IDA(vgpu_ida);
/*
 * Client ids come from one module-wide counter with a random start, so a device that is
 * unbound and probed again (or a module reload) does not hand out the ids of clients the host
 * may still know from before the reset.
 */
static atomic_t vgpu_next_client;
static struct workqueue_struct *vgpu_wq;

struct vgpu_dev;

struct vgpu_vq {
	struct vgpu_dev *vg;
	struct virtqueue *vq;
	spinlock_t lock;		/* vq, inflight, spinners, vg->dead */
	wait_queue_head_t space_wq;	/* ring full -> wait here */
	struct list_head inflight;
	unsigned int spinners;
	unsigned int idx;
	unsigned int space_gen;		/* bumped when buffers come back or the device goes */
};

struct vgpu_dev {
	struct kref ref;
	struct virtio_device *vdev;
	struct miscdevice misc;
	char name[16];
	int index;
	bool dead;			/* written under every queue lock */
	u16 proto_major;
	u32 virtio_id;
	unsigned int nvqs;
	unsigned int qsize;
	bool indirect;			/* features cached at probe: vdev may be gone after remove */
	bool event_idx;
	struct {			/* /sys/class/misc/vgpuN/stats */
		atomic64_t submitted, nowait, completed, ring_full_waits, bad_used_len, bad_reply,
			   closes_sent, closes_failed;
	} st;
	struct vgpu_vq vqs[VGPU_MAX_QUEUES];
};

struct vgpu_file {
	struct vgpu_dev *vg;
	u32 client;
	unsigned int q;
};

struct vgpu_pin {
	struct page **pages;
	unsigned int npages;
	bool writable;
	struct sg_table sgt;
	bool has_sgt;
};

struct vgpu_req {
	struct kref ref;
	struct list_head node;		/* vgpu_vq.inflight while queued */
	struct vgpu_vq *q;
	struct completion done;
	struct work_struct free_work;
	int status;			/* 0, or -EIO/-ENODEV set by the driver */
	bool queued;
	bool signalled;
	u32 used;
	void *msg;
	u32 msg_len;
	struct sg_table msg_sgt;
	void *resp;
	u32 resp_cap;
	struct sg_table resp_sgt;
	u64 writable_total;
	unsigned int npins;
	struct vgpu_pin pins[];
};

/* ---------------------------------------------------------------- buffers */

/* Scatter table for a kvmalloc'd kernel buffer (kmalloc: contiguous; vmalloc: page by page). */
static int vgpu_kbuf_sgt(void *buf, u32 len, struct sg_table *sgt)
{
	unsigned int off, n, i;
	struct page **pages;
	int ret;

	if (!is_vmalloc_addr(buf)) {
		ret = sg_alloc_table(sgt, 1, GFP_KERNEL);
		if (ret)
			return ret;
		sg_set_buf(sgt->sgl, buf, len);
		return 0;
	}
	off = offset_in_page(buf);
	n = DIV_ROUND_UP(off + len, PAGE_SIZE);
	pages = kmalloc_array(n, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		pages[i] = vmalloc_to_page((u8 *)buf - off + (size_t)i * PAGE_SIZE);
	ret = sg_alloc_table_from_pages_segment(sgt, pages, n, off, len, VGPU_SG_MAX_SEGMENT,
						GFP_KERNEL);
	kfree(pages);
	return ret;
}

static void vgpu_unpin(struct vgpu_pin *p)
{
	if (p->has_sgt)
		sg_free_table(&p->sgt);
	if (p->pages) {
		if (p->writable)
			unpin_user_pages_dirty_lock(p->pages, p->npages, true);
		else
			unpin_user_pages(p->pages, p->npages);
		kvfree(p->pages);
	}
	p->pages = NULL;
	p->has_sgt = false;
}

static int vgpu_pin_seg(struct vgpu_pin *p, u64 addr, u64 len, bool writable)
{
	unsigned long start = addr & PAGE_MASK;
	unsigned int off = offset_in_page(addr);
	unsigned long npages;
	unsigned int done = 0;
	int ret;

	p->writable = writable;
	if (addr + len < addr || len > (u64)UINT_MAX)
		return -EINVAL;
	if (!access_ok(u64_to_user_ptr(addr), len))
		return -EFAULT;
	npages = DIV_ROUND_UP(off + len, PAGE_SIZE);
	p->pages = kvmalloc_array(npages, sizeof(*p->pages), GFP_KERNEL);
	if (!p->pages)
		return -ENOMEM;
	while (done < npages) {
		ret = pin_user_pages_fast(start + (unsigned long)done * PAGE_SIZE, npages - done,
					  writable ? FOLL_WRITE : 0, p->pages + done);
		if (ret <= 0) {
			ret = ret ? ret : -EFAULT;
			goto fail;
		}
		done += ret;
	}
	p->npages = done;
	ret = sg_alloc_table_from_pages_segment(&p->sgt, p->pages, npages, off, len,
						VGPU_SG_MAX_SEGMENT, GFP_KERNEL);
	if (ret)
		goto fail;
	p->has_sgt = true;
	return 0;
fail:
	p->npages = done;
	vgpu_unpin(p);
	return ret;
}

static void vgpu_req_free(struct vgpu_req *req)
{
	unsigned int i;

	for (i = 0; i < req->npins; i++)
		vgpu_unpin(&req->pins[i]);
	if (req->msg_sgt.sgl)
		sg_free_table(&req->msg_sgt);
	if (req->resp_sgt.sgl)
		sg_free_table(&req->resp_sgt);
	kvfree(req->msg);
	kvfree(req->resp);
	kfree(req);
}

static void vgpu_req_free_work(struct work_struct *w)
{
	vgpu_req_free(container_of(w, struct vgpu_req, free_work));
}

static void vgpu_req_release_process(struct kref *ref)
{
	vgpu_req_free(container_of(ref, struct vgpu_req, ref));
}

/* Unpinning may sleep: from interrupt context the last put defers to a workqueue. */
static void vgpu_req_release_deferred(struct kref *ref)
{
	struct vgpu_req *req = container_of(ref, struct vgpu_req, ref);

	queue_work(vgpu_wq, &req->free_work);
}

static struct vgpu_req *vgpu_req_alloc(unsigned int npins)
{
	struct vgpu_req *req = kzalloc(struct_size(req, pins, npins), GFP_KERNEL);

	if (!req)
		return NULL;
	kref_init(&req->ref);
	init_completion(&req->done);
	INIT_WORK(&req->free_work, vgpu_req_free_work);
	INIT_LIST_HEAD(&req->node);
	req->npins = npins;
	return req;
}

/* ---------------------------------------------------------------- completion */

/* Drain used buffers. Called with q->lock held; completed requests go to @reaped. */
static void vgpu_drain_locked(struct vgpu_vq *q, struct list_head *reaped)
{
	struct vgpu_req *req, *tmp;
	unsigned int len;

	if (q->vg->dead)
		return;
	while ((req = virtqueue_get_buf(q->vq, &len)) != NULL) {
		if (unlikely(req->q != q || !req->queued)) {
			/* cannot happen unless the ring bookkeeping is corrupt: do not touch it */
			dev_err_ratelimited(&q->vg->vdev->dev, "q%u: unknown token %p\n", q->idx, req);
			continue;
		}
		req->queued = false;
		req->used = len;
		list_move_tail(&req->node, reaped);
		atomic64_inc(&q->vg->st.completed);
	}
	if (unlikely(virtqueue_is_broken(q->vq))) {
		/* fail the waiters; the buffers stay owned by the ring until remove() */
		list_for_each_entry_safe(req, tmp, &q->inflight, node) {
			if (!req->signalled) {
				req->signalled = true;
				req->status = -EIO;
				complete(&req->done);
			}
		}
	}
}

static void vgpu_finish_reaped(struct vgpu_vq *q, struct list_head *reaped, bool atomic)
{
	struct vgpu_req *req, *tmp;
	bool any = false;

	list_for_each_entry_safe(req, tmp, reaped, node) {
		list_del_init(&req->node);
		any = true;
		if (!req->signalled) {
			req->signalled = true;
			complete(&req->done);
		}
		kref_put(&req->ref, atomic ? vgpu_req_release_deferred : vgpu_req_release_process);
	}
	if (any) {
		WRITE_ONCE(q->space_gen, READ_ONCE(q->space_gen) + 1);
		wake_up(&q->space_wq);
	}
}

static void vgpu_vq_callback(struct virtqueue *vq)
{
	struct vgpu_dev *vg = vq->vdev->priv;
	struct vgpu_vq *q;
	unsigned long flags;
	LIST_HEAD(reaped);

	if (!vg || vq->index >= vg->nvqs)
		return;
	q = &vg->vqs[vq->index];
	spin_lock_irqsave(&q->lock, flags);
	if (!vg->dead) {
		do {
			virtqueue_disable_cb(vq);
			vgpu_drain_locked(q, &reaped);
		} while (!q->spinners && !virtqueue_enable_cb(vq) && !virtqueue_is_broken(vq));
	}
	spin_unlock_irqrestore(&q->lock, flags);
	vgpu_finish_reaped(q, &reaped, true);
}

/* ---------------------------------------------------------------- submission */

/*
 * Queue @req with the given scatter lists and kick. Waits for ring space: killable for user
 * requests, bounded and uninterruptible for the close message of a dying process.
 */
static int vgpu_queue(struct vgpu_vq *q, struct vgpu_req *req, struct scatterlist **sgs,
		      unsigned int nout, unsigned int nin, bool killable)
{
	struct vgpu_dev *vg = q->vg;
	unsigned long flags;
	unsigned int gen;
	int tries = 0;
	bool kick;
	int ret;

	for (;;) {
		spin_lock_irqsave(&q->lock, flags);
		if (vg->dead) {
			spin_unlock_irqrestore(&q->lock, flags);
			return -ENODEV;
		}
		if (virtqueue_is_broken(q->vq)) {
			spin_unlock_irqrestore(&q->lock, flags);
			return -EIO;
		}
		gen = q->space_gen;
		req->q = q;
		req->queued = true;
		ret = virtqueue_add_sgs(q->vq, sgs, nout, nin, req, GFP_ATOMIC);
		if (ret == 0) {
			list_add_tail(&req->node, &q->inflight);
			kick = virtqueue_kick_prepare(q->vq);
			spin_unlock_irqrestore(&q->lock, flags);
			if (kick)
				virtqueue_notify(q->vq);
			return 0;
		}
		req->queued = false;
		spin_unlock_irqrestore(&q->lock, flags);
		if (ret != -ENOSPC)
			return ret;
		atomic64_inc(&vg->st.ring_full_waits);
		/* ring full: wait for the device to return something, re-check every 100 ms */
		if (killable) {
			if (fatal_signal_pending(current))
				return -EINTR;
			wait_event_killable_timeout(q->space_wq,
						    READ_ONCE(q->space_gen) != gen, HZ / 10);
		} else {
			if (++tries > 100)	/* ~10 s */
				return -ETIMEDOUT;
			wait_event_timeout(q->space_wq, READ_ONCE(q->space_gen) != gen, HZ / 10);
		}
	}
}

/* Poll the used ring for up to poll_us, then the caller sleeps if still not done. */
static void vgpu_poll_wait(struct vgpu_vq *q, struct vgpu_req *req)
{
	ktime_t deadline = ktime_add_us(ktime_get(), min(poll_us, 10000u));
	unsigned long flags;
	LIST_HEAD(reaped);

	spin_lock_irqsave(&q->lock, flags);
	if (q->vg->dead) {
		spin_unlock_irqrestore(&q->lock, flags);
		return;
	}
	if (q->spinners++ == 0)
		virtqueue_disable_cb(q->vq);
	spin_unlock_irqrestore(&q->lock, flags);

	while (!completion_done(&req->done) && ktime_before(ktime_get(), deadline)) {
		spin_lock_irqsave(&q->lock, flags);
		vgpu_drain_locked(q, &reaped);
		spin_unlock_irqrestore(&q->lock, flags);
		vgpu_finish_reaped(q, &reaped, false);
		cpu_relax();
		cond_resched();
	}

	spin_lock_irqsave(&q->lock, flags);
	if (--q->spinners == 0 && !q->vg->dead) {
		while (!virtqueue_enable_cb(q->vq) && !virtqueue_is_broken(q->vq))
			vgpu_drain_locked(q, &reaped);
	}
	spin_unlock_irqrestore(&q->lock, flags);
	vgpu_finish_reaped(q, &reaped, false);
}

static long vgpu_submit(struct vgpu_file *vf, struct vgpu_submit __user *usub)
{
	struct vgpu_dev *vg = vf->vg;
	struct vgpu_vq *q = &vg->vqs[vf->q];
	struct scatterlist **sgs = NULL;
	struct vgpu_seg *segs = NULL;
	struct vgpu_submit s;
	struct vgpu_req *req;
	unsigned int nsegs, i, nout = 0, nin = 0, total_sg;
	u32 hdr_resp_cap, hdr_flags, resp_len;
	u64 out_written;
	bool nowait;
	long ret;

	if (copy_from_user(&s, usub, sizeof(s)))
		return -EFAULT;
	if (s.reserved[0] || s.reserved[1] || (s.flags & ~VGPU_SUBMIT_F_NOWAIT))
		return -EINVAL;
	if (s.req_len < VGPU_MSG_HDR_LEN)
		return -EINVAL;
	if (s.req_len > VGPU_MAX_REQ_LEN || s.n_data_in > VGPU_MAX_SEGS ||
	    s.n_data_out > VGPU_MAX_SEGS)
		return -E2BIG;
	nowait = s.flags & VGPU_SUBMIT_F_NOWAIT;
	nsegs = s.n_data_in + s.n_data_out;

	req = vgpu_req_alloc(nsegs);
	if (!req)
		return -ENOMEM;

	/* the message: copied once, validated, client overwritten */
	req->msg_len = s.req_len;
	req->msg = kvmalloc(s.req_len, GFP_KERNEL);
	if (!req->msg) {
		ret = -ENOMEM;
		goto out_put;
	}
	if (copy_from_user(req->msg, u64_to_user_ptr(s.req_ptr), s.req_len)) {
		ret = -EFAULT;
		goto out_put;
	}
	hdr_flags = get_unaligned_le16((u8 *)req->msg + 6);
	hdr_resp_cap = get_unaligned_le32((u8 *)req->msg + 20);
	if (get_unaligned_le32(req->msg) != VGPU_MSG_MAGIC ||
	    get_unaligned_le32((u8 *)req->msg + 16) != s.req_len ||
	    (hdr_flags & VGPU_MSG_F_CLIENT_CLOSE) ||
	    hdr_resp_cap > s.resp_cap ||
	    ((hdr_flags & VGPU_MSG_F_WANT_REPLY) && hdr_resp_cap < 4) ||
	    (hdr_resp_cap && !s.resp_ptr)) {
		ret = -EINVAL;
		goto out_put;
	}
	if (hdr_resp_cap > VGPU_MAX_RESP_LEN) {
		ret = -E2BIG;
		goto out_put;
	}
	if (nowait && (hdr_resp_cap || s.n_data_out || (hdr_flags & VGPU_MSG_F_WANT_REPLY))) {
		ret = -EINVAL;
		goto out_put;
	}
	put_unaligned_le32(vf->client, (u8 *)req->msg + 8);
	ret = vgpu_kbuf_sgt(req->msg, req->msg_len, &req->msg_sgt);
	if (ret)
		goto out_put;
	total_sg = req->msg_sgt.orig_nents;

	if (hdr_resp_cap) {
		req->resp_cap = hdr_resp_cap;
		req->resp = kvzalloc(hdr_resp_cap, GFP_KERNEL);
		if (!req->resp) {
			ret = -ENOMEM;
			goto out_put;
		}
		ret = vgpu_kbuf_sgt(req->resp, hdr_resp_cap, &req->resp_sgt);
		if (ret)
			goto out_put;
		total_sg += req->resp_sgt.orig_nents;
	}
	req->writable_total = hdr_resp_cap;

	/* data segments: pinned, not copied */
	if (nsegs) {
		segs = kvmalloc_array(nsegs, sizeof(*segs), GFP_KERNEL);
		if (!segs) {
			ret = -ENOMEM;
			goto out_put;
		}
		if ((s.n_data_in && copy_from_user(segs, u64_to_user_ptr(s.data_in_ptr),
						   s.n_data_in * sizeof(*segs))) ||
		    (s.n_data_out && copy_from_user(segs + s.n_data_in,
						    u64_to_user_ptr(s.data_out_ptr),
						    s.n_data_out * sizeof(*segs)))) {
			ret = -EFAULT;
			goto out_put;
		}
		u64 total = 0;

		for (i = 0; i < nsegs; i++) {
			total += min_t(u64, segs[i].len, VGPU_MAX_DATA + 1);
			if (total > VGPU_MAX_DATA) {
				ret = -E2BIG;
				goto out_put;
			}
		}
		for (i = 0; i < nsegs; i++) {
			bool w = i >= s.n_data_in;

			if (!segs[i].len)
				continue;
			ret = vgpu_pin_seg(&req->pins[i], segs[i].addr, segs[i].len, w);
			if (ret)
				goto out_put;
			total_sg += req->pins[i].sgt.orig_nents;
			if (w)
				req->writable_total += segs[i].len;
			if (total_sg > max_sg) {
				ret = -E2BIG;
				goto out_put;
			}
		}
	}
	if (total_sg > max_sg ||
	    (!vg->indirect && total_sg > vg->qsize)) {
		ret = -E2BIG;
		goto out_put;
	}

	/* scatter list array: readable (message, data-in), then writable (reply, data-out) */
	sgs = kmalloc_array(2 + nsegs, sizeof(*sgs), GFP_KERNEL);
	if (!sgs) {
		ret = -ENOMEM;
		goto out_put;
	}
	sgs[nout++] = req->msg_sgt.sgl;
	for (i = 0; i < s.n_data_in; i++)
		if (req->pins[i].has_sgt)
			sgs[nout++] = req->pins[i].sgt.sgl;
	if (hdr_resp_cap)
		sgs[nout + nin++] = req->resp_sgt.sgl;
	for (i = s.n_data_in; i < nsegs; i++)
		if (req->pins[i].has_sgt)
			sgs[nout + nin++] = req->pins[i].sgt.sgl;

	if (!nowait)
		kref_get(&req->ref);	/* the waiter's reference; the initial one is the ring's */
	ret = vgpu_queue(q, req, sgs, nout, nin, true);
	kfree(sgs);
	kvfree(segs);
	segs = NULL;
	if (ret) {
		if (!nowait)
			kref_put(&req->ref, vgpu_req_release_process);
		goto out_put;
	}
	atomic64_inc(&vg->st.submitted);
	if (nowait)
		atomic64_inc(&vg->st.nowait);
	if (debug)
		pr_info("%s: client %u q%u: req_len %u resp_cap %u sg %u nowait %d\n", vg->name,
			vf->client, q->idx, s.req_len, hdr_resp_cap, total_sg, nowait);
	if (nowait)
		return 0;	/* the ring's reference frees it when the device returns it */

	/* wait */
	if (poll_mode)
		vgpu_poll_wait(q, req);
	if (timeout_ms) {
		long t = wait_for_completion_killable_timeout(&req->done,
							      msecs_to_jiffies(timeout_ms));
		ret = t > 0 ? 0 : (t == 0 ? -ETIMEDOUT : t);
	} else {
		ret = wait_for_completion_killable(&req->done);
	}
	if (ret) {
		if (ret == -ERESTARTSYS)
			ret = -EINTR;
		goto out_put;		/* the ring keeps its reference */
	}
	if (req->status) {
		ret = req->status;
		goto out_put;
	}

	/* the completion: check what the device claims */
	if (req->used > req->writable_total) {
		pr_warn_ratelimited("%s: client %u: used length %u > writable %llu bytes\n",
				    vg->name, vf->client, req->used, req->writable_total);
		atomic64_inc(&vg->st.bad_used_len);
		ret = -EIO;
		goto out_put;
	}
	resp_len = min_t(u32, req->used, req->resp_cap);
	out_written = req->used > req->resp_cap ? req->used - req->resp_cap : 0;
	if ((hdr_flags & VGPU_MSG_F_WANT_REPLY) &&
	    (resp_len < 4 || get_unaligned_le32(req->resp) != VGPU_MSG_MAGIC)) {
		atomic64_inc(&vg->st.bad_reply);
		ret = -EBADMSG;
		goto out_put;
	}
	if (resp_len && copy_to_user(u64_to_user_ptr(s.resp_ptr), req->resp, resp_len)) {
		ret = -EFAULT;
		goto out_put;
	}
	if (put_user(resp_len, &usub->resp_len) ||
	    put_user(out_written, &usub->data_out_written)) {
		ret = -EFAULT;
		goto out_put;
	}
	ret = 0;
out_put:
	kvfree(segs);
	/* unused pins and a never-queued request are freed here; a queued one by the ring */
	kref_put(&req->ref, vgpu_req_release_process);
	return ret;
}

/* CLIENT_CLOSE: header only, no reply, fire-and-forget. */
static void vgpu_send_close(struct vgpu_file *vf)
{
	struct vgpu_dev *vg = vf->vg;
	struct scatterlist *sgs[1];
	struct vgpu_req *req;
	u8 *m;
	int ret;

	if (READ_ONCE(vg->dead))
		return;
	req = vgpu_req_alloc(0);
	if (!req)
		goto fail;
	req->msg = kzalloc(VGPU_MSG_HDR_LEN, GFP_KERNEL);
	if (!req->msg) {
		kfree(req);
		goto fail;
	}
	m = req->msg;
	req->msg_len = VGPU_MSG_HDR_LEN;
	put_unaligned_le32(VGPU_MSG_MAGIC, m);
	put_unaligned_le16(1, m + 4);
	put_unaligned_le16(VGPU_MSG_F_CLIENT_CLOSE, m + 6);
	put_unaligned_le32(vf->client, m + 8);
	put_unaligned_le32(0, m + 12);			/* ncalls */
	put_unaligned_le32(VGPU_MSG_HDR_LEN, m + 16);	/* req_len */
	put_unaligned_le32(0, m + 20);			/* resp_cap */
	put_unaligned_le64(0, m + 24);			/* seq */
	if (vgpu_kbuf_sgt(req->msg, req->msg_len, &req->msg_sgt)) {
		vgpu_req_free(req);
		goto fail;
	}
	sgs[0] = req->msg_sgt.sgl;
	ret = vgpu_queue(&vg->vqs[vf->q], req, sgs, 1, 0, false);
	if (ret) {
		vgpu_req_free(req);
		if (ret != -ENODEV)
			goto fail;
		return;
	}
	atomic64_inc(&vg->st.closes_sent);
	if (debug)
		pr_info("%s: client %u closed\n", vg->name, vf->client);
	return;
fail:
	atomic64_inc(&vg->st.closes_failed);
	pr_warn("%s: client %u: could not send CLIENT_CLOSE\n", vg->name, vf->client);
}

/* ---------------------------------------------------------------- file ops */

static void vgpu_dev_release(struct kref *ref)
{
	struct vgpu_dev *vg = container_of(ref, struct vgpu_dev, ref);

	ida_free(&vgpu_ida, vg->index);
	kfree(vg);
}

static int vgpu_open(struct inode *inode, struct file *file)
{
	/* misc_open() holds misc_mtx, so remove() cannot have freed vg yet */
	struct vgpu_dev *vg = container_of(file->private_data, struct vgpu_dev, misc);
	struct vgpu_file *vf;
	u32 id;

	if (READ_ONCE(vg->dead))
		return -ENODEV;
	vf = kzalloc(sizeof(*vf), GFP_KERNEL);
	if (!vf)
		return -ENOMEM;
	do {
		id = (u32)atomic_inc_return(&vgpu_next_client);
	} while (id == 0);
	vf->vg = vg;
	vf->client = id;
	vf->q = (id - 1) % vg->nvqs;
	kref_get(&vg->ref);
	file->private_data = vf;
	return nonseekable_open(inode, file);
}

static int vgpu_release(struct inode *inode, struct file *file)
{
	struct vgpu_file *vf = file->private_data;

	vgpu_send_close(vf);
	kref_put(&vf->vg->ref, vgpu_dev_release);
	kfree(vf);
	return 0;
}

static long vgpu_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct vgpu_file *vf = file->private_data;
	struct vgpu_dev *vg = vf->vg;

	if (READ_ONCE(vg->dead))
		return -ENODEV;
	switch (cmd) {
	case VGPU_IOC_SUBMIT:
		return vgpu_submit(vf, (struct vgpu_submit __user *)arg);
	case VGPU_IOC_INFO: {
		struct vgpu_info info = {
			.uapi_version = VGPU_UAPI_VERSION,
			.client_id = vf->client,
			.virtio_id = vg->virtio_id,
			.proto_major = vg->proto_major,
			.num_queues = vg->nvqs,
			.queue_size = vg->qsize,
			.queue = vf->q,
			.max_sg = max_sg,
			.max_segs = VGPU_MAX_SEGS,
			.max_req_len = VGPU_MAX_REQ_LEN,
			.max_resp_len = VGPU_MAX_RESP_LEN,
			.minor = vg->index,
		};

		if (vg->indirect)
			info.features |= VGPU_INFO_F_INDIRECT;
		if (vg->event_idx)
			info.features |= VGPU_INFO_F_EVENT_IDX;
		if (poll_mode)
			info.features |= VGPU_INFO_F_POLL;
		return copy_to_user((void __user *)arg, &info, sizeof(info)) ? -EFAULT : 0;
	}
	default:
		return -ENOTTY;
	}
}

static ssize_t stats_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct miscdevice *misc = dev_get_drvdata(dev);
	struct vgpu_dev *vg = container_of(misc, struct vgpu_dev, misc);
	unsigned int i, inflight = 0;
	struct vgpu_req *req;
	unsigned long flags;

	for (i = 0; i < vg->nvqs; i++) {
		spin_lock_irqsave(&vg->vqs[i].lock, flags);
		list_for_each_entry(req, &vg->vqs[i].inflight, node)
			inflight++;
		spin_unlock_irqrestore(&vg->vqs[i].lock, flags);
	}
	return sysfs_emit(buf,
		"submitted %lld\nnowait %lld\ncompleted %lld\ninflight %u\nring_full_waits %lld\n"
		"bad_used_len %lld\nbad_reply %lld\ncloses_sent %lld\ncloses_failed %lld\n",
		atomic64_read(&vg->st.submitted), atomic64_read(&vg->st.nowait),
		atomic64_read(&vg->st.completed), inflight,
		atomic64_read(&vg->st.ring_full_waits), atomic64_read(&vg->st.bad_used_len),
		atomic64_read(&vg->st.bad_reply), atomic64_read(&vg->st.closes_sent),
		atomic64_read(&vg->st.closes_failed));
}
static DEVICE_ATTR_RO(stats);
static struct attribute *vgpu_attrs[] = { &dev_attr_stats.attr, NULL };
ATTRIBUTE_GROUPS(vgpu);

static const struct file_operations vgpu_fops = {
	.owner = THIS_MODULE,
	.open = vgpu_open,
	.release = vgpu_release,
	.unlocked_ioctl = vgpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = no_llseek,
};

/* ---------------------------------------------------------------- virtio driver */

static int vgpu_probe(struct virtio_device *vdev)
{
	vq_callback_t *cbs[VGPU_MAX_QUEUES];
	struct virtqueue *vqs[VGPU_MAX_QUEUES];
	static const char * const names[VGPU_MAX_QUEUES] = {
		"vgpu0", "vgpu1", "vgpu2", "vgpu3", "vgpu4", "vgpu5", "vgpu6", "vgpu7",
		"vgpu8", "vgpu9", "vgpu10", "vgpu11", "vgpu12", "vgpu13", "vgpu14", "vgpu15" };
	struct vgpu_dev *vg;
	unsigned int want, i;
	u8 cfg[8];
	int ret;

	if (!vdev->config->get) {
		dev_info(&vdev->dev, "no config space: not a vGPU\n");
		return -ENODEV;
	}
	virtio_cread_bytes(vdev, 0, cfg, sizeof(cfg));
	if (memcmp(cfg, "VGPU", 4)) {
		dev_info(&vdev->dev, "virtio id %u without VGPU magic: not ours\n", vdev->id.device);
		return -ENODEV;
	}

	vg = kzalloc(sizeof(*vg), GFP_KERNEL);
	if (!vg)
		return -ENOMEM;
	kref_init(&vg->ref);
	vg->vdev = vdev;
	vg->virtio_id = vdev->id.device;
	vg->proto_major = get_unaligned_le16(cfg + 4);
	want = get_unaligned_le16(cfg + 6);
	want = clamp(want, 1u, min_t(unsigned int, max_queues ? max_queues : 1, VGPU_MAX_QUEUES));
	vg->index = ida_alloc(&vgpu_ida, GFP_KERNEL);
	if (vg->index < 0) {
		ret = vg->index;
		kfree(vg);
		return ret;
	}
	vdev->priv = vg;

	for (i = 0; i < VGPU_MAX_QUEUES; i++)
		cbs[i] = vgpu_vq_callback;
	/* the front-end may expose fewer queues than the daemon announces (gpio: 2) */
	for (;;) {
		vg->nvqs = want;
		ret = virtio_find_vqs(vdev, want, vqs, cbs, names, NULL);
		if (!ret || want == 1)
			break;
		want = want > 2 ? 2 : 1;
	}
	if (ret) {
		dev_err(&vdev->dev, "find_vqs failed: %d\n", ret);
		goto err_ida;
	}
	for (i = 0; i < vg->nvqs; i++) {
		struct vgpu_vq *q = &vg->vqs[i];

		q->vg = vg;
		q->vq = vqs[i];
		q->idx = i;
		spin_lock_init(&q->lock);
		init_waitqueue_head(&q->space_wq);
		INIT_LIST_HEAD(&q->inflight);
	}
	vg->qsize = virtqueue_get_vring_size(vg->vqs[0].vq);
	vg->indirect = virtio_has_feature(vdev, VIRTIO_RING_F_INDIRECT_DESC);
	vg->event_idx = virtio_has_feature(vdev, VIRTIO_RING_F_EVENT_IDX);
	virtio_device_ready(vdev);

	snprintf(vg->name, sizeof(vg->name), "vgpu%d", vg->index);
	vg->misc.minor = MISC_DYNAMIC_MINOR;
	vg->misc.name = vg->name;
	vg->misc.fops = &vgpu_fops;
	vg->misc.mode = 0666;
	vg->misc.groups = vgpu_groups;
	ret = misc_register(&vg->misc);
	if (ret)
		goto err_vqs;

	dev_info(&vdev->dev,
		 "/dev/%s: virtio id %u, protocol %u, %u queue(s) x %u, indirect %d, event_idx %d, poll %d\n",
		 vg->name, vg->virtio_id, vg->proto_major, vg->nvqs, vg->qsize,
		 virtio_has_feature(vdev, VIRTIO_RING_F_INDIRECT_DESC),
		 virtio_has_feature(vdev, VIRTIO_RING_F_EVENT_IDX), poll_mode);
	return 0;

err_vqs:
	virtio_reset_device(vdev);
	vdev->config->del_vqs(vdev);
err_ida:
	vdev->priv = NULL;
	ida_free(&vgpu_ida, vg->index);
	kfree(vg);
	return ret;
}

static void vgpu_remove(struct virtio_device *vdev)
{
	struct vgpu_dev *vg = vdev->priv;
	struct vgpu_req *req;
	unsigned long flags;
	unsigned int i;
	LIST_HEAD(dropped);

	misc_deregister(&vg->misc);
	for (i = 0; i < vg->nvqs; i++) {
		spin_lock_irqsave(&vg->vqs[i].lock, flags);
		WRITE_ONCE(vg->dead, true);
		spin_unlock_irqrestore(&vg->vqs[i].lock, flags);
	}
	virtio_reset_device(vdev);
	for (i = 0; i < vg->nvqs; i++) {
		struct vgpu_vq *q = &vg->vqs[i];

		spin_lock_irqsave(&q->lock, flags);
		while ((req = virtqueue_detach_unused_buf(q->vq)) != NULL) {
			req->queued = false;
			req->status = -ENODEV;
			list_move_tail(&req->node, &dropped);
		}
		spin_unlock_irqrestore(&q->lock, flags);
		vgpu_finish_reaped(q, &dropped, false);
		WRITE_ONCE(q->space_gen, READ_ONCE(q->space_gen) + 1);
		wake_up_all(&q->space_wq);
	}
	vdev->config->del_vqs(vdev);
	vdev->priv = NULL;
	dev_info(&vdev->dev, "/dev/%s removed\n", vg->name);
	kref_put(&vg->ref, vgpu_dev_release);
}

static const struct virtio_device_id vgpu_id_table[] = {
	{ VGPU_VIRTIO_ID_GPIO, VIRTIO_DEV_ANY_ID },
	{ VGPU_VIRTIO_ID_GEN_A, VIRTIO_DEV_ANY_ID },
	{ VGPU_VIRTIO_ID_GEN_B, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vgpu_id_table);

static struct virtio_driver vgpu_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	.id_table = vgpu_id_table,
	.probe = vgpu_probe,
	.remove = vgpu_remove,
};

static int __init vgpu_init(void)
{
	int ret;

	atomic_set(&vgpu_next_client, (int)(get_random_u32() & 0x7fffffff));
	vgpu_wq = alloc_workqueue("vgpu", WQ_UNBOUND, 0);
	if (!vgpu_wq)
		return -ENOMEM;
	ret = register_virtio_driver(&vgpu_driver);
	if (ret)
		destroy_workqueue(vgpu_wq);
	return ret;
}

static void __exit vgpu_exit(void)
{
	unregister_virtio_driver(&vgpu_driver);
	destroy_workqueue(vgpu_wq);	/* flushes deferred request frees */
}

module_init(vgpu_init);
module_exit(vgpu_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vGPU paravirtual device driver (vhost-gpu)");
MODULE_AUTHOR("vgpu-pool");

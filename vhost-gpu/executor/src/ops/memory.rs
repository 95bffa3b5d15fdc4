//! The memory operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `MemAlloc`.
pub(super) fn alloc(ex: &mut Executor, r: &mut Req, a: &calls::MemAlloc) -> CallResult {
    let size = a.size.get();
    ex.make_current(r.client, a.ctx.get())?;
    if size == 0 {
        return Err(CuResult::INVALID_VALUE);
    }
    ex.charge(r.client, size)?;
    let dptr = ex
        .gpu
        .mem_alloc(size)
        .inspect_err(|_| ex.uncharge(r.client, size))?;
    let c = ex.client(r.client)?;
    c.allocations.insert(
        dptr,
        Allocation {
            size,
            ctx: a.ctx.get(),
        },
    );
    r.handle(dptr)
}

/// `MemFree`.
pub(super) fn free(ex: &mut Executor, r: &mut Req, a: &calls::MemFree) -> CallResult {
    ex.make_current(r.client, a.ctx.get())?;
    let dptr = a.dptr.get();
    if !ex.client(r.client)?.allocations.contains_key(&dptr) {
        return Err(CuResult::INVALID_VALUE);
    }
    ex.gpu.mem_free(dptr)?;
    let c = ex.client(r.client)?;
    let size = c.allocations.remove(&dptr).map_or(0, |a| a.size);
    c.mem_used -= size;
    ex.mem_used -= size;
    r.ok()
}

/// `MemGetInfo`.
pub(super) fn info(ex: &mut Executor, r: &mut Req, a: &calls::CtxArg) -> CallResult {
    ex.make_current(r.client, a.ctx.get())?;
    let (free, total) = ex.gpu.mem_info()?;
    let used = match ex.shared_ledger.as_mut() {
        Some(ledger) => ledger.slice_used(),
        None => ex.mem_used,
    };
    let (free, total) = match ex.limits.mem_limit {
        Some(limit) => {
            let total = limit.min(total);
            (total.saturating_sub(used).min(free), total)
        }
        None => (free, total),
    };
    r.reply(&calls::MemInfoReply {
        free: free.into(),
        total: total.into(),
    })
}

/// `MemGetAddressRange`.
pub(super) fn address_range(ex: &mut Executor, r: &mut Req, a: &calls::MemFree) -> CallResult {
    let c = ex.client(r.client)?;
    let dptr = a.dptr.get();
    let (base, size) = c
        .allocations
        .range(..=dptr)
        .next_back()
        .filter(|(b, al)| dptr < *b + al.size)
        .map(|(b, al)| (*b, al.size))
        .ok_or(CuResult::NOT_FOUND)?;
    r.reply(&calls::AddressRangeReply {
        base: base.into(),
        size: size.into(),
    })
}

/// `Memset`.
pub(super) fn memset(ex: &mut Executor, r: &mut Req, a: &calls::Memset) -> CallResult {
    let s = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    let len = a
        .count
        .get()
        .checked_mul(u64::from(a.elem_size.get()))
        .ok_or(CuResult::INVALID_VALUE)?;
    ex.check_range(r.client, a.dptr.get(), len)?;
    ex.gpu.memset(
        a.dptr.get(),
        a.value.get(),
        a.elem_size.get(),
        a.count.get(),
        s,
        r.is_async(),
    )?;
    ex.finish_copy(r.client, r.flags, s)?;
    r.ok()
}

/// `MemcpyHtoD`.
pub(super) fn copy_htod(ex: &mut Executor, r: &mut Req, a: &calls::MemcpyHtoD) -> CallResult {
    copy_with_host(ex, r, [a.stream, a.ctx, a.dst], a.data, true)
}

/// `MemcpyDtoH`.
pub(super) fn copy_dtoh(ex: &mut Executor, r: &mut Req, a: &calls::MemcpyDtoH) -> CallResult {
    copy_with_host(ex, r, [a.stream, a.ctx, a.src], a.data, false)
}

/// Copies between the device range at `dptr` (`ids` is stream, context, `dptr`) and `data` of the data-in stream (to the
/// device) or the data-out stream (to the host), piece by piece as the guest's memory lies.
fn copy_with_host(
    ex: &mut Executor,
    r: &mut Req,
    ids: [zerocopy::little_endian::U64; 3],
    data: vgpu_protocol::DataRef,
    to_device: bool,
) -> CallResult {
    let [stream, ctx, dptr] = ids.map(|v| v.get());
    let s = ex.stream(r.client, stream, ctx)?;
    let (off, len) = (data.offset.get(), data.len.get());
    ex.check_range(r.client, dptr, len)?;
    let (gpu, is_async) = (&mut ex.gpu, r.is_async());
    if to_device {
        r.data_in.walk(off, len, |seg, rel| {
            // SAFETY: `seg` lies inside the request's data-in segments, which stay mapped
            // until the client is torn down (streams are synchronised first).
            unsafe { gpu.memcpy_htod(dptr + rel, seg, s, is_async) }
        })?;
    } else {
        r.data_out.walk(off, len, |seg, rel| {
            // SAFETY: as above; the data-out segments are guest-writable memory.
            unsafe { gpu.memcpy_dtoh(seg, dptr + rel, s, is_async) }
        })?;
        *r.data_out_len = (*r.data_out_len).max(off + len);
    }
    ex.finish_copy(r.client, r.flags, s)?;
    r.ok()
}

/// `MemcpyDtoD`.
pub(super) fn copy_dtod(ex: &mut Executor, r: &mut Req, a: &calls::MemcpyDtoD) -> CallResult {
    let s = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    ex.check_range(r.client, a.src.get(), a.len.get())?;
    ex.check_range(r.client, a.dst.get(), a.len.get())?;
    ex.gpu
        .memcpy_dtod(a.dst.get(), a.src.get(), a.len.get(), s, r.is_async())?;
    ex.finish_copy(r.client, r.flags, s)?;
    r.ok()
}

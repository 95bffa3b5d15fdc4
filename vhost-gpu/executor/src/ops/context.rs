//! The context operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `CtxCreate`.
pub(super) fn create(ex: &mut Executor, r: &mut Req, a: &calls::CtxCreate) -> CallResult {
    ex.client(r.client)?;
    ex.charge(r.client, ex.limits.ctx_overhead)?;
    let raw = ex
        .gpu
        .ctx_create(a.device.get(), a.flags.get())
        .inspect_err(|_| ex.uncharge(r.client, ex.limits.ctx_overhead))?;
    ex.current_ctx = raw;
    let h = ex.client(r.client)?.objects.insert(Object::Ctx { raw });
    r.handle(h)
}

/// `CtxDestroy`.
pub(super) fn destroy(ex: &mut Executor, r: &mut Req, a: &calls::CtxArg) -> CallResult {
    let ctx = a.ctx.get();
    if ex.client(r.client)?.primary == Some(ctx) {
        return Err(CuResult::INVALID_CONTEXT);
    }
    ex.destroy_ctx(r.client, ctx)?;
    r.ok()
}

/// `PrimaryCtxRetain`.
pub(super) fn primary_retain(ex: &mut Executor, r: &mut Req, a: &calls::DeviceArg) -> CallResult {
    if a.device.get() != 0 {
        return Err(CuResult::INVALID_DEVICE);
    }
    let c = ex.client(r.client)?;
    let h = match c.primary {
        Some(h) => h,
        None => {
            let flags = c.primary_flags;
            ex.charge(r.client, ex.limits.ctx_overhead)?;
            let raw = ex
                .gpu
                .ctx_create(0, flags)
                .inspect_err(|_| ex.uncharge(r.client, ex.limits.ctx_overhead))?;
            ex.current_ctx = raw;
            let c = ex.client(r.client)?;
            let h = c.objects.insert(Object::Ctx { raw });
            c.primary = Some(h);
            h
        }
    };
    ex.client(r.client)?.primary_refs += 1;
    r.handle(h)
}

/// `PrimaryCtxRelease`, `PrimaryCtxReset`.
pub(super) fn primary_release(ex: &mut Executor, r: &mut Req, a: &calls::DeviceArg) -> CallResult {
    if a.device.get() != 0 {
        return Err(CuResult::INVALID_DEVICE);
    }
    let c = ex.client(r.client)?;
    let Some(h) = c.primary else {
        return if r.op == Opcode::PrimaryCtxReset {
            r.ok()?;
            Ok(())
        } else {
            Err(CuResult::INVALID_CONTEXT)
        };
    };
    c.primary_refs = c.primary_refs.saturating_sub(1);
    if r.op == Opcode::PrimaryCtxReset || c.primary_refs == 0 {
        c.primary = None;
        c.primary_refs = 0;
        ex.destroy_ctx(r.client, h)?;
    }
    r.ok()
}

/// `PrimaryCtxSetFlags`.
pub(super) fn primary_set_flags(
    ex: &mut Executor,
    r: &mut Req,
    a: &calls::PrimaryCtxSetFlags,
) -> CallResult {
    ex.client(r.client)?.primary_flags = a.flags.get();
    r.ok()
}

/// `CtxSynchronize`.
pub(super) fn synchronize(ex: &mut Executor, r: &mut Req, a: &calls::CtxArg) -> CallResult {
    ex.make_current(r.client, a.ctx.get())?;
    ex.gpu.ctx_synchronize()?;
    r.synchronized(ex)
}

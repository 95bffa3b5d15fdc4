//! Contexts: primary (shared per process, reference counted) and created ones, with a
//! per-thread stack of current contexts as the driver keeps it.

use std::{
    ffi::{c_int, c_uint, c_void},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use vgpu_protocol::{CuResult, Opcode, calls};

use super::{put, ret};
use crate::{
    CUcontext, CUdevice, CUresult,
    driver::{self, CTX_STACK, Ctx, Driver},
};

fn as_ctx(c: CUcontext) -> Option<&'static Ctx> {
    // SAFETY: every CUcontext we hand out points at a leaked `Ctx`; NULL maps to None.
    (!c.is_null()).then(|| unsafe { &*(c as *const Ctx) })
}

fn as_handle(c: &'static Ctx) -> CUcontext {
    c as *const Ctx as CUcontext
}

fn set_current(c: Option<&'static Ctx>) {
    CTX_STACK.with(|s| {
        let mut s = s.borrow_mut();
        s.pop();
        if let Some(c) = c {
            // Cannot fail: one entry was just popped, or the stack was empty.
            let _ = s.push(c);
        }
    });
}

/// Retains the primary context on the host if this is the first reference.
pub(crate) fn primary_retain(d: &'static Driver) -> Result<&'static Ctx, CuResult> {
    let mut refs = d
        .primary_refs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *refs == 0 {
        let r = d.conn.call(
            Opcode::PrimaryCtxRetain,
            &calls::DeviceArg::default(),
            &[],
            None,
            None,
        )?;
        let h: calls::HandleReply = r.parse()?;
        d.primary.handle.store(h.handle.get(), Ordering::Release);
    }
    *refs += 1;
    Ok(d.primary)
}

fn primary_release(d: &'static Driver, reset: bool) -> Result<(), CuResult> {
    let mut refs = d
        .primary_refs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *refs == 0 && !reset {
        return Err(CuResult::INVALID_CONTEXT);
    }
    d.conn.flush()?;
    let op = if reset {
        Opcode::PrimaryCtxReset
    } else {
        Opcode::PrimaryCtxRelease
    };
    d.conn
        .call(op, &calls::DeviceArg::default(), &[], None, None)?
        .ok()?;
    *refs = if reset { 0 } else { *refs - 1 };
    let gone = *refs == 0;
    if gone {
        d.primary.handle.store(0, Ordering::Release);
        d.allocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
    drop(refs);
    if gone {
        // Context-local storage destructors run outside the lock (they may call us).
        super::cls::context_gone(std::ptr::from_ref(d.primary) as usize);
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    ret(driver::driver().and_then(|d| {
        if dev != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
        let c = primary_retain(d)?;
        // SAFETY: out-pointer from the caller.
        unsafe { put(pctx, as_handle(c)) }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    ret(driver::driver().and_then(|d| {
        if dev != 0 {
            Err(CuResult::INVALID_DEVICE)
        } else {
            primary_release(d, false)
        }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    ret(driver::driver().and_then(|d| {
        if dev != 0 {
            Err(CuResult::INVALID_DEVICE)
        } else {
            primary_release(d, true)
        }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) -> CUresult {
    ret(driver::driver().and_then(|d| {
        if dev != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
        d.primary.flags.store(flags, Ordering::Release);
        let body = calls::PrimaryCtxSetFlags {
            device: 0.into(),
            flags: flags.into(),
        };
        d.conn
            .call(Opcode::PrimaryCtxSetFlags, &body, &[], None, None)?
            .ok()
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    ret(driver::driver().and_then(|d| {
        if dev != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
        let refs = *d
            .primary_refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: out-pointers from the caller.
        unsafe {
            put(flags, d.primary.flags.load(Ordering::Acquire))?;
            put(active, c_int::from(refs > 0))
        }
    }))
}

/// Records of destroyed contexts, reused by the next `cuCtxCreate` (as the real driver reuses
/// the memory of a destroyed context), so creating and destroying contexts for ever stays
/// flat. A record is never freed: a stale `CUcontext` stays safe to pass.
static DESTROYED: std::sync::Mutex<Vec<&'static Ctx>> = std::sync::Mutex::new(Vec::new());

fn ctx_create(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> Result<(), CuResult> {
    let d = driver::driver()?;
    if dev != 0 {
        return Err(CuResult::INVALID_DEVICE);
    }
    if pctx.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    let body = calls::CtxCreate {
        device: 0.into(),
        flags: flags.into(),
    };
    let h: calls::HandleReply = d
        .conn
        .call(Opcode::CtxCreate, &body, &[], None, None)?
        .parse()?;
    let reused = DESTROYED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop();
    let ctx: &'static Ctx = match reused {
        Some(c) => {
            c.flags.store(flags, Ordering::Relaxed);
            c.handle.store(h.handle.get(), Ordering::Release);
            c
        }
        None => Box::leak(Box::new(Ctx {
            handle: AtomicU64::new(h.handle.get()),
            flags: AtomicU32::new(flags),
            primary: false,
        })),
    };
    // A new context is pushed onto the calling thread's stack.
    CTX_STACK.with(|s| s.borrow_mut().push(ctx))?;
    // SAFETY: checked non-NULL above.
    unsafe { put(pctx, as_handle(ctx)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(
    pctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ret(ctx_create(pctx, flags, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate(
    pctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ret(ctx_create(pctx, flags, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    pctx: *mut CUcontext,
    _params: *mut c_void,
    _n: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ret(ctx_create(pctx, flags, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut CUcontext,
    _params: *mut c_void,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ret(ctx_create(pctx, flags, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    ret(driver::driver().and_then(|d| {
        let c = as_ctx(ctx).ok_or(CuResult::INVALID_VALUE)?;
        if c.primary {
            return Err(CuResult::INVALID_CONTEXT);
        }
        d.conn.flush()?;
        d.conn
            .call(
                Opcode::CtxDestroy,
                &calls::CtxArg {
                    ctx: c.handle().into(),
                },
                &[],
                None,
                None,
            )?
            .ok()?;
        let was_live = c.handle.swap(0, Ordering::AcqRel) != 0;
        super::cls::context_gone(std::ptr::from_ref(c) as usize);
        // Drop it from this thread's stack; other threads' stacks keep a dead context, as
        // with the real driver, and their calls fail with INVALID_CONTEXT (until the record
        // is reused, as the real driver's memory would be).
        CTX_STACK.with(|s| s.borrow_mut().remove(c));
        if was_live {
            DESTROYED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(c);
        }
        Ok(())
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    ret(driver::driver().map(|_| set_current(as_ctx(ctx))))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult {
    ret(driver::driver().and_then(|_| {
        let c = driver::current().map_or(std::ptr::null_mut(), as_handle);
        // SAFETY: out-pointer from the caller.
        unsafe { put(pctx, c) }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult {
    ret(driver::driver().and_then(|_| {
        let c = as_ctx(ctx).ok_or(CuResult::INVALID_VALUE)?;
        CTX_STACK.with(|s| s.borrow_mut().push(c))
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) -> CUresult {
    ret(driver::driver().and_then(|_| {
        let c = CTX_STACK
            .with(|s| s.borrow_mut().pop())
            .ok_or(CuResult::INVALID_CONTEXT)?;
        if !pctx.is_null() {
            // SAFETY: non-NULL out-pointer from the caller.
            unsafe { put(pctx, as_handle(c))? };
        }
        Ok(())
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(driver::current_handle().and_then(|_| unsafe { put(dev, 0) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice_v2(dev: *mut CUdevice, ctx: CUcontext) -> CUresult {
    ret(driver::driver().and_then(|_| {
        if !ctx.is_null() || driver::current().is_some() {
            // SAFETY: out-pointer from the caller.
            unsafe { put(dev, 0) }
        } else {
            Err(CuResult::INVALID_CONTEXT)
        }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    ret(driver::current_handle().and_then(|ctx| {
        let d = driver::driver()?;
        d.conn
            .call(
                Opcode::CtxSynchronize,
                &calls::CtxArg { ctx: ctx.into() },
                &[],
                None,
                None,
            )?
            .ok()
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize_v2(_ctx: CUcontext) -> CUresult {
    // SAFETY: no pointer arguments are used.
    unsafe { cuCtxSynchronize() }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetApiVersion(_ctx: CUcontext, version: *mut c_uint) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(driver::driver().and_then(|_| unsafe { put(version, 13000) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetFlags(flags: *mut c_uint) -> CUresult {
    let c = driver::current().ok_or(CuResult::INVALID_CONTEXT);
    // SAFETY: out-pointer from the caller.
    ret(c.and_then(|c| unsafe { put(flags, c.flags.load(Ordering::Acquire)) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetFlags(flags: c_uint) -> CUresult {
    ret(driver::current()
        .ok_or(CuResult::INVALID_CONTEXT)
        .map(|c| c.flags.store(flags, Ordering::Release)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetId(ctx: CUcontext, id: *mut u64) -> CUresult {
    let c = as_ctx(ctx)
        .or_else(driver::current)
        .ok_or(CuResult::INVALID_CONTEXT);
    // SAFETY: out-pointer from the caller.
    ret(c.and_then(|c| unsafe { put(id, c.handle()) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CUresult {
    ret(driver::driver().and_then(|_| {
        // The H200's range, as its driver reports it.
        if !least.is_null() {
            // SAFETY: non-NULL out-pointer.
            unsafe { put(least, super::stream::PRIORITY_LEAST)? };
        }
        if !greatest.is_null() {
            // SAFETY: non-NULL out-pointer.
            unsafe { put(greatest, super::stream::PRIORITY_GREATEST)? };
        }
        Ok(())
    }))
}

/// Limits we report; setting them is accepted and remembered per process.
static LIMITS: std::sync::Mutex<[usize; 8]> =
    std::sync::Mutex::new([1024, 1 << 20, 8 << 20, 2, 2048, 0, 0, 0]);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetLimit(value: *mut usize, limit: c_int) -> CUresult {
    ret(driver::driver().and_then(|_| {
        let l = LIMITS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let v = usize::try_from(limit)
            .ok()
            .and_then(|i| l.get(i).copied())
            .ok_or(CuResult::INVALID_VALUE)?;
        // SAFETY: out-pointer from the caller.
        unsafe { put(value, v) }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetLimit(limit: c_int, value: usize) -> CUresult {
    ret(driver::driver().and_then(|_| {
        let mut l = LIMITS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = usize::try_from(limit)
            .ok()
            .and_then(|i| l.get_mut(i))
            .ok_or(CuResult::INVALID_VALUE)?;
        *slot = value;
        Ok(())
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCacheConfig(config: *mut c_int) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(driver::driver().and_then(|_| unsafe { put(config, 0) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCacheConfig(_config: c_int) -> CUresult {
    ret(driver::driver().map(|_| ()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetSharedMemConfig(config: *mut c_int) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(driver::driver().and_then(|_| unsafe { put(config, 0) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetSharedMemConfig(_config: c_int) -> CUresult {
    ret(driver::driver().map(|_| ()))
}

//! Device memory, pinned host memory and copies.
//!
//! Copies from or to memory allocated through `cuMemAllocHost`/`cuMemHostAlloc` travel as
//! descriptors pointing at that memory: the host DMAs straight from (to) it. Where the bytes
//! travel from is the connection's choice (`conn/copy.rs`), not this module's.

use std::ffi::{c_uint, c_void};

use vgpu_protocol::{CuResult, Opcode, call_flags, calls};

use super::{handle_of, put, ret};
use crate::{
    CUdeviceptr, CUresult,
    driver::{self, Driver},
};

fn ctx() -> Result<(&'static Driver, u64), CuResult> {
    let ctx = driver::current_handle()?;
    Ok((driver::driver()?, ctx))
}

fn lock_allocs(d: &Driver) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, u64>> {
    d.allocations
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn mem_alloc(dptr: *mut CUdeviceptr, size: usize) -> Result<(), CuResult> {
    let (d, ctx) = ctx()?;
    if dptr.is_null() || size == 0 {
        return Err(CuResult::INVALID_VALUE);
    }
    let body = calls::MemAlloc {
        ctx: ctx.into(),
        size: (size as u64).into(),
    };
    let h: calls::HandleReply = d
        .conn
        .call(Opcode::MemAlloc, &body, &[], None, None)?
        .parse()?;
    lock_allocs(d).insert(h.handle.get(), size as u64);
    // SAFETY: checked non-NULL.
    unsafe { put(dptr, h.handle.get()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    ret(mem_alloc(dptr, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc(dptr: *mut CUdeviceptr, size: c_uint) -> CUresult {
    ret(mem_alloc(dptr, size as usize))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    ret((|| {
        if !matches!(elem, 4 | 8 | 16) || pitch.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let p = width.next_multiple_of(512);
        mem_alloc(dptr, p.checked_mul(height).ok_or(CuResult::INVALID_VALUE)?)?;
        // SAFETY: checked non-NULL.
        unsafe { put(pitch, p) }
    })())
}

fn mem_free(dptr: CUdeviceptr) -> Result<(), CuResult> {
    let (d, ctx) = ctx()?;
    if dptr == 0 {
        return Ok(());
    }
    let body = calls::MemFree {
        ctx: ctx.into(),
        dptr: dptr.into(),
    };
    d.conn.call(Opcode::MemFree, &body, &[], None, None)?.ok()?;
    lock_allocs(d).remove(&dptr);
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    ret(mem_free(dptr))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree(dptr: u32) -> CUresult {
    ret(mem_free(u64::from(dptr)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    ret((|| {
        let (d, ctx) = ctx()?;
        let r: calls::MemInfoReply = d
            .conn
            .call(
                Opcode::MemGetInfo,
                &calls::CtxArg { ctx: ctx.into() },
                &[],
                None,
                None,
            )?
            .parse()?;
        // SAFETY: out-pointers from the caller.
        unsafe {
            put(free, r.free.get() as usize)?;
            put(total, r.total.get() as usize)
        }
    })())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetAddressRange_v2(
    base: *mut CUdeviceptr,
    size: *mut usize,
    dptr: CUdeviceptr,
) -> CUresult {
    ret((|| {
        let (d, ctx) = ctx()?;
        let body = calls::MemFree {
            ctx: ctx.into(),
            dptr: dptr.into(),
        };
        let r: calls::AddressRangeReply = d
            .conn
            .call(Opcode::MemGetAddressRange, &body, &[], None, None)?
            .parse()?;
        if !base.is_null() {
            // SAFETY: non-NULL out-pointer.
            unsafe { put(base, r.base.get())? };
        }
        if !size.is_null() {
            // SAFETY: non-NULL out-pointer.
            unsafe { put(size, r.size.get() as usize)? };
        }
        Ok(())
    })())
}

// ---- pinned host memory ----

fn host_alloc(pp: *mut *mut c_void, size: usize) -> Result<(), CuResult> {
    let d = driver::driver()?;
    if pp.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    let buf = d.conn.alloc_shared(size.max(1))?;
    d.pinned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(buf.hva as usize, buf);
    // SAFETY: checked non-NULL.
    unsafe { put(pp, buf.hva.cast()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, size: usize) -> CUresult {
    ret(host_alloc(pp, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost(pp: *mut *mut c_void, size: c_uint) -> CUresult {
    ret(host_alloc(pp, size as usize))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    size: usize,
    _flags: c_uint,
) -> CUresult {
    ret(host_alloc(pp, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    ret(driver::driver().and_then(|d| {
        let buf = d
            .pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(p as usize));
        let buf = buf.ok_or(CuResult::INVALID_VALUE)?;
        // Copies still queued may read it: let them finish first.
        d.conn.flush()?;
        d.conn.free_shared(buf);
        Ok(())
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostGetFlags(flags: *mut c_uint, p: *mut c_void) -> CUresult {
    ret(driver::driver().and_then(|d| {
        let known = d
            .pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&(p as usize));
        if !known {
            return Err(CuResult::INVALID_VALUE);
        }
        // SAFETY: out-pointer from the caller.
        unsafe { put(flags, 0) }
    }))
}

/// Registering ordinary memory is accepted, but a process outside a VM cannot share it with
/// the device, so copies from it are staged (correct, not zero-copy).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostRegister_v2(
    p: *mut c_void,
    size: usize,
    _flags: c_uint,
) -> CUresult {
    ret(driver::driver().and_then(|_| {
        if p.is_null() || size == 0 {
            Err(CuResult::INVALID_VALUE)
        } else {
            Ok(())
        }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostUnregister(p: *mut c_void) -> CUresult {
    ret(driver::driver().and_then(|_| {
        if p.is_null() {
            Err(CuResult::INVALID_VALUE)
        } else {
            Ok(())
        }
    }))
}

// ---- copies ----

/// Copies `n` bytes from host memory to the device. `src` must be readable for `n` bytes
/// (the caller's contract with the application).
fn htod(dst: CUdeviceptr, src: *const u8, n: usize, stream: Option<u64>) -> Result<(), CuResult> {
    let (d, ctx) = ctx()?;
    if n == 0 {
        return Ok(());
    }
    if src.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    // SAFETY: `src` is readable for `n` bytes, as the driver API requires of its callers.
    unsafe { d.conn.copy_htod(ctx, dst, src, n, stream) }
}

fn dtoh(dst: *mut u8, src: CUdeviceptr, n: usize, stream: Option<u64>) -> Result<(), CuResult> {
    let r = dtoh_copy(dst, src, n, stream);
    // A deliberately broken build (`--features corrupt-copy-for-test`), so the GPU suite can
    // be shown failing: every synchronous device-to-host copy of 1 MiB or more comes back
    // with its middle byte flipped.
    #[cfg(feature = "corrupt-copy-for-test")]
    if r.is_ok() && stream.is_none() && n >= 1 << 20 {
        // SAFETY: `dst` is writable for `n` bytes (the copy just wrote them).
        unsafe { *dst.add(n / 2) ^= 0x01 };
    }
    r
}

fn dtoh_copy(
    dst: *mut u8,
    src: CUdeviceptr,
    n: usize,
    stream: Option<u64>,
) -> Result<(), CuResult> {
    let (d, ctx) = ctx()?;
    if n == 0 {
        return Ok(());
    }
    if dst.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    // SAFETY: `dst` is writable for `n` bytes, as the driver API requires of its callers.
    unsafe { d.conn.copy_dtoh(ctx, dst, src, n, stream) }
}

fn dtod(dst: CUdeviceptr, src: CUdeviceptr, n: usize, stream: Option<u64>) -> Result<(), CuResult> {
    let (d, ctx) = ctx()?;
    if n == 0 {
        return Ok(());
    }
    let body = calls::MemcpyDtoD {
        ctx: ctx.into(),
        stream: stream.unwrap_or(0).into(),
        dst: dst.into(),
        src: src.into(),
        len: (n as u64).into(),
    };
    match stream {
        Some(_) => d.conn.call_async(
            Opcode::MemcpyDtoD,
            call_flags::ASYNC,
            &body,
            0,
            |_| {},
            None,
            None,
        ),
        None => d
            .conn
            .call(Opcode::MemcpyDtoD, &body, &[], None, None)?
            .ok(),
    }
}

fn memset(
    dptr: CUdeviceptr,
    value: u32,
    elem: u32,
    count: usize,
    stream: Option<u64>,
) -> Result<(), CuResult> {
    let (d, ctx) = ctx()?;
    if count == 0 {
        return Ok(());
    }
    let body = calls::Memset {
        ctx: ctx.into(),
        stream: stream.unwrap_or(0).into(),
        dptr: dptr.into(),
        count: (count as u64).into(),
        value: value.into(),
        elem_size: elem.into(),
    };
    match stream {
        Some(_) => d.conn.call_async(
            Opcode::Memset,
            call_flags::ASYNC,
            &body,
            0,
            |_| {},
            None,
            None,
        ),
        None => d.conn.call(Opcode::Memset, &body, &[], None, None)?.ok(),
    }
}

/// Whether `p` is device memory of this process (for the unified `cuMemcpy`).
fn is_device(d: &Driver, p: u64) -> bool {
    lock_allocs(d)
        .range(..=p)
        .next_back()
        .is_some_and(|(b, s)| p < b + s)
}

fn memcpy_any(dst: u64, src: u64, n: usize, stream: Option<u64>) -> Result<(), CuResult> {
    let d = driver::driver()?;
    if crate::tracing() {
        crate::log_error(&format!(
            "trace: cuMemcpy{} dst={dst:#x} (device: {}) src={src:#x} (device: {}) n={n}",
            if stream.is_some() { "Async" } else { "" },
            is_device(d, dst),
            is_device(d, src)
        ));
    }
    match (is_device(d, dst), is_device(d, src)) {
        (true, true) => dtod(dst, src, n, stream),
        (true, false) => htod(dst, src as *const u8, n, stream),
        (false, true) => dtoh(dst as *mut u8, src, n, stream),
        (false, false) => {
            // SAFETY: both are host pointers valid for `n` bytes (caller's contract).
            unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
            Ok(())
        }
    }
}

macro_rules! copy_fns {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) => $body:expr; )*) => {
        $(
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> CUresult {
                ret($body)
            }
        )*
    };
}

pub type CUstream = *mut c_void;

copy_fns! {
    cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) => htod(dst, src.cast(), n, None);
    cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, n: usize, s: CUstream) => htod(dst, src.cast(), n, Some(handle_of(s)));
    cuMemcpyHtoDAsync_v2_ptsz(dst: CUdeviceptr, src: *const c_void, n: usize, s: CUstream) => htod(dst, src.cast(), n, Some(handle_of(s)));
    cuMemcpyHtoD_v2_ptds(dst: CUdeviceptr, src: *const c_void, n: usize) => htod(dst, src.cast(), n, None);
    cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) => dtoh(dst.cast(), src, n, None);
    cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, n: usize, s: CUstream) => dtoh(dst.cast(), src, n, Some(handle_of(s)));
    cuMemcpyDtoHAsync_v2_ptsz(dst: *mut c_void, src: CUdeviceptr, n: usize, s: CUstream) => dtoh(dst.cast(), src, n, Some(handle_of(s)));
    cuMemcpyDtoH_v2_ptds(dst: *mut c_void, src: CUdeviceptr, n: usize) => dtoh(dst.cast(), src, n, None);
    cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) => dtod(dst, src, n, None);
    cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) => dtod(dst, src, n, Some(handle_of(s)));
    cuMemcpyDtoDAsync_v2_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) => dtod(dst, src, n, Some(handle_of(s)));
    cuMemcpyDtoD_v2_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) => dtod(dst, src, n, None);
    cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) => memcpy_any(dst, src, n, None);
    cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) => memcpy_any(dst, src, n, None);
    cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) => memcpy_any(dst, src, n, Some(handle_of(s)));
    cuMemcpyAsync_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) => memcpy_any(dst, src, n, Some(handle_of(s)));
    cuMemsetD8_v2(p: CUdeviceptr, v: u8, n: usize) => memset(p, u32::from(v), 1, n, None);
    cuMemsetD16_v2(p: CUdeviceptr, v: u16, n: usize) => memset(p, u32::from(v), 2, n, None);
    cuMemsetD32_v2(p: CUdeviceptr, v: u32, n: usize) => memset(p, v, 4, n, None);
    cuMemsetD8_v2_ptds(p: CUdeviceptr, v: u8, n: usize) => memset(p, u32::from(v), 1, n, None);
    cuMemsetD16_v2_ptds(p: CUdeviceptr, v: u16, n: usize) => memset(p, u32::from(v), 2, n, None);
    cuMemsetD32_v2_ptds(p: CUdeviceptr, v: u32, n: usize) => memset(p, v, 4, n, None);
    cuMemsetD8Async(p: CUdeviceptr, v: u8, n: usize, s: CUstream) => memset(p, u32::from(v), 1, n, Some(handle_of(s)));
    cuMemsetD16Async(p: CUdeviceptr, v: u16, n: usize, s: CUstream) => memset(p, u32::from(v), 2, n, Some(handle_of(s)));
    cuMemsetD32Async(p: CUdeviceptr, v: u32, n: usize, s: CUstream) => memset(p, v, 4, n, Some(handle_of(s)));
    cuMemsetD8Async_ptsz(p: CUdeviceptr, v: u8, n: usize, s: CUstream) => memset(p, u32::from(v), 1, n, Some(handle_of(s)));
    cuMemsetD16Async_ptsz(p: CUdeviceptr, v: u16, n: usize, s: CUstream) => memset(p, u32::from(v), 2, n, Some(handle_of(s)));
    cuMemsetD32Async_ptsz(p: CUdeviceptr, v: u32, n: usize, s: CUstream) => memset(p, v, 4, n, Some(handle_of(s)));
}

//! Error strings, entry-point lookup, export tables and other process-level calls.

use std::ffi::{c_char, c_int, c_void};

use vgpu_protocol::CuResult;

use super::{put, ret};
use crate::{CUresult, driver, procaddr};

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(e: CUresult, out: *mut *const c_char) -> CUresult {
    match CuResult(e).c_name() {
        // SAFETY: out-pointer from the caller.
        Some(name) => ret(unsafe { put(out, name.as_ptr()) }),
        None => CuResult::INVALID_VALUE.0,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(e: CUresult, out: *mut *const c_char) -> CUresult {
    match CuResult(e).c_description() {
        // SAFETY: out-pointer from the caller.
        Some(text) => ret(unsafe { put(out, text.as_ptr()) }),
        None => CuResult::INVALID_VALUE.0,
    }
}

/// `cuGetProcAddress`: the entry point NVIDIA's driver 580 would hand out for this base name,
/// CUDA version and flags (see `procaddr`). Like that driver, `_v2` answers `CUDA_SUCCESS` with
/// a NULL pointer and the reason in `status` when there is no such entry point; the CUDA 11
/// entry point (no status) answers `CUDA_ERROR_NOT_FOUND` instead.
fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> Result<procaddr::Status, CuResult> {
    // SAFETY: NUL-terminated symbol name from the caller.
    let name = unsafe { crate::cstr(symbol) }.ok_or(CuResult::INVALID_VALUE)?;
    if pfn.is_null() || flags > 2 {
        return Err(CuResult::INVALID_VALUE);
    }
    let driver_version = driver::driver().map_or(13000, |d| d.driver_version.max(13000));
    if version > driver_version {
        return Err(CuResult::INVALID_VALUE);
    }
    let (found, st) = procaddr::resolve_versioned(name.to_bytes(), version, flags);
    if crate::verbose() && found.is_none() {
        crate::log_error(&format!(
            "cuGetProcAddress({}, {version}, {flags}): {st:?}",
            name.to_string_lossy()
        ));
    }
    if !status.is_null() {
        // SAFETY: non-NULL out-pointer.
        unsafe { put(status, st as c_int)? };
    }
    // SAFETY: out-pointer from the caller, checked non-NULL.
    unsafe { put(pfn, found.unwrap_or(std::ptr::null_mut()))? };
    Ok(st)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    ret(get_proc_address(symbol, pfn, version, flags, status).map(|_| ()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    ret(
        get_proc_address(symbol, pfn, version, flags, std::ptr::null_mut()).and_then(|st| {
            if st == procaddr::Status::Success {
                Ok(())
            } else {
                Err(CuResult::NOT_FOUND)
            }
        }),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuProfilerStart() -> CUresult {
    ret(driver::driver().map(|_| ()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuProfilerStop() -> CUresult {
    ret(driver::driver().map(|_| ()))
}

//! Error strings, entry-point lookup, export tables and other process-level calls.

use std::ffi::{CStr, c_char, c_int, c_void};

use vgpu_protocol::CuResult;

use super::{put, ret};
use crate::{CUresult, driver, procaddr};

/// (code, name, description) as NVIDIA's driver reports them.
static ERRORS: &[(u32, &CStr, &CStr)] = &[
    (0, c"CUDA_SUCCESS", c"no error"),
    (1, c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
    (2, c"CUDA_ERROR_OUT_OF_MEMORY", c"out of memory"),
    (3, c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
    (4, c"CUDA_ERROR_DEINITIALIZED", c"driver shutting down"),
    (
        5,
        c"CUDA_ERROR_PROFILER_DISABLED",
        c"profiler disabled while using a profiling tool",
    ),
    (
        34,
        c"CUDA_ERROR_STUB_LIBRARY",
        c"CUDA driver is a stub library",
    ),
    (
        46,
        c"CUDA_ERROR_DEVICE_UNAVAILABLE",
        c"CUDA-capable device(s) is/are busy or unavailable",
    ),
    (
        100,
        c"CUDA_ERROR_NO_DEVICE",
        c"no CUDA-capable device is detected",
    ),
    (101, c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
    (
        200,
        c"CUDA_ERROR_INVALID_IMAGE",
        c"device kernel image is invalid",
    ),
    (
        201,
        c"CUDA_ERROR_INVALID_CONTEXT",
        c"invalid device context",
    ),
    (
        205,
        c"CUDA_ERROR_MAP_FAILED",
        c"mapping of buffer object failed",
    ),
    (
        209,
        c"CUDA_ERROR_NO_BINARY_FOR_GPU",
        c"no kernel image is available for execution on the device",
    ),
    (
        218,
        c"CUDA_ERROR_INVALID_PTX",
        c"a PTX JIT compilation failed",
    ),
    (
        222,
        c"CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        c"the provided PTX was compiled with an unsupported toolchain.",
    ),
    (
        300,
        c"CUDA_ERROR_INVALID_SOURCE",
        c"device kernel image is invalid",
    ),
    (301, c"CUDA_ERROR_FILE_NOT_FOUND", c"file not found"),
    (
        400,
        c"CUDA_ERROR_INVALID_HANDLE",
        c"invalid resource handle",
    ),
    (500, c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
    (600, c"CUDA_ERROR_NOT_READY", c"device not ready"),
    (
        700,
        c"CUDA_ERROR_ILLEGAL_ADDRESS",
        c"an illegal memory access was encountered",
    ),
    (
        701,
        c"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        c"too many resources requested for launch",
    ),
    (
        702,
        c"CUDA_ERROR_LAUNCH_TIMEOUT",
        c"the launch timed out and was terminated",
    ),
    (710, c"CUDA_ERROR_ASSERT", c"device-side assert triggered"),
    (
        715,
        c"CUDA_ERROR_ILLEGAL_INSTRUCTION",
        c"an illegal instruction was encountered",
    ),
    (
        719,
        c"CUDA_ERROR_LAUNCH_FAILED",
        c"unspecified launch failure",
    ),
    (800, c"CUDA_ERROR_NOT_PERMITTED", c"operation not permitted"),
    (801, c"CUDA_ERROR_NOT_SUPPORTED", c"operation not supported"),
    (999, c"CUDA_ERROR_UNKNOWN", c"unknown error"),
];

fn error_entry(e: CUresult) -> Option<&'static (u32, &'static CStr, &'static CStr)> {
    ERRORS.iter().find(|(c, _, _)| *c == e)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(e: CUresult, out: *mut *const c_char) -> CUresult {
    match error_entry(e) {
        // SAFETY: out-pointer from the caller.
        Some((_, name, _)) => ret(unsafe { put(out, name.as_ptr()) }),
        None => CuResult::INVALID_VALUE.0,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(e: CUresult, out: *mut *const c_char) -> CUresult {
    match error_entry(e) {
        // SAFETY: out-pointer from the caller.
        Some((_, _, text)) => ret(unsafe { put(out, text.as_ptr()) }),
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

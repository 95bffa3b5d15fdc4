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

const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;
const SYMBOL_SUCCESS: c_int = 0;
const SYMBOL_NOT_FOUND: c_int = 1;

fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    flags: u64,
    status: *mut c_int,
) -> Result<(), CuResult> {
    // SAFETY: NUL-terminated symbol name from the caller.
    let name = unsafe { crate::cstr(symbol) }.ok_or(CuResult::INVALID_VALUE)?;
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0;
    let found = procaddr::resolve(name.to_bytes(), per_thread);
    if !status.is_null() {
        // SAFETY: non-NULL out-pointer.
        unsafe {
            put(
                status,
                if found.is_some() {
                    SYMBOL_SUCCESS
                } else {
                    SYMBOL_NOT_FOUND
                },
            )?
        };
    }
    // SAFETY: out-pointer from the caller.
    unsafe { put(pfn, found.unwrap_or(std::ptr::null_mut()))? };
    if found.is_some() {
        Ok(())
    } else {
        Err(CuResult::NOT_FOUND)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    _version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    ret(get_proc_address(symbol, pfn, flags, status))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    _version: c_int,
    flags: u64,
) -> CUresult {
    ret(get_proc_address(symbol, pfn, flags, std::ptr::null_mut()))
}

/// The undocumented tables the CUDA runtime asks for. None is served yet: each request is
/// named with its UUID and refused cleanly.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetExportTable(
    table: *mut *const c_void,
    uuid: *const [u8; 16],
) -> CUresult {
    if table.is_null() || uuid.is_null() {
        return CuResult::INVALID_VALUE.0;
    }
    // SAFETY: non-NULL pointer to a 16-byte UUID.
    let u = unsafe { *uuid };
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    crate::log_error(&format!(
        "cuGetExportTable({hex}) is not served yet (CUDA_ERROR_NOT_SUPPORTED)"
    ));
    // SAFETY: non-NULL out-pointer.
    unsafe { *table = std::ptr::null() };
    CuResult::NOT_SUPPORTED.0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuProfilerStart() -> CUresult {
    ret(driver::driver().map(|_| ()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuProfilerStop() -> CUresult {
    ret(driver::driver().map(|_| ()))
}

//! The exported driver API, one module per area. Every function checks its pointers, returns
//! a `CUresult`, and never unwinds into C.

pub(crate) mod cls;
pub(crate) mod context;
pub(crate) mod device;
pub(crate) mod exports;
pub(crate) mod forward;
pub(crate) mod graph;
pub(crate) mod handles;
pub(crate) mod launch;
pub(crate) mod memory;
pub(crate) mod misc;
pub(crate) mod module;
pub(crate) mod occupancy;
pub(crate) mod pool;
pub(crate) mod runtime;
pub(crate) mod stream;
pub(crate) mod table;
pub(crate) mod tools_context;

use vgpu_protocol::CuResult;

use crate::CUresult;

/// Converts an internal result to the C return value.
pub(crate) fn ret(r: Result<(), CuResult>) -> CUresult {
    match r {
        Ok(()) => 0,
        Err(e) => e.0,
    }
}

/// Stores `v` through an out-pointer, refusing NULL.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) -> Result<(), CuResult> {
    if p.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    // SAFETY: non-NULL out-pointers from the application point to writable storage of `T`.
    unsafe { p.write(v) };
    Ok(())
}

/// `CUstream`/`CUevent` values are the host's handles.
pub(crate) fn handle_of<T>(p: *mut T) -> u64 {
    p as u64
}

//! The exported driver API, one module per area. Every function checks its pointers, returns
//! a `CUresult`, and never unwinds into C.

mod context;
mod device;
mod exports;
pub(crate) mod forward;
mod graph;
mod handles;
mod launch;
mod memory;
mod misc;
mod module;
mod pool;
mod runtime;
mod stream;
mod tools_context;

pub use context::*;
pub use device::*;
pub use exports::*;
pub use graph::*;
pub use launch::*;
pub use memory::*;
pub use misc::*;
pub use module::*;
pub use pool::*;
pub use runtime::*;
pub use stream::*;
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

//! `libcuda.so.1` for guests: NVIDIA's CUDA driver API, carried as messages to the
//! `vhost-gpu` daemon that runs it on the host's GPU.
//!
//! The transport comes from `VGPU_DEVICE`: `vhost-user:PATH` connects this process to the
//! daemon's socket as a virtio-user driver. Every symbol of NVIDIA's library is exported, by
//! the route table in [`routes`]; those not implemented return `CUDA_ERROR_NOT_SUPPORTED` and
//! say so, with the reason, once on stderr.

#![allow(non_snake_case, clippy::missing_safety_doc)]

mod api;
mod conn;
mod driver;
pub mod fatbin;
mod procaddr;
pub mod routes;
mod transport;

use std::{
    collections::HashSet,
    ffi::{CStr, c_char},
    sync::Mutex,
};

pub(crate) use api::forward;
/// Live modules and functions, and the slots their tables have used (for leak checks).
pub use api::module::registry_sizes;
pub use driver::driver;
pub use routes::{ALL_SYMBOLS, ROUTES, Route, lookup};

/// `CUresult` as the C ABI carries it.
pub type CUresult = u32;
pub type CUdevice = i32;
pub type CUdeviceptr = u64;
pub type CUcontext = *mut std::ffi::c_void;

/// Writes a diagnostic to stderr (the shim has no other channel in a guest).
pub(crate) fn log_error(msg: &str) {
    eprintln!("vgpu libcuda: {msg}");
}

/// `VGPU_TRACE=1`: one stderr line per call sent to the host (debugging aid).
pub(crate) fn tracing() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("VGPU_TRACE").is_some())
}

pub(crate) fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("VGPU_DEBUG").is_some())
}

/// Called by every exported entry point that is not implemented: logs the name and the reason
/// once.
pub(crate) fn unsupported(name: &'static str, reason: &'static str) -> CUresult {
    static SEEN: Mutex<Option<HashSet<usize>>> = Mutex::new(None);
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen
        .get_or_insert_with(HashSet::new)
        .insert(name.as_ptr() as usize)
    {
        log_error(&format!(
            "{name} is not supported by the vGPU: {reason} (CUDA_ERROR_NOT_SUPPORTED)"
        ));
    }
    vgpu_protocol::CuResult::NOT_SUPPORTED.0
}

/// Reads a C string argument; `None` for NULL.
pub(crate) unsafe fn cstr<'a>(p: *const c_char) -> Option<&'a CStr> {
    // SAFETY: the caller passes NULL or a NUL-terminated string, as the CUDA API requires.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) })
}

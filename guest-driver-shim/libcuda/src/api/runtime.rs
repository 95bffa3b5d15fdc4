//! Driver entry points the CUDA runtime calls during initialisation and around ordinary work
//! (loading mode, stream ids and capture state, pointer attributes, host functions), answered
//! in the guest from what the shim already knows, or turned into existing calls.

use std::{
    cell::Cell,
    ffi::{c_int, c_uint, c_void},
};

use vgpu_protocol::CuResult;

use super::{handle_of, put, ret};
use crate::{CUcontext, CUdeviceptr, CUresult, driver};

type CUstream = *mut c_void;

/// `CU_MODULE_EAGER_LOADING` / `CU_MODULE_LAZY_LOADING`, following `CUDA_MODULE_LOADING` as
/// NVIDIA's driver does (lazy unless the variable says EAGER).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetLoadingMode(mode: *mut c_int) -> CUresult {
    let eager = std::env::var("CUDA_MODULE_LOADING").is_ok_and(|v| v.eq_ignore_ascii_case("EAGER"));
    // SAFETY: out-pointer from the caller.
    ret(driver::driver().and_then(|_| unsafe { put(mode, if eager { 1 } else { 2 }) }))
}

// ---- streams ----

/// Stream ids: a stream's host handle; the NULL/legacy stream is 1 and the per-thread stream 2
/// (their `CUstream` values), which no host handle takes.
fn stream_id(s: CUstream, id: *mut u64) -> Result<(), CuResult> {
    driver::driver()?;
    let h = handle_of(s);
    let v = if h == 0 { 1 } else { h };
    // SAFETY: out-pointer from the caller.
    unsafe { put(id, v) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamGetId(s: CUstream, id: *mut u64) -> CUresult {
    ret(stream_id(s, id))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamGetCtx_v2(
    s: CUstream,
    pctx: *mut CUcontext,
    green: *mut *mut c_void,
) -> CUresult {
    if !green.is_null() {
        // SAFETY: non-NULL out-pointer: no green contexts here.
        unsafe { *green = std::ptr::null_mut() };
    }
    // SAFETY: same contract.
    unsafe { super::stream::cuStreamGetCtx(s, pctx) }
}

// ---- stream capture state, kept in the guest (api/graph.rs) ----

const CAPTURE_STATUS_NONE: c_int = 0;
const CAPTURE_STATUS_ACTIVE: c_int = 1;

fn is_capturing(s: CUstream, status: *mut c_int) -> Result<Option<u64>, CuResult> {
    driver::driver()?;
    let id = super::graph::capture_id(s as u64);
    let st = if id.is_some() {
        CAPTURE_STATUS_ACTIVE
    } else {
        CAPTURE_STATUS_NONE
    };
    // SAFETY: out-pointer from the caller.
    unsafe { put(status, st)? };
    Ok(id)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamIsCapturing(s: CUstream, status: *mut c_int) -> CUresult {
    ret(is_capturing(s, status).map(|_| ()))
}

/// Writes the capture status and id; the graph under construction and its dependencies are
/// not exposed (the graph lives on the host until capture ends).
fn capture_info(
    s: CUstream,
    status: *mut c_int,
    id: *mut u64,
    graph: *mut *mut c_void,
    deps: *mut *const c_void,
    edges: *mut *const c_void,
    ndeps: *mut usize,
) -> Result<(), CuResult> {
    let capture = is_capturing(s, status)?;
    // SAFETY: each optional out-pointer is written only when non-NULL.
    unsafe {
        if !id.is_null() {
            *id = capture.unwrap_or(0);
        }
        if !graph.is_null() {
            *graph = std::ptr::null_mut();
        }
        if !deps.is_null() {
            *deps = std::ptr::null();
        }
        if !edges.is_null() {
            *edges = std::ptr::null();
        }
        if !ndeps.is_null() {
            *ndeps = 0;
        }
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v2(
    s: CUstream,
    status: *mut c_int,
    id: *mut u64,
    graph: *mut *mut c_void,
    deps: *mut *const c_void,
    ndeps: *mut usize,
) -> CUresult {
    ret(capture_info(
        s,
        status,
        id,
        graph,
        deps,
        std::ptr::null_mut(),
        ndeps,
    ))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v3(
    s: CUstream,
    status: *mut c_int,
    id: *mut u64,
    graph: *mut *mut c_void,
    deps: *mut *const c_void,
    edges: *mut *const c_void,
    ndeps: *mut usize,
) -> CUresult {
    ret(capture_info(s, status, id, graph, deps, edges, ndeps))
}

thread_local! {
    /// This thread's `CUstreamCaptureMode` (0 = global, the default).
    static CAPTURE_MODE: Cell<c_int> = const { Cell::new(0) };
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuThreadExchangeStreamCaptureMode(mode: *mut c_int) -> CUresult {
    ret((|| {
        driver::driver()?;
        if mode.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        // SAFETY: checked non-NULL; in/out parameter.
        let new = unsafe { *mode };
        if !(0..=2).contains(&new) {
            return Err(CuResult::INVALID_VALUE);
        }
        let old = CAPTURE_MODE.with(|m| m.replace(new));
        // SAFETY: checked non-NULL.
        unsafe { *mode = old };
        Ok(())
    })())
}

// ---- host functions ----

type HostFn = Option<extern "C" fn(*mut c_void)>;

/// Runs `f(data)` in the guest once the stream's earlier work is done. First version: the
/// caller waits for the stream (send the batch, synchronise), then the function runs on the
/// calling thread before this returns. Ordering holds; the call is not asynchronous.
/// Waits until the work queued on `s` so far has run; its status. Host functions run in the
/// guest, so "ordered with the stream" means: after what came before, before what comes after.
fn drain_stream(s: CUstream) -> Result<CUresult, CuResult> {
    let d = driver::driver()?;
    driver::current_handle()?;
    d.conn.flush()?;
    // SAFETY: same contract as the public entry points that call this.
    Ok(unsafe { super::stream::cuStreamSynchronize(s) })
}

fn launch_host_func(s: CUstream, f: HostFn, data: *mut c_void) -> Result<(), CuResult> {
    let f = f.ok_or(CuResult::INVALID_VALUE)?;
    match drain_stream(s)? {
        0 => {
            f(data);
            Ok(())
        }
        r => Err(CuResult(r)),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchHostFunc(s: CUstream, f: HostFn, data: *mut c_void) -> CUresult {
    ret(launch_host_func(s, f, data))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchHostFunc_ptsz(
    s: CUstream,
    f: HostFn,
    data: *mut c_void,
) -> CUresult {
    ret(launch_host_func(s, f, data))
}

/// `CUstreamCallback`: called with the stream, its status and the user's pointer.
type StreamCallback = Option<extern "C" fn(CUstream, CUresult, *mut c_void)>;

/// Like `cuLaunchHostFunc`, but the callback also gets the stream's status (an error from
/// earlier work is passed to it rather than returned).
fn stream_add_callback(s: CUstream, f: StreamCallback, data: *mut c_void) -> Result<(), CuResult> {
    let f = f.ok_or(CuResult::INVALID_VALUE)?;
    let status = drain_stream(s)?;
    f(s, status, data);
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamAddCallback(
    s: CUstream,
    f: StreamCallback,
    data: *mut c_void,
    _flags: c_uint,
) -> CUresult {
    ret(stream_add_callback(s, f, data))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamAddCallback_ptsz(
    s: CUstream,
    f: StreamCallback,
    data: *mut c_void,
    _flags: c_uint,
) -> CUresult {
    ret(stream_add_callback(s, f, data))
}

// ---- pointer attributes ----

const MEMORYTYPE_HOST: c_uint = 1;
const MEMORYTYPE_DEVICE: c_uint = 2;

/// What the shim knows about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pointer {
    /// Device memory: allocation base and size.
    Device(u64, u64),
    /// Pinned host memory allocated through us: base and size.
    Host(u64, u64),
    Unknown,
}

fn classify(d: &driver::Driver, p: u64) -> Pointer {
    let dev = d
        .allocations
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .range(..=p)
        .next_back()
        .map(|(&b, &s)| (b, s));
    if let Some((b, s)) = dev
        && p < b.saturating_add(s.max(1))
    {
        return Pointer::Device(b, s);
    }
    let host = d
        .pinned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .range(..=(p as usize))
        .next_back()
        .map(|(&b, buf)| (b as u64, buf.len as u64));
    if let Some((b, s)) = host
        && p < b.saturating_add(s.max(1))
    {
        return Pointer::Host(b, s);
    }
    Pointer::Unknown
}

/// Writes one attribute of `p` to `data`. `known_only`: `cuPointerGetAttribute` refuses
/// unknown pointers; `cuPointerGetAttributes` describes them as unregistered host memory.
///
/// # Safety
/// `data` must be NULL or point at storage of the attribute's type.
unsafe fn pointer_attribute(
    d: &'static driver::Driver,
    data: *mut c_void,
    attribute: c_int,
    p: u64,
    known_only: bool,
) -> Result<(), CuResult> {
    if data.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    let kind = classify(d, p);
    if known_only && kind == Pointer::Unknown {
        return Err(CuResult::INVALID_VALUE);
    }
    let (base, size) = match kind {
        Pointer::Device(b, s) | Pointer::Host(b, s) => (b, s),
        Pointer::Unknown => (0, 0),
    };
    let ctx = match kind {
        Pointer::Unknown => std::ptr::null_mut(),
        _ => std::ptr::from_ref(driver::current().unwrap_or(d.primary)) as *mut c_void,
    };
    // SAFETY: `data` points at storage of the attribute's type (caller's contract).
    unsafe {
        match attribute {
            // CONTEXT
            1 => *data.cast::<*mut c_void>() = ctx,
            // MEMORY_TYPE
            2 => {
                *data.cast::<c_uint>() = match kind {
                    Pointer::Device(..) => MEMORYTYPE_DEVICE,
                    Pointer::Host(..) => MEMORYTYPE_HOST,
                    Pointer::Unknown => 0,
                }
            }
            // DEVICE_POINTER, HOST_POINTER: one address space is not shared across the VM
            // boundary, so only the pointer's own kind has an address.
            3 => match kind {
                Pointer::Device(..) => *data.cast::<u64>() = p,
                _ => return Err(CuResult::INVALID_VALUE),
            },
            4 => match kind {
                Pointer::Host(..) => *data.cast::<*mut c_void>() = p as *mut c_void,
                _ => return Err(CuResult::INVALID_VALUE),
            },
            // SYNC_MEMOPS, IS_MANAGED, IS_LEGACY_CUDA_IPC_CAPABLE, IS_GPU_DIRECT_RDMA_CAPABLE,
            // IS_HW_DECOMPRESS_CAPABLE
            6 | 8 | 10 | 15 | 21 => *data.cast::<c_int>() = 0,
            // BUFFER_ID, MEMORY_BLOCK_ID
            7 | 20 => *data.cast::<u64>() = base,
            // DEVICE_ORDINAL
            9 => *data.cast::<c_int>() = if kind == Pointer::Unknown { -2 } else { 0 },
            // RANGE_START_ADDR, MAPPING_BASE_ADDR
            11 | 19 => *data.cast::<u64>() = base,
            // RANGE_SIZE, MAPPING_SIZE
            12 | 18 => *data.cast::<usize>() = size as usize,
            // MAPPED
            13 => *data.cast::<c_int>() = c_int::from(kind != Pointer::Unknown),
            // ALLOWED_HANDLE_TYPES
            14 => *data.cast::<u64>() = 0,
            // ACCESS_FLAGS: read-write
            16 => *data.cast::<c_uint>() = 3,
            // MEMPOOL_HANDLE
            17 => *data.cast::<*mut c_void>() = std::ptr::null_mut(),
            _ => return Err(CuResult::INVALID_VALUE),
        }
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuPointerGetAttribute(
    data: *mut c_void,
    attribute: c_int,
    p: CUdeviceptr,
) -> CUresult {
    // SAFETY: `data` has the attribute's type (caller's contract).
    ret(driver::driver().and_then(|d| unsafe { pointer_attribute(d, data, attribute, p, true) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuPointerGetAttributes(
    n: c_uint,
    attributes: *const c_int,
    data: *mut *mut c_void,
    p: CUdeviceptr,
) -> CUresult {
    ret((|| {
        let d = driver::driver()?;
        if n == 0 || attributes.is_null() || data.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        for i in 0..n as usize {
            // SAFETY: both arrays hold `n` entries (caller's contract).
            let (a, out) = unsafe { (*attributes.add(i), *data.add(i)) };
            // SAFETY: each output has its attribute's type (caller's contract).
            match unsafe { pointer_attribute(d, out, a, p, false) } {
                Ok(()) => {}
                // Attributes without an answer for this pointer are left as they are, as
                // NVIDIA's driver does for unregistered memory.
                Err(e) if e == CuResult::INVALID_VALUE && !out.is_null() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })())
}

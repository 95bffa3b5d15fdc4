//! CUDA graphs by stream capture. Capture happens on the host: between begin and end, the
//! launches and copies queued on the stream are recorded by the host's driver into a graph, which
//! the guest then instantiates and launches by handle. `CUgraph` and `CUgraphExec` values are
//! the host's handles. The guest keeps which of its streams are capturing, so capture queries
//! (frequent in PyTorch) need no round trip.

use std::{
    collections::HashMap,
    ffi::{c_int, c_void},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use vgpu_protocol::{CuResult, Opcode, calls};

use super::{handle_of, put, ret};
use crate::{CUresult, conn::stream_arg, driver};

type CUstream = *mut c_void;

/// Streams being captured -> their capture id.
static CAPTURING: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);
static NEXT_CAPTURE_ID: AtomicU64 = AtomicU64::new(1);

/// The capture id of `stream` if it is capturing.
pub(crate) fn capture_id(stream: u64) -> Option<u64> {
    CAPTURING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(&stream).copied())
}

fn begin_capture(s: CUstream, mode: c_int) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let ctx = driver::current_handle()?;
    let body = calls::BeginCapture {
        stream: handle_of(s).into(),
        ctx: ctx.into(),
        mode: (mode as u32).into(),
        _pad: 0.into(),
    };
    d.conn
        .call(Opcode::StreamBeginCapture, &body, &[], None, None)?
        .ok()?;
    let id = NEXT_CAPTURE_ID.fetch_add(1, Ordering::Relaxed);
    CAPTURING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(handle_of(s), id);
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(s: CUstream, mode: c_int) -> CUresult {
    ret(begin_capture(s, mode))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture(s: CUstream) -> CUresult {
    ret(begin_capture(s, 0))
}

fn end_capture(s: CUstream, graph: *mut *mut c_void) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let ctx = driver::current_handle()?;
    if graph.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    if let Some(m) = CAPTURING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()
    {
        m.remove(&handle_of(s));
    }
    let r = d.conn.call(
        Opcode::StreamEndCapture,
        &stream_arg(handle_of(s), ctx),
        &[],
        None,
        None,
    )?;
    let h: calls::HandleReply = r.parse()?;
    // SAFETY: checked non-NULL.
    unsafe { put(graph, h.handle.get() as *mut c_void) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamEndCapture(s: CUstream, graph: *mut *mut c_void) -> CUresult {
    ret(end_capture(s, graph))
}

fn instantiate(exec: *mut *mut c_void, graph: *mut c_void, flags: u64) -> Result<(), CuResult> {
    let d = driver::driver()?;
    if exec.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    let body = calls::GraphInstantiate {
        graph: handle_of(graph).into(),
        flags: flags.into(),
    };
    let h: calls::HandleReply = d
        .conn
        .call(Opcode::GraphInstantiate, &body, &[], None, None)?
        .parse()?;
    // SAFETY: checked non-NULL.
    unsafe { put(exec, h.handle.get() as *mut c_void) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut *mut c_void,
    graph: *mut c_void,
    flags: u64,
) -> CUresult {
    ret(instantiate(exec, graph, flags))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut *mut c_void,
    graph: *mut c_void,
    error_node: *mut *mut c_void,
    _log: *mut i8,
    _log_size: usize,
) -> CUresult {
    if !error_node.is_null() {
        // SAFETY: non-NULL out-pointer from the caller.
        unsafe { *error_node = std::ptr::null_mut() };
    }
    ret(instantiate(exec, graph, 0))
}

fn launch(exec: *mut c_void, s: CUstream) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let ctx = driver::current_handle()?;
    let body = calls::GraphLaunch {
        exec: handle_of(exec).into(),
        stream: handle_of(s).into(),
        ctx: ctx.into(),
    };
    d.conn
        .call_async(Opcode::GraphLaunch, 0, &body, 0, |_| {}, None, None)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphLaunch(exec: *mut c_void, s: CUstream) -> CUresult {
    ret(launch(exec, s))
}

fn destroy(op: Opcode, h: *mut c_void) -> Result<(), CuResult> {
    let d = driver::driver()?;
    d.conn
        .call(
            op,
            &calls::HandleArg {
                handle: handle_of(h).into(),
            },
            &[],
            None,
            None,
        )?
        .ok()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: *mut c_void) -> CUresult {
    ret(destroy(Opcode::GraphExecDestroy, exec))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphDestroy(graph: *mut c_void) -> CUresult {
    ret(destroy(Opcode::GraphDestroy, graph))
}

/// `CUgraphExecUpdateResultInfo`: why an update was refused. The nodes are the host's and
/// mean nothing in the guest, so they are reported as NULL.
#[repr(C)]
pub struct UpdateResultInfo {
    result: c_int,
    error_node: *mut c_void,
    error_from_node: *mut c_void,
}

/// Updates an instantiated graph from a newly captured one of the same shape (new kernel
/// parameters, copy addresses): the host's driver decides, as natively. Returns the call's
/// result and the `CUgraphExecUpdateResult`.
fn exec_update(exec: *mut c_void, graph: *mut c_void) -> Result<(CuResult, c_int), CuResult> {
    let d = driver::driver()?;
    let body = calls::GraphExecUpdate {
        exec: handle_of(exec).into(),
        graph: handle_of(graph).into(),
    };
    d.conn.flush()?;
    let r = d
        .conn
        .call(Opcode::GraphExecUpdate, &body, &[], None, None)?;
    let why = <calls::I32Reply as zerocopy::FromBytes>::read_from_prefix(&r.body)
        .map(|(v, _)| v.value.get())
        .unwrap_or(0);
    Ok((r.result, why))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecUpdate_v2(
    exec: *mut c_void,
    graph: *mut c_void,
    info: *mut UpdateResultInfo,
) -> CUresult {
    ret(exec_update(exec, graph).and_then(|(r, why)| {
        if !info.is_null() {
            // SAFETY: non-NULL out-pointer from the caller.
            unsafe {
                put(
                    info,
                    UpdateResultInfo {
                        result: why,
                        error_node: std::ptr::null_mut(),
                        error_from_node: std::ptr::null_mut(),
                    },
                )?;
            }
        }
        if r.is_ok() { Ok(()) } else { Err(r) }
    }))
}

/// The CUDA 11 form: the failing node and the reason through two out-pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecUpdate(
    exec: *mut c_void,
    graph: *mut c_void,
    error_node: *mut *mut c_void,
    result: *mut c_int,
) -> CUresult {
    ret(exec_update(exec, graph).and_then(|(r, why)| {
        if !error_node.is_null() {
            // SAFETY: non-NULL out-pointer from the caller.
            unsafe { put(error_node, std::ptr::null_mut())? };
        }
        if !result.is_null() {
            // SAFETY: non-NULL out-pointer from the caller.
            unsafe { put(result, why)? };
        }
        if r.is_ok() { Ok(()) } else { Err(r) }
    }))
}

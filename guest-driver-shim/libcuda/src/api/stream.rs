//! Streams and events. `CUstream` and `CUevent` values are the host's handles; stream-ordered
//! calls (event record, stream wait) are fire-and-forget.

use std::{
    collections::HashMap,
    ffi::{c_int, c_uint, c_void},
    sync::{Mutex, PoisonError},
};

use vgpu_protocol::{CuResult, Opcode, calls};

use super::{handle_of, put, ret};
use crate::{CUresult, conn::stream_arg, driver};

pub type CUevent = *mut c_void;
type CUstream = *mut c_void;

/// The stream priorities the H200's driver offers: greatest (-5) to least (0).
pub(crate) const PRIORITY_GREATEST: c_int = -5;
pub(crate) const PRIORITY_LEAST: c_int = 0;

/// Flags and (clamped) priority of each stream we created, as the driver reports them back.
static STREAM_INFO: Mutex<Option<HashMap<u64, (c_uint, c_int)>>> = Mutex::new(None);

fn stream_info(s: CUstream) -> (c_uint, c_int) {
    STREAM_INFO
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(&handle_of(s)).copied())
        .unwrap_or((0, PRIORITY_LEAST))
}

fn stream_create(ph: *mut CUstream, flags: c_uint, priority: c_int) -> Result<(), CuResult> {
    let ctx = driver::current_handle()?;
    let d = driver::driver()?;
    if ph.is_null() {
        return Err(CuResult::INVALID_VALUE);
    }
    let body = calls::StreamCreate {
        ctx: ctx.into(),
        flags: flags.into(),
        priority: priority.into(),
    };
    let h: calls::HandleReply = d
        .conn
        .call(Opcode::StreamCreate, &body, &[], None, None)?
        .parse()?;
    STREAM_INFO
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(
            h.handle.get(),
            (flags, priority.clamp(PRIORITY_GREATEST, PRIORITY_LEAST)),
        );
    // SAFETY: checked non-NULL.
    unsafe { put(ph, h.handle.get() as CUstream) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut CUstream, flags: c_uint) -> CUresult {
    ret(stream_create(ph, flags, 0))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ph: *mut CUstream,
    flags: c_uint,
    priority: c_int,
) -> CUresult {
    ret(stream_create(ph, flags, priority))
}

fn stream_call(op: Opcode, s: CUstream) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let ctx = driver::current_handle().unwrap_or(0);
    d.conn
        .call(op, &stream_arg(handle_of(s), ctx), &[], None, None)?
        .ok()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(s: CUstream) -> CUresult {
    ret(stream_destroy(s))
}

fn stream_destroy(s: CUstream) -> Result<(), CuResult> {
    stream_call(Opcode::StreamDestroy, s)?;
    if let Some(m) = STREAM_INFO
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        m.remove(&handle_of(s));
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy(s: CUstream) -> CUresult {
    ret(stream_destroy(s))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(s: CUstream) -> CUresult {
    ret(stream_call(Opcode::StreamSynchronize, s))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamQuery(s: CUstream) -> CUresult {
    ret(stream_call(Opcode::StreamQuery, s))
}

fn stream_wait_event(s: CUstream, e: CUevent, flags: c_uint) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let ctx = driver::current_handle().unwrap_or(0);
    let body = calls::StreamWaitEvent {
        stream: handle_of(s).into(),
        ctx: ctx.into(),
        event: handle_of(e).into(),
        flags: flags.into(),
        _pad: 0.into(),
    };
    d.conn
        .call_async(Opcode::StreamWaitEvent, 0, &body, 0, |_| {}, None, None)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamWaitEvent(s: CUstream, e: CUevent, flags: c_uint) -> CUresult {
    ret(stream_wait_event(s, e, flags))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamWaitEvent_ptsz(
    s: CUstream,
    e: CUevent,
    flags: c_uint,
) -> CUresult {
    ret(stream_wait_event(s, e, flags))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamGetPriority(s: CUstream, priority: *mut c_int) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(driver::driver().and_then(|_| unsafe { put(priority, stream_info(s).1) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamGetFlags(s: CUstream, flags: *mut c_uint) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(driver::driver().and_then(|_| unsafe { put(flags, stream_info(s).0) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamGetCtx(_s: CUstream, pctx: *mut *mut c_void) -> CUresult {
    ret(driver::current()
        .ok_or(CuResult::INVALID_CONTEXT)
        .and_then(|c| {
            // SAFETY: out-pointer from the caller.
            unsafe { put(pctx, c as *const driver::Ctx as *mut c_void) }
        }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(ph: *mut CUevent, flags: c_uint) -> CUresult {
    ret((|| {
        let ctx = driver::current_handle()?;
        let d = driver::driver()?;
        if ph.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let body = calls::EventCreate {
            ctx: ctx.into(),
            flags: flags.into(),
            _pad: 0.into(),
        };
        let h: calls::HandleReply = d
            .conn
            .call(Opcode::EventCreate, &body, &[], None, None)?
            .parse()?;
        // SAFETY: checked non-NULL.
        unsafe { put(ph, h.handle.get() as CUevent) }
    })())
}

fn event_call(op: Opcode, e: CUevent) -> Result<(), CuResult> {
    let d = driver::driver()?;
    d.conn
        .call(
            op,
            &calls::HandleArg {
                handle: handle_of(e).into(),
            },
            &[],
            None,
            None,
        )?
        .ok()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy_v2(e: CUevent) -> CUresult {
    ret(event_call(Opcode::EventDestroy, e))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy(e: CUevent) -> CUresult {
    ret(event_call(Opcode::EventDestroy, e))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(e: CUevent) -> CUresult {
    ret(event_call(Opcode::EventSynchronize, e))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventQuery(e: CUevent) -> CUresult {
    ret(event_call(Opcode::EventQuery, e))
}

fn event_record(e: CUevent, s: CUstream) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let ctx = driver::current_handle().unwrap_or(0);
    let body = calls::EventRecord {
        event: handle_of(e).into(),
        stream: handle_of(s).into(),
        ctx: ctx.into(),
    };
    d.conn
        .call_async(Opcode::EventRecord, 0, &body, 0, |_| {}, None, None)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecord(e: CUevent, s: CUstream) -> CUresult {
    ret(event_record(e, s))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecordWithFlags(
    e: CUevent,
    s: CUstream,
    _flags: c_uint,
) -> CUresult {
    ret(event_record(e, s))
}

fn elapsed(ms: *mut f32, start: CUevent, end: CUevent) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let body = calls::EventElapsed {
        start: handle_of(start).into(),
        end: handle_of(end).into(),
    };
    let r: calls::F32Reply = d
        .conn
        .call(Opcode::EventElapsedTime, &body, &[], None, None)?
        .parse()?;
    // SAFETY: out-pointer from the caller.
    unsafe { put(ms, r.value.get()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut f32,
    start: CUevent,
    end: CUevent,
) -> CUresult {
    ret(elapsed(ms, start, end))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: CUevent,
    end: CUevent,
) -> CUresult {
    ret(elapsed(ms, start, end))
}

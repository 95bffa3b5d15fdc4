//! The stream operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `StreamCreate`.
pub(super) fn create(
    ex: &mut Executor,
    r: &mut Req<'_, '_, '_>,
    a: &calls::StreamCreate,
    _tail: &[u8],
) -> CallResult {
    ex.make_current(r.client, a.ctx.get())?;
    let raw = ex.gpu.stream_create(a.flags.get(), a.priority.get())?;
    let h = ex.client(r.client)?.objects.insert(Object::Stream {
        raw,
        ctx: a.ctx.get(),
    });
    r.w.push(r.code(), 0, &calls::HandleReply { handle: h.into() }, &[]);
    Ok(())
}

/// `StreamDestroy`.
pub(super) fn destroy(
    ex: &mut Executor,
    r: &mut Req<'_, '_, '_>,
    a: &calls::StreamArg,
    _tail: &[u8],
) -> CallResult {
    if a.stream.get() <= vgpu_protocol::stream::PER_THREAD {
        return Err(CuResult::INVALID_HANDLE);
    }
    let raw = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    ex.gpu.stream_destroy(raw)?;
    ex.client(r.client)?.objects.remove(a.stream.get());
    r.w.push_status(r.code(), 0);
    Ok(())
}

/// `StreamSynchronize`, `StreamQuery`.
pub(super) fn synchronize_or_query(
    ex: &mut Executor,
    r: &mut Req<'_, '_, '_>,
    a: &calls::StreamArg,
    _tail: &[u8],
) -> CallResult {
    let raw = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    if r.op == Opcode::StreamSynchronize {
        ex.gpu.stream_synchronize(raw)?;
        ex.take_deferred(r.client)?;
    } else {
        ex.gpu.stream_query(raw)?;
    }
    r.w.push_status(r.code(), 0);
    Ok(())
}

/// `StreamWaitEvent`.
pub(super) fn wait_event(
    ex: &mut Executor,
    r: &mut Req<'_, '_, '_>,
    a: &calls::StreamWaitEvent,
    _tail: &[u8],
) -> CallResult {
    let ev = ex.event(r.client, a.event.get())?;
    let s = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    ex.gpu.stream_wait_event(s, ev, a.flags.get())?;
    r.w.push_status(r.code(), 0);
    Ok(())
}

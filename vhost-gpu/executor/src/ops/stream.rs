//! The stream operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `StreamCreate`.
pub(super) fn create(ex: &mut Executor, r: &mut Req, a: &calls::StreamCreate) -> CallResult {
    ex.make_current(r.client, a.ctx.get())?;
    let raw = ex.gpu.stream_create(a.flags.get(), a.priority.get())?;
    let h = ex.client(r.client)?.objects.insert(Object::Stream {
        raw,
        ctx: a.ctx.get(),
    });
    r.handle(h)
}

/// `StreamDestroy`.
pub(super) fn destroy(ex: &mut Executor, r: &mut Req, a: &calls::StreamArg) -> CallResult {
    if a.stream.get() <= vgpu_protocol::stream::PER_THREAD {
        return Err(CuResult::INVALID_HANDLE);
    }
    let raw = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    ex.gpu.stream_destroy(raw)?;
    ex.client(r.client)?.objects.remove(a.stream.get());
    r.ok()
}

/// `StreamSynchronize`, `StreamQuery`.
pub(super) fn sync_or_query(ex: &mut Executor, r: &mut Req, a: &calls::StreamArg) -> CallResult {
    let raw = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    super::sync_or_query(ex, r, super::Waitable::Stream(raw))
}

/// `StreamWaitEvent`.
pub(super) fn wait_event(ex: &mut Executor, r: &mut Req, a: &calls::StreamWaitEvent) -> CallResult {
    let ev = ex.event(r.client, a.event.get())?;
    let s = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    ex.gpu.stream_wait_event(s, ev, a.flags.get())?;
    r.ok()
}

//! The event operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `EventCreate`.
pub(super) fn create(ex: &mut Executor, r: &mut Req, a: &calls::EventCreate) -> CallResult {
    ex.make_current(r.client, a.ctx.get())?;
    let raw = ex.gpu.event_create(a.flags.get())?;
    let h = ex.client(r.client)?.objects.insert(Object::Event {
        raw,
        ctx: a.ctx.get(),
    });
    r.handle(h)
}

/// `EventDestroy`.
pub(super) fn destroy(ex: &mut Executor, r: &mut Req, a: &calls::HandleArg) -> CallResult {
    let raw = ex.event(r.client, a.handle.get())?;
    ex.gpu.event_destroy(raw)?;
    ex.client(r.client)?.objects.remove(a.handle.get());
    r.ok()
}

/// `EventRecord`.
pub(super) fn record(ex: &mut Executor, r: &mut Req, a: &calls::EventRecord) -> CallResult {
    let ev = ex.event(r.client, a.event.get())?;
    let s = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    ex.gpu.event_record(ev, s)?;
    r.ok()
}

/// `EventSynchronize`, `EventQuery`.
pub(super) fn sync_or_query(ex: &mut Executor, r: &mut Req, a: &calls::HandleArg) -> CallResult {
    let raw = ex.event(r.client, a.handle.get())?;
    super::sync_or_query(ex, r, super::Waitable::Event(raw))
}

/// `EventElapsedTime`.
pub(super) fn elapsed(ex: &mut Executor, r: &mut Req, a: &calls::EventElapsed) -> CallResult {
    let s = ex.event(r.client, a.start.get())?;
    let e = ex.event(r.client, a.end.get())?;
    let ms = ex.gpu.event_elapsed_ms(s, e)?;
    r.reply(&calls::F32Reply {
        value: ms.into(),
        _pad: 0.into(),
    })
}

//! The graph operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `StreamBeginCapture`.
pub(super) fn begin_capture(ex: &mut Executor, r: &mut Req, a: &calls::BeginCapture) -> CallResult {
    let raw = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    ex.gpu.stream_begin_capture(raw, a.mode.get())?;
    r.ok()
}

/// `StreamEndCapture`.
pub(super) fn end_capture(ex: &mut Executor, r: &mut Req, a: &calls::StreamArg) -> CallResult {
    let raw = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    let graph = ex.gpu.stream_end_capture(raw)?;
    let ctx = ex.stream_ctx(r.client, a.stream.get(), a.ctx.get())?;
    let h = ex
        .client(r.client)?
        .objects
        .insert(Object::Graph { raw: graph, ctx });
    r.handle(h)
}

/// `GraphInstantiate`.
pub(super) fn instantiate(
    ex: &mut Executor,
    r: &mut Req,
    a: &calls::GraphInstantiate,
) -> CallResult {
    let (raw, ctx) = match ex.client(r.client)?.objects.get(a.graph.get()) {
        Some(Object::Graph { raw, ctx }) => (*raw, *ctx),
        _ => return Err(CuResult::INVALID_HANDLE),
    };
    ex.make_current(r.client, ctx)?;
    let exec = ex.gpu.graph_instantiate(raw, a.flags.get())?;
    let h = ex
        .client(r.client)?
        .objects
        .insert(Object::GraphExec { raw: exec, ctx });
    r.handle(h)
}

/// `GraphLaunch`.
pub(super) fn launch(ex: &mut Executor, r: &mut Req, a: &calls::GraphLaunch) -> CallResult {
    let exec = match ex.client(r.client)?.objects.get(a.exec.get()) {
        Some(Object::GraphExec { raw, .. }) => *raw,
        _ => return Err(CuResult::INVALID_HANDLE),
    };
    let s = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    ex.gpu.graph_launch(exec, s)?;
    r.ok()
}

/// `GraphExecUpdate`.
pub(super) fn exec_update(
    ex: &mut Executor,
    r: &mut Req,
    a: &calls::GraphExecUpdate,
) -> CallResult {
    let c = ex.client(r.client)?;
    let (exec, ctx) = match c.objects.get(a.exec.get()) {
        Some(Object::GraphExec { raw, ctx }) => (*raw, *ctx),
        _ => return Err(CuResult::INVALID_HANDLE),
    };
    let graph = match c.objects.get(a.graph.get()) {
        Some(Object::Graph { raw, .. }) => *raw,
        _ => return Err(CuResult::INVALID_HANDLE),
    };
    ex.make_current(r.client, ctx)?;
    // A refused update is an answer, not a failed call: the guest reads why.
    let (result, why) = ex.gpu.graph_exec_update(exec, graph);
    r.w.push(
        r.code(),
        result.0,
        &calls::I32Reply {
            value: why.into(),
            _pad: 0.into(),
        },
        &[],
    );
    Ok(())
}

/// `GraphExecDestroy`, `GraphDestroy`.
pub(super) fn destroy(ex: &mut Executor, r: &mut Req, a: &calls::HandleArg) -> CallResult {
    let c = ex.client(r.client)?;
    match (r.op, c.objects.get(a.handle.get())) {
        (Opcode::GraphExecDestroy, Some(Object::GraphExec { raw, .. })) => {
            let raw = *raw;
            ex.gpu.graph_exec_destroy(raw)?;
        }
        (Opcode::GraphDestroy, Some(Object::Graph { raw, .. })) => {
            let raw = *raw;
            ex.gpu.graph_destroy(raw)?;
        }
        _ => return Err(CuResult::INVALID_HANDLE),
    }
    ex.client(r.client)?.objects.remove(a.handle.get());
    r.ok()
}

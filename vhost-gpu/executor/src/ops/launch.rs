//! The launch operations.

#[allow(unused_imports)]
use super::prelude::*;

/// `OccupancyMaxActiveBlocks`.
pub(super) fn occupancy_blocks(ex: &mut Executor, r: &mut Req, a: &calls::Occupancy) -> CallResult {
    let raw = ex.func(r.client, a.func.get())?;
    let n = ex.gpu.occupancy_max_active_blocks(
        raw,
        a.block_size.get(),
        a.dynamic_smem.get(),
        a.flags.get(),
    )?;
    r.value_i32(n)
}

/// `OccupancyMaxActiveClusters`.
pub(super) fn occupancy_clusters(
    ex: &mut Executor,
    r: &mut Req,
    a: &calls::OccupancyClusters,
) -> CallResult {
    let raw = ex.func(r.client, a.func.get())?;
    let config = LaunchConfig {
        grid: a.grid.map(|v| v.get()),
        block: a.block.map(|v| v.get()),
        shared_mem: a.shared_mem.get(),
        cooperative: false,
        cluster: a.cluster.map(|v| v.get()),
    };
    let n = ex.gpu.occupancy_max_active_clusters(raw, &config)?;
    r.value_i32(n)
}

/// `LaunchKernel`.
pub(super) fn launch(ex: &mut Executor, r: &mut Req, a: &calls::LaunchKernel) -> CallResult {
    let tail = r.tail;
    let params = tail
        .get(..a.params_len.get() as usize)
        .ok_or(CuResult::INVALID_VALUE)?;
    let s = ex.stream(r.client, a.stream.get(), a.ctx.get())?;
    let config = LaunchConfig {
        grid: a.grid.map(|v| v.get()),
        block: a.block.map(|v| v.get()),
        shared_mem: a.shared_mem.get(),
        cooperative: a.flags.get() & calls::launch_flags::COOPERATIVE != 0,
        cluster: a.cluster.map(|v| v.get()),
    };
    let c = ex
        .clients
        .get(&r.client)
        .filter(|c| c.greeted)
        .ok_or(CuResult::NOT_INITIALIZED)?;
    let Some(Object::Func {
        raw,
        layout,
        params_len,
        ..
    }) = c.objects.get(a.func.get())
    else {
        return Err(CuResult::INVALID_HANDLE);
    };
    if params.len() != *params_len as usize {
        return Err(CuResult::INVALID_VALUE);
    }
    ex.gpu.launch(*raw, &config, s, params, layout)?;
    r.ok()
}

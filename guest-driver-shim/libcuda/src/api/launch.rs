//! Kernel launches (fire-and-forget, packed in place into the batch: no allocation, no
//! round trip) and occupancy queries.

use std::ffi::{c_int, c_uint, c_void};

use vgpu_protocol::{CuResult, Opcode, calls};

use super::{handle_of, module::as_func, occupancy::occupancy, put, ret};
use crate::{CUresult, driver};

const CU_LAUNCH_PARAM_END: usize = 0;
const CU_LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
const CU_LAUNCH_PARAM_BUFFER_SIZE: usize = 2;
const CU_LAUNCH_ATTRIBUTE_COOPERATIVE: u32 = 2;
const CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION: u32 = 4;

/// The packed parameter buffer given through `extra`, if any.
///
/// # Safety
/// `extra` is NULL or a `CU_LAUNCH_PARAM_END`-terminated key/value list.
unsafe fn extra_buffer<'a>(extra: *mut *mut c_void) -> Result<Option<&'a [u8]>, CuResult> {
    if extra.is_null() {
        return Ok(None);
    }
    let (mut ptr, mut size) = (std::ptr::null::<u8>(), None);
    let mut i = 0;
    loop {
        // SAFETY: the list is terminated by CU_LAUNCH_PARAM_END (caller's contract).
        let key = unsafe { *extra.add(i) } as usize;
        match key {
            CU_LAUNCH_PARAM_END => break,
            // SAFETY: each key is followed by its value in the list.
            CU_LAUNCH_PARAM_BUFFER_POINTER => ptr = unsafe { *extra.add(i + 1) }.cast(),
            // SAFETY: the value of BUFFER_SIZE points at a size_t.
            CU_LAUNCH_PARAM_BUFFER_SIZE => {
                // SAFETY: the value of BUFFER_SIZE points at a size_t.
                size = Some(unsafe { *(*extra.add(i + 1)).cast::<usize>() })
            }
            _ => return Err(CuResult::INVALID_VALUE),
        }
        i += 2;
    }
    match (ptr.is_null(), size) {
        // SAFETY: the application's packed buffer of `n` bytes.
        (false, Some(n)) => Ok(Some(unsafe { std::slice::from_raw_parts(ptr, n) })),
        _ => Err(CuResult::INVALID_VALUE),
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn launch(
    f: *mut c_void,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem: c_uint,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    flags: u32,
    cluster: [u32; 3],
) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let ctx = driver::current_handle()?;
    let func = as_func(f)?;
    func.check_dynamic_smem(shared_mem)?;
    // SAFETY: `extra` follows the driver API's contract.
    let packed = unsafe { extra_buffer(extra)? };
    if packed.is_none() && params.is_null() && !func.params.is_empty() {
        return Err(CuResult::INVALID_VALUE);
    }
    let len = func.params_len as usize;
    if let Some(p) = packed
        && p.len() < len
    {
        return Err(CuResult::INVALID_VALUE);
    }
    if crate::tracing() {
        let mut bytes = vec![0u8; len];
        if let Some(p) = packed {
            bytes.copy_from_slice(&p[..len]);
        } else {
            for (i, &(off, size)) in func.params.iter().enumerate() {
                // SAFETY: as in the packing below.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (*params.add(i)).cast::<u8>(),
                        bytes[off as usize..].as_mut_ptr(),
                        size as usize,
                    )
                };
            }
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        crate::log_error(&format!(
            "trace: launch {:?} grid={grid:?} block={block:?} smem={shared_mem} stream={:?} layout={:?} params={hex}",
            func.name, stream, func.params
        ));
    }
    let body = calls::LaunchKernel {
        func: func.handle.into(),
        stream: handle_of(stream).into(),
        ctx: ctx.into(),
        grid: grid.map(Into::into),
        block: block.map(Into::into),
        shared_mem: shared_mem.into(),
        params_len: func.params_len.into(),
        flags: flags.into(),
        _pad: 0.into(),
        cluster: cluster.map(Into::into),
        _pad2: 0.into(),
    };
    d.conn.call_async(
        Opcode::LaunchKernel,
        0,
        &body,
        len,
        |out| match packed {
            Some(p) => out.copy_from_slice(&p[..len]),
            None => {
                for (i, &(off, size)) in func.params.iter().enumerate() {
                    let (off, size) = (off as usize, size as usize);
                    // SAFETY: `params[i]` points at the i-th argument of `size` bytes (the
                    // kernel's own layout, as the driver would read it).
                    unsafe {
                        let src = (*params.add(i)).cast::<u8>();
                        std::ptr::copy_nonoverlapping(src, out[off..off + size].as_mut_ptr(), size);
                    }
                }
            }
        },
        None,
        None,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: *mut c_void,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared_mem: c_uint,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    // SAFETY: arguments follow the driver API's contract.
    ret(unsafe {
        launch(
            f,
            [gx, gy, gz],
            [bx, by, bz],
            shared_mem,
            stream,
            params,
            extra,
            0,
            [0; 3],
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    f: *mut c_void,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared_mem: c_uint,
    stream: *mut c_void,
    params: *mut *mut c_void,
) -> CUresult {
    let coop = calls::launch_flags::COOPERATIVE;
    // SAFETY: arguments follow the driver API's contract.
    ret(unsafe {
        launch(
            f,
            [gx, gy, gz],
            [bx, by, bz],
            shared_mem,
            stream,
            params,
            std::ptr::null_mut(),
            coop,
            [0; 3],
        )
    })
}

/// `CUlaunchConfig` of `cuda.h`.
#[repr(C)]
pub struct CUlaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem: c_uint,
    stream: *mut c_void,
    attrs: *const CUlaunchAttribute,
    num_attrs: c_uint,
}

/// `CUlaunchAttribute`: an id and a 64-byte value union.
#[repr(C)]
pub struct CUlaunchAttribute {
    id: u32,
    _pad: [u8; 4],
    value: [u8; 64],
}

/// Launch flags and cluster dimensions from a config's attributes. Attributes that change how
/// a kernel runs but not what it computes (priority, access policy windows) are dropped.
///
/// # Safety
/// `c.attrs` holds `c.num_attrs` entries.
unsafe fn launch_attributes(c: &CUlaunchConfig) -> (u32, [u32; 3]) {
    let mut flags = 0;
    let mut cluster = [0u32; 3];
    for i in 0..c.num_attrs as usize {
        // SAFETY: `attrs` holds `num_attrs` entries (caller's contract).
        let a = unsafe { &*c.attrs.add(i) };
        let word = |k: usize| {
            u32::from_ne_bytes([
                a.value[4 * k],
                a.value[4 * k + 1],
                a.value[4 * k + 2],
                a.value[4 * k + 3],
            ])
        };
        match a.id {
            CU_LAUNCH_ATTRIBUTE_COOPERATIVE if word(0) != 0 => {
                flags |= calls::launch_flags::COOPERATIVE
            }
            CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION => cluster = [word(0), word(1), word(2)],
            _ => {}
        }
    }
    (flags, cluster)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuOccupancyMaxActiveClusters(
    n: *mut c_int,
    f: *mut c_void,
    config: *const CUlaunchConfig,
) -> CUresult {
    ret((|| {
        let d = driver::driver()?;
        let func = as_func(f)?;
        if config.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        // SAFETY: non-NULL config from the caller, with `num_attrs` attributes.
        let c = unsafe { &*config };
        // SAFETY: as above.
        let (_, cluster) = unsafe { launch_attributes(c) };
        let body = calls::OccupancyClusters {
            func: func.handle.into(),
            grid: c.grid.map(Into::into),
            block: c.block.map(Into::into),
            cluster: cluster.map(Into::into),
            shared_mem: c.shared_mem.into(),
        };
        let v = occupancy(d, Opcode::OccupancyMaxActiveClusters, &body)?;
        // SAFETY: out-pointer from the caller.
        unsafe { put(n, v) }
    })())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const CUlaunchConfig,
    f: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    if config.is_null() {
        return CuResult::INVALID_VALUE.0;
    }
    // SAFETY: non-NULL config from the caller.
    let c = unsafe { &*config };
    // SAFETY: non-NULL config from the caller.
    let (flags, cluster) = unsafe { launch_attributes(c) };
    // SAFETY: arguments follow the driver API's contract.
    ret(unsafe {
        launch(
            f,
            c.grid,
            c.block,
            c.shared_mem,
            c.stream,
            params,
            extra,
            flags,
            cluster,
        )
    })
}

fn max_active_blocks(
    f: *mut c_void,
    block_size: c_int,
    smem: usize,
    flags: c_uint,
) -> Result<i32, CuResult> {
    let d = driver::driver()?;
    let func = as_func(f)?;
    let body = calls::Occupancy {
        func: func.handle.into(),
        block_size: block_size.into(),
        flags: flags.into(),
        dynamic_smem: (smem as u64).into(),
    };
    occupancy(d, Opcode::OccupancyMaxActiveBlocks, &body)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    n: *mut c_int,
    f: *mut c_void,
    block_size: c_int,
    smem: usize,
) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(max_active_blocks(f, block_size, smem, 0).and_then(|v| unsafe { put(n, v) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    n: *mut c_int,
    f: *mut c_void,
    block_size: c_int,
    smem: usize,
    flags: c_uint,
) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(max_active_blocks(f, block_size, smem, flags).and_then(|v| unsafe { put(n, v) }))
}

type SmemFn = Option<unsafe extern "C" fn(c_int) -> usize>;

/// The driver's search, done in the guest: the block size (a multiple of the warp size up to
/// the limit) that keeps the most threads resident, with the dynamic shared memory the
/// callback asks for at each size.
fn potential_block_size(
    grid: *mut c_int,
    block: *mut c_int,
    f: *mut c_void,
    smem_fn: SmemFn,
    smem: usize,
    limit: c_int,
    flags: c_uint,
) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let max_threads = super::device::attribute(d, 1)?;
    let sms = super::device::attribute(d, 16)?;
    let warp = super::device::attribute(d, 10)?.max(1);
    let limit = if limit > 0 {
        limit.min(max_threads)
    } else {
        max_threads
    };
    let (mut best_threads, mut best_block, mut best_blocks) = (0, 0, 0);
    let mut size = limit - limit % warp;
    while size > 0 {
        // SAFETY: the application's callback, as the driver would call it.
        let dyn_smem = smem_fn.map_or(smem, |cb| unsafe { cb(size) });
        let blocks = max_active_blocks(f, size, dyn_smem, flags)?;
        if blocks * size > best_threads {
            (best_threads, best_block, best_blocks) = (blocks * size, size, blocks);
        }
        size -= warp;
    }
    // SAFETY: out-pointers from the caller.
    unsafe {
        put(grid, best_blocks * sms)?;
        put(block, best_block)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuOccupancyMaxPotentialBlockSize(
    grid: *mut c_int,
    block: *mut c_int,
    f: *mut c_void,
    smem_fn: SmemFn,
    smem: usize,
    limit: c_int,
) -> CUresult {
    ret(potential_block_size(
        grid, block, f, smem_fn, smem, limit, 0,
    ))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuOccupancyMaxPotentialBlockSizeWithFlags(
    grid: *mut c_int,
    block: *mut c_int,
    f: *mut c_void,
    smem_fn: SmemFn,
    smem: usize,
    limit: c_int,
    flags: c_uint,
) -> CUresult {
    ret(potential_block_size(
        grid, block, f, smem_fn, smem, limit, flags,
    ))
}

/// Dynamic shared memory a block can still get when `num_blocks` blocks of `block_size`
/// threads share an SM: the SM's shared memory split between the blocks, less what each
/// block reserves and the kernel's static shared memory, capped at the opt-in maximum.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuOccupancyAvailableDynamicSMemPerBlock(
    out: *mut usize,
    f: *mut c_void,
    num_blocks: c_int,
    block_size: c_int,
) -> CUresult {
    ret((|| {
        let d = driver::driver()?;
        if num_blocks <= 0 || block_size <= 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        let func = as_func(f)?;
        const SHARED_SIZE_BYTES: i32 = 1;
        let body = calls::FuncAttribute {
            func: func.handle.into(),
            attribute: SHARED_SIZE_BYTES.into(),
            value: 0.into(),
        };
        let static_smem = d
            .conn
            .call(Opcode::FuncGetAttribute, &body, &[], None, None)?
            .parse::<calls::I32Reply>()?
            .value
            .get();
        // The function's own cap (48 KiB unless it opted in to more).
        let body = calls::FuncAttribute {
            func: func.handle.into(),
            attribute: 8.into(), // MAX_DYNAMIC_SHARED_SIZE_BYTES
            value: 0.into(),
        };
        let func_cap = d
            .conn
            .call(Opcode::FuncGetAttribute, &body, &[], None, None)?
            .parse::<calls::I32Reply>()?
            .value
            .get()
            .max(0) as usize;
        let attr = |a| super::device::attribute(d, a).map(|v| v.max(0) as usize);
        let per_sm = attr(81)?; // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        let optin = attr(97)?; // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        let reserved = attr(111)?; // RESERVED_SHARED_MEMORY_PER_BLOCK
        let per_block = (per_sm / num_blocks as usize)
            .saturating_sub(reserved)
            .min(optin);
        let available = per_block
            .saturating_sub(static_smem.max(0) as usize)
            .min(func_cap);
        // SAFETY: out-pointer from the caller.
        unsafe { put(out, available) }
    })())
}

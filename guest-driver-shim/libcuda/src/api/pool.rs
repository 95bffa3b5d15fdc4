//! Stream-ordered allocation (`cuMemAllocAsync`, `cudaMallocAsync`) on ordinary allocations.
//!
//! An allocation is made at once (it is then valid earlier than the stream needs it, which the
//! API allows) and charged to the slice like any other. A free waits for the work queued on its
//! stream, then keeps the block in its pool for reuse by an allocation of the same size while
//! the pool holds no more than its release threshold (as the driver's pools do; the kept
//! memory stays charged to the slice, as it stays in use on a real GPU). The
//! pools (the device's default one and those `cuMemPoolCreate` makes) are guest-side objects:
//! attributes read back what was set, and the usage attributes count the pool's live
//! allocations. Sharing pools between processes (export/import) is not supported
//! (`CUDA_ERROR_NOT_SUPPORTED`).

use std::{
    collections::HashMap,
    ffi::{c_int, c_void},
    sync::{Mutex, PoisonError},
};

use vgpu_protocol::CuResult;

use super::{memory::CUstream, put, ret};
use crate::{CUdevice, CUdeviceptr, CUresult, driver};

pub type CUmemoryPool = *mut c_void;

/// The handle of device 0's default pool (one device per vGPU).
const DEFAULT_POOL: usize = 0x5047_5600;

const ATTR_RELEASE_THRESHOLD: c_int = 4;
const ATTR_RESERVED_MEM_CURRENT: c_int = 5;
const ATTR_RESERVED_MEM_HIGH: c_int = 6;
const ATTR_USED_MEM_CURRENT: c_int = 7;
const ATTR_USED_MEM_HIGH: c_int = 8;

#[derive(Default)]
struct Pool {
    live: HashMap<CUdeviceptr, u64>,
    /// Freed blocks kept for reuse, oldest first.
    kept: Vec<(CUdeviceptr, u64)>,
    kept_bytes: u64,
    used: u64,
    high: u64,
    reserved_high: u64,
    release_threshold: u64,
    /// Attributes 1..=3: reuse policies (ints), kept as set.
    reuse: [c_int; 3],
}

#[derive(Default)]
struct Pools {
    by_handle: HashMap<usize, Pool>,
    /// Which pool each stream-ordered allocation came from.
    owner: HashMap<CUdeviceptr, usize>,
    next: usize,
}

static POOLS: Mutex<Option<Pools>> = Mutex::new(None);

fn with_pools<T>(f: impl FnOnce(&mut Pools) -> T) -> T {
    let mut p = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    f(p.get_or_insert_with(|| {
        let mut pools = Pools {
            next: DEFAULT_POOL + 0x10,
            ..Pools::default()
        };
        pools.by_handle.insert(DEFAULT_POOL, new_pool());
        pools
    }))
}

fn new_pool() -> Pool {
    Pool {
        reuse: [1, 1, 1],
        ..Pool::default()
    }
}

/// Runs `f` on the pool `pool` names, refusing unknown handles.
fn with_pool<T>(
    pool: CUmemoryPool,
    f: impl FnOnce(&mut Pool) -> Result<T, CuResult>,
) -> Result<T, CuResult> {
    with_pools(|p| {
        p.by_handle
            .get_mut(&(pool as usize))
            .ok_or(CuResult::INVALID_VALUE)
            .and_then(f)
    })
}

fn check_pool(pool: CUmemoryPool) -> Result<(), CuResult> {
    with_pool(pool, |_| Ok(()))
}

fn alloc_async(dptr: *mut CUdeviceptr, size: usize, pool: usize) -> Result<(), CuResult> {
    if dptr.is_null() || size == 0 {
        return Err(CuResult::INVALID_VALUE);
    }
    let size64 = size as u64;
    let reused = with_pool(pool as CUmemoryPool, |pl| {
        Ok(pl.kept.iter().position(|&(_, s)| s == size64).map(|i| {
            let (p, s) = pl.kept.remove(i);
            pl.kept_bytes -= s;
            p
        }))
    })?;
    let p = match reused {
        Some(p) => p,
        None => {
            // SAFETY: forwards the caller's out-pointer, checked above.
            let r = unsafe { super::memory::cuMemAlloc_v2(dptr, size) };
            if r != 0 {
                return Err(CuResult(r));
            }
            // SAFETY: cuMemAlloc_v2 succeeded, so `dptr` is a valid pointer it wrote.
            unsafe { dptr.read() }
        }
    };
    with_pools(|pools| {
        if let Some(pl) = pools.by_handle.get_mut(&pool) {
            pl.live.insert(p, size64);
            pl.used += size64;
            pl.high = pl.high.max(pl.used);
            pl.reserved_high = pl.reserved_high.max(pl.used + pl.kept_bytes);
            pools.owner.insert(p, pool);
        }
    });
    // SAFETY: checked non-NULL out-pointer.
    unsafe { put(dptr, p) }
}

/// Gives kept blocks back until the pool keeps at most `keep` bytes beyond what is in use.
fn release_kept(pl: &mut Pool, keep: u64) -> Result<(), CuResult> {
    while pl.kept_bytes > keep {
        let (p, s) = pl.kept.remove(0);
        pl.kept_bytes -= s;
        // SAFETY: plain call with a value argument.
        let r = unsafe { super::memory::cuMemFree_v2(p) };
        if r != 0 {
            return Err(CuResult(r));
        }
    }
    Ok(())
}

fn free_async(dptr: CUdeviceptr, stream: CUstream) -> Result<(), CuResult> {
    driver::driver()?;
    // Work already queued on the stream may still use the memory.
    // SAFETY: same contract as the public entry point.
    let r = unsafe { super::stream::cuStreamSynchronize(stream) };
    if r != 0 {
        return Err(CuResult(r));
    }
    let kept = with_pools(|pools| {
        let owner = pools.owner.remove(&dptr)?;
        let pl = pools.by_handle.get_mut(&owner)?;
        let size = pl.live.remove(&dptr)?;
        pl.used -= size;
        pl.kept.push((dptr, size));
        pl.kept_bytes += size;
        let keep = pl.release_threshold.saturating_sub(pl.used);
        Some(release_kept(pl, keep))
    });
    match kept {
        Some(r) => r,
        // Not from a pool (or from a destroyed one): an ordinary free.
        None => {
            // SAFETY: plain call with a value argument.
            let r = unsafe { super::memory::cuMemFree_v2(dptr) };
            if r == 0 { Ok(()) } else { Err(CuResult(r)) }
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    _stream: CUstream,
) -> CUresult {
    ret(alloc_async(dptr, size, DEFAULT_POOL))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    _stream: CUstream,
) -> CUresult {
    ret(alloc_async(dptr, size, pool as usize))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    ret(free_async(dptr, stream))
}

fn device_pool(out: *mut CUmemoryPool, dev: CUdevice) -> Result<(), CuResult> {
    driver::driver()?;
    if dev != 0 {
        return Err(CuResult::INVALID_DEVICE);
    }
    // SAFETY: out-pointer from the caller.
    unsafe { put(out, DEFAULT_POOL as CUmemoryPool) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(
    out: *mut CUmemoryPool,
    dev: CUdevice,
) -> CUresult {
    ret(device_pool(out, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetMemPool(out: *mut CUmemoryPool, dev: CUdevice) -> CUresult {
    ret(device_pool(out, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceSetMemPool(dev: CUdevice, pool: CUmemoryPool) -> CUresult {
    ret(check_pool(pool).and((dev == 0).then_some(()).ok_or(CuResult::INVALID_DEVICE)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolSetAttribute(
    pool: CUmemoryPool,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    ret((|| {
        if value.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        with_pool(pool, |p| match attr {
            1..=3 => {
                // SAFETY: int attributes point at an int.
                p.reuse[(attr - 1) as usize] = unsafe { value.cast::<c_int>().read_unaligned() };
                Ok(())
            }
            ATTR_RELEASE_THRESHOLD => {
                // SAFETY: 64-bit attributes point at a cuuint64_t.
                p.release_threshold = unsafe { value.cast::<u64>().read_unaligned() };
                Ok(())
            }
            // Only resetting the high-water marks (to 0) is allowed.
            ATTR_RESERVED_MEM_HIGH | ATTR_USED_MEM_HIGH => {
                p.high = p.used;
                p.reserved_high = p.used + p.kept_bytes;
                Ok(())
            }
            _ => Err(CuResult::INVALID_VALUE),
        })
    })())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolGetAttribute(
    pool: CUmemoryPool,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    ret((|| {
        if value.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        with_pool(pool, |p| {
            let v64 = match attr {
                1..=3 => {
                    // SAFETY: int attributes point at an int.
                    unsafe {
                        value
                            .cast::<c_int>()
                            .write_unaligned(p.reuse[(attr - 1) as usize])
                    };
                    return Ok(());
                }
                ATTR_RELEASE_THRESHOLD => p.release_threshold,
                ATTR_RESERVED_MEM_CURRENT => p.used + p.kept_bytes,
                ATTR_RESERVED_MEM_HIGH => p.reserved_high,
                ATTR_USED_MEM_CURRENT => p.used,
                ATTR_USED_MEM_HIGH => p.high,
                _ => return Err(CuResult::INVALID_VALUE),
            };
            // SAFETY: 64-bit attributes point at a cuuint64_t.
            unsafe { value.cast::<u64>().write_unaligned(v64) };
            Ok(())
        })
    })())
}

/// Gives back kept blocks until the pool reserves at most `min_bytes` (in use plus kept).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: CUmemoryPool, min_bytes: usize) -> CUresult {
    ret(with_pool(pool, |pl| {
        let keep = (min_bytes as u64).saturating_sub(pl.used);
        release_kept(pl, keep)
    }))
}

/// A new pool on the device (`props` describes pinned device memory of device 0; other
/// kinds would need the host's virtual memory management, which the vGPU does not offer).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolCreate(out: *mut CUmemoryPool, props: *const c_void) -> CUresult {
    ret((|| {
        driver::driver()?;
        if out.is_null() || props.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        let h = with_pools(|p| {
            let h = p.next;
            p.next += 0x10;
            p.by_handle.insert(h, new_pool());
            h
        });
        // SAFETY: non-NULL out-pointer from the caller.
        unsafe { put(out, h as CUmemoryPool) }
    })())
}

/// Destroys a pool; memory still allocated from it stays valid until freed, as with the
/// driver's pools.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolDestroy(pool: CUmemoryPool) -> CUresult {
    ret(with_pools(|p| {
        if pool as usize == DEFAULT_POOL {
            return Err(CuResult::INVALID_VALUE);
        }
        let mut gone = p
            .by_handle
            .remove(&(pool as usize))
            .ok_or(CuResult::INVALID_VALUE)?;
        release_kept(&mut gone, 0)
    }))
}

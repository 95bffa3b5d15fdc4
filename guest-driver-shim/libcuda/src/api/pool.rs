//! Stream-ordered allocation (`cuMemAllocAsync`, `cudaMallocAsync`) on ordinary allocations.
//!
//! An allocation is made at once (it is then valid earlier than the stream needs it, which the
//! API allows) and charged to the slice like any other. A free waits for the work queued on its
//! stream before the memory goes back, so no kernel still running can see it reused. The
//! device's pool is one guest-side object: attributes read back what was set, and the usage
//! attributes count the live stream-ordered allocations. Created and imported pools are not
//! supported yet (`CUDA_ERROR_NOT_SUPPORTED`).

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
    used: u64,
    high: u64,
    release_threshold: u64,
    /// Attributes 1..=3: reuse policies (ints), kept as set.
    reuse: [c_int; 3],
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn with_pool<T>(f: impl FnOnce(&mut Pool) -> T) -> T {
    let mut p = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    f(p.get_or_insert_with(|| Pool {
        reuse: [1, 1, 1],
        ..Pool::default()
    }))
}

fn check_pool(pool: CUmemoryPool) -> Result<(), CuResult> {
    if pool as usize == DEFAULT_POOL {
        Ok(())
    } else {
        Err(CuResult::INVALID_VALUE)
    }
}

fn alloc_async(dptr: *mut CUdeviceptr, size: usize) -> Result<(), CuResult> {
    // SAFETY: forwards the caller's out-pointer, checked there.
    let r = unsafe { super::memory::cuMemAlloc_v2(dptr, size) };
    if r != 0 {
        return Err(CuResult(r));
    }
    // SAFETY: cuMemAlloc_v2 succeeded, so `dptr` is a valid pointer it wrote.
    let p = unsafe { dptr.read() };
    with_pool(|pool| {
        pool.live.insert(p, size as u64);
        pool.used += size as u64;
        pool.high = pool.high.max(pool.used);
    });
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
    // SAFETY: plain call with a value argument.
    let r = unsafe { super::memory::cuMemFree_v2(dptr) };
    if r != 0 {
        return Err(CuResult(r));
    }
    with_pool(|pool| {
        if let Some(size) = pool.live.remove(&dptr) {
            pool.used -= size;
        }
    });
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    _stream: CUstream,
) -> CUresult {
    ret(alloc_async(dptr, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    _stream: CUstream,
) -> CUresult {
    ret(alloc_async(dptr, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    _stream: CUstream,
) -> CUresult {
    ret(check_pool(pool).and_then(|()| alloc_async(dptr, size)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    _stream: CUstream,
) -> CUresult {
    ret(check_pool(pool).and_then(|()| alloc_async(dptr, size)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    ret(free_async(dptr, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
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
    ret(check_pool(pool).and_then(|()| {
        if value.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        with_pool(|p| match attr {
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
                Ok(())
            }
            _ => Err(CuResult::INVALID_VALUE),
        })
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolGetAttribute(
    pool: CUmemoryPool,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    ret(check_pool(pool).and_then(|()| {
        if value.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        with_pool(|p| {
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
                ATTR_RESERVED_MEM_CURRENT | ATTR_USED_MEM_CURRENT => p.used,
                ATTR_RESERVED_MEM_HIGH | ATTR_USED_MEM_HIGH => p.high,
                _ => return Err(CuResult::INVALID_VALUE),
            };
            // SAFETY: 64-bit attributes point at a cuuint64_t.
            unsafe { value.cast::<u64>().write_unaligned(v64) };
            Ok(())
        })
    }))
}

/// Freed memory goes back at once, so there is never anything to trim.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: CUmemoryPool, _min_bytes: usize) -> CUresult {
    ret(check_pool(pool))
}

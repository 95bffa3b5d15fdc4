//! Initialisation, versions and device queries (answered from facts fetched at init).

use std::ffi::{c_char, c_int, c_uint};

use vgpu_protocol::CuResult;

use super::{put, ret};
use crate::{CUdevice, CUresult, driver};

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    if flags != 0 {
        return CuResult::INVALID_VALUE.0;
    }
    ret(driver::init().map(|_| ()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    // The version is answerable before cuInit, as with NVIDIA's driver.
    let v = driver::driver().map_or(13000, |d| d.driver_version);
    // SAFETY: out-pointer from the caller.
    ret(unsafe { put(version, v) })
}

fn check_device(dev: CUdevice) -> Result<&'static driver::Driver, CuResult> {
    let d = driver::driver()?;
    if dev != 0 {
        Err(CuResult::INVALID_DEVICE)
    } else {
        Ok(d)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(driver::driver().and_then(|_| unsafe { put(count, 1) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    ret(driver::driver().and_then(|_| {
        if ordinal != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
        // SAFETY: out-pointer from the caller.
        unsafe { put(device, 0) }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    ret(check_device(dev).and_then(|d| {
        if name.is_null() || len <= 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        let bytes = d.device.name.as_bytes();
        let n = bytes.len().min(len as usize - 1);
        // SAFETY: `name` has room for `len` bytes (caller's contract); we write n+1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name.cast::<u8>(), n);
            *name.add(n) = 0;
        }
        Ok(())
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(check_device(dev).and_then(|d| unsafe { put(bytes, d.device.total_mem as usize) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(check_device(dev)
        .and_then(|d| unsafe { put(bytes, d.device.total_mem.min(u64::from(u32::MAX)) as u32) }))
}

/// The attribute table, as the application should see it.
pub(crate) fn attribute(d: &driver::Driver, attrib: c_int) -> Result<i32, CuResult> {
    usize::try_from(attrib)
        .ok()
        .filter(|&a| a > 0)
        .and_then(|a| d.device.attributes.get(a).copied())
        .ok_or(CuResult::INVALID_VALUE)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(check_device(dev).and_then(|d| unsafe { put(pi, attribute(d, attrib)?) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceComputeCapability(
    major: *mut c_int,
    minor: *mut c_int,
    dev: CUdevice,
) -> CUresult {
    ret(check_device(dev).and_then(|d| {
        // SAFETY: out-pointers from the caller.
        unsafe {
            put(major, attribute(d, 75)?)?;
            put(minor, attribute(d, 76)?)
        }
    }))
}

#[repr(C)]
pub struct CUuuid {
    bytes: [u8; 16],
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut CUuuid, dev: CUdevice) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(check_device(dev).and_then(|d| unsafe {
        put(
            uuid,
            CUuuid {
                bytes: d.device.uuid,
            },
        )
    }))
}

fn pci_bus_id(d: &driver::Driver) -> Result<String, CuResult> {
    Ok(format!(
        "{:08X}:{:02X}:{:02X}.0",
        attribute(d, 50)?,
        attribute(d, 33)?,
        attribute(d, 34)?
    ))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(
    out: *mut c_char,
    len: c_int,
    dev: CUdevice,
) -> CUresult {
    ret(check_device(dev).and_then(|d| {
        let id = pci_bus_id(d)?;
        if out.is_null() || len <= 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        let n = id.len().min(len as usize - 1);
        // SAFETY: `out` has room for `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(id.as_ptr(), out.cast::<u8>(), n);
            *out.add(n) = 0;
        }
        Ok(())
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetByPCIBusId(dev: *mut CUdevice, id: *const c_char) -> CUresult {
    ret(driver::driver().and_then(|d| {
        // SAFETY: NUL-terminated string from the caller.
        let id = unsafe { crate::cstr(id) }
            .ok_or(CuResult::INVALID_VALUE)?
            .to_string_lossy()
            .to_ascii_uppercase();
        let ours = pci_bus_id(d)?;
        // Accept the short form ("19:00.0") as well as the full one.
        if ours.ends_with(id.trim_start_matches('0')) || ours == id {
            // SAFETY: out-pointer from the caller.
            unsafe { put(dev, 0) }
        } else {
            Err(CuResult::INVALID_DEVICE)
        }
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceCanAccessPeer(
    can: *mut c_int,
    dev: CUdevice,
    peer: CUdevice,
) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(check_device(dev)
        .and_then(|_| check_device(peer))
        .and_then(|_| unsafe { put(can, 0) }))
}

#[repr(C)]
pub struct CUdevprop {
    max_threads_per_block: c_int,
    max_threads_dim: [c_int; 3],
    max_grid_size: [c_int; 3],
    shared_mem_per_block: c_int,
    total_constant_memory: c_int,
    simd_width: c_int,
    mem_pitch: c_int,
    regs_per_block: c_int,
    clock_rate: c_int,
    texture_align: c_int,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetProperties(prop: *mut CUdevprop, dev: CUdevice) -> CUresult {
    ret(check_device(dev).and_then(|d| {
        let a = |i| attribute(d, i);
        let p = CUdevprop {
            max_threads_per_block: a(1)?,
            max_threads_dim: [a(2)?, a(3)?, a(4)?],
            max_grid_size: [a(5)?, a(6)?, a(7)?],
            shared_mem_per_block: a(8)?,
            total_constant_memory: a(9)?,
            simd_width: a(10)?,
            mem_pitch: a(11)?,
            regs_per_block: a(12)?,
            clock_rate: a(13)?,
            texture_align: a(14)?,
        };
        // SAFETY: out-pointer from the caller.
        unsafe { put(prop, p) }
    }))
}

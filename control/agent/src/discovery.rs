//! GPU discovery: simulated GPUs for CI, or the CUDA driver loaded at run time.

use std::ffi::CStr;

use cudarc::driver::sys;

use vgpu_pool_wire::GpuInfo;

/// SMs of the simulated H200-like GPU.
pub const SIM_SM_COUNT: u32 = 132;
/// Memory of the simulated H200-like GPU (141 GiB).
pub const SIM_MEMORY_BYTES: u64 = 141 * (1 << 30);

/// Errors from GPU discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "No CUDA driver (libcuda.so) found on this host; pass --sim-gpus N to run with simulated GPUs (CI/testing only)"
    )]
    NoDriver,
    #[error("CUDA driver call {call} failed: {code:?}")]
    Cuda {
        call: &'static str,
        code: sys::CUresult,
    },
    #[error(
        "The CUDA driver reports no GPUs on this host; pass --sim-gpus N to run with simulated GPUs"
    )]
    NoGpus,
}

/// `n` simulated H200-like GPUs. Their names say SIM so nobody mistakes them for the product.
pub fn sim_gpus(host: &str, n: u32) -> Vec<GpuInfo> {
    (0..n)
        .map(|i| GpuInfo {
            uuid: format!("SIM-GPU-{host}-{i}"),
            index: i,
            model: "SIM H200 (simulated, not a real GPU)".to_string(),
            pci_bus_id: format!("SIM:{i:02x}:00.0"),
            numa_node: Some((i / 4) as i32),
            sm_count: SIM_SM_COUNT,
            memory_bytes: SIM_MEMORY_BYTES,
            sim: true,
        })
        .collect()
}

/// True when a CUDA driver library can be loaded.
pub fn cuda_driver_present() -> bool {
    // SAFETY: is_culib_present only tries to dlopen the driver library by name and drops it.
    unsafe { sys::is_culib_present() }
}

fn check(call: &'static str, code: sys::CUresult) -> Result<(), DiscoveryError> {
    if code == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(DiscoveryError::Cuda { call, code })
    }
}

fn uuid_string(bytes: &[std::ffi::c_char; 16]) -> String {
    let b: Vec<u8> = bytes.iter().map(|&c| c as u8).collect();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn numa_node_of(pci_bus_id: &str) -> Option<i32> {
    let path = format!(
        "/sys/bus/pci/devices/{}/numa_node",
        pci_bus_id.to_lowercase()
    );
    let v: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (v >= 0).then_some(v)
}

/// Enumerate the host's GPUs through the CUDA driver API (no context is created).
pub fn cuda_gpus() -> Result<Vec<GpuInfo>, DiscoveryError> {
    if !cuda_driver_present() {
        return Err(DiscoveryError::NoDriver);
    }
    // SAFETY: the driver library is present (checked above); cuInit takes no pointers.
    check("cuInit", unsafe { sys::cuInit(0) })?;
    let mut count: std::ffi::c_int = 0;
    // SAFETY: `count` is a valid, writable c_int for the duration of the call.
    check("cuDeviceGetCount", unsafe {
        sys::cuDeviceGetCount(&raw mut count)
    })?;
    if count <= 0 {
        return Err(DiscoveryError::NoGpus);
    }
    let mut out = Vec::new();
    for ordinal in 0..count {
        let mut dev: sys::CUdevice = 0;
        // SAFETY: `dev` is a valid out-pointer; ordinal < count.
        check("cuDeviceGet", unsafe {
            sys::cuDeviceGet(&raw mut dev, ordinal)
        })?;
        let mut name = [0 as std::ffi::c_char; 256];
        // SAFETY: the buffer is 256 bytes long and we pass that length; the driver NUL-terminates.
        check("cuDeviceGetName", unsafe {
            sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as std::ffi::c_int, dev)
        })?;
        let mut pci = [0 as std::ffi::c_char; 64];
        // SAFETY: the buffer is 64 bytes long and we pass that length; the driver NUL-terminates.
        check("cuDeviceGetPCIBusId", unsafe {
            sys::cuDeviceGetPCIBusId(pci.as_mut_ptr(), pci.len() as std::ffi::c_int, dev)
        })?;
        let mut mem: usize = 0;
        // SAFETY: `mem` is a valid out-pointer.
        check("cuDeviceTotalMem_v2", unsafe {
            sys::cuDeviceTotalMem_v2(&raw mut mem, dev)
        })?;
        let mut sms: std::ffi::c_int = 0;
        // SAFETY: `sms` is a valid out-pointer; the attribute is a plain integer attribute.
        check("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(
                &raw mut sms,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                dev,
            )
        })?;
        let mut uuid = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: `uuid` is a valid out-pointer to a 16-byte CUuuid.
        check("cuDeviceGetUuid_v2", unsafe {
            sys::cuDeviceGetUuid_v2(&raw mut uuid, dev)
        })?;
        // SAFETY: both buffers were NUL-terminated by the driver (they are zero-initialised
        // and the driver writes at most len-1 characters plus NUL).
        let (name, pci) = unsafe {
            (
                CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                CStr::from_ptr(pci.as_ptr()).to_string_lossy().into_owned(),
            )
        };
        out.push(GpuInfo {
            uuid: uuid_string(&uuid.bytes),
            index: ordinal as u32,
            model: name,
            numa_node: numa_node_of(&pci),
            pci_bus_id: pci,
            sm_count: sms.max(0) as u32,
            memory_bytes: mem as u64,
            sim: false,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_gpus_are_marked_sim() {
        let g = sim_gpus("h1", 3);
        assert_eq!(g.len(), 3);
        assert!(
            g.iter()
                .all(|x| x.sim && x.model.contains("SIM") && x.sm_count == 132)
        );
        assert_eq!(g[2].uuid, "SIM-GPU-h1-2");
        assert_eq!(g[0].memory_bytes, 141 << 30);
    }

    #[test]
    fn uuid_format() {
        let mut b = [0 as std::ffi::c_char; 16];
        b[0] = 0x12;
        b[15] = 0x7f;
        assert_eq!(uuid_string(&b), "GPU-12000000-0000-0000-0000-00000000007f");
    }
}

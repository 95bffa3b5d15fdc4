//! `libcuda.so.1` for guests: NVIDIA's CUDA driver API, carried as messages to the
//! `vhost-gpu` daemon that runs it on the host's GPU.
//!
//! The transport comes from `VGPU_DEVICE`: `vhost-user:PATH` connects this process to the
//! daemon's socket as a virtio-user driver. Every symbol of NVIDIA's library is exported;
//! those not implemented yet return `CUDA_ERROR_NOT_SUPPORTED` and say so once on stderr.

#![allow(non_snake_case, clippy::missing_safety_doc)]

mod api;
mod conn;
mod driver;
pub mod fatbin;
mod procaddr;
pub mod stubs;
mod transport;

use std::{
    collections::HashSet,
    ffi::{CStr, c_char},
    sync::Mutex,
};

// The exported entry points by name at the crate root, where the generated
// `cuGetProcAddress` table (`symbols.rs`) names them.
/// Live modules and functions, and the slots their tables have used (for leak checks).
pub use api::module::registry_sizes;
pub use api::{
    context::{
        cuCtxCreate, cuCtxCreate_v2, cuCtxCreate_v3, cuCtxCreate_v4, cuCtxDestroy, cuCtxDestroy_v2,
        cuCtxGetApiVersion, cuCtxGetCacheConfig, cuCtxGetCurrent, cuCtxGetDevice,
        cuCtxGetDevice_v2, cuCtxGetFlags, cuCtxGetId, cuCtxGetLimit, cuCtxGetSharedMemConfig,
        cuCtxGetStreamPriorityRange, cuCtxPopCurrent, cuCtxPopCurrent_v2, cuCtxPushCurrent,
        cuCtxPushCurrent_v2, cuCtxSetCacheConfig, cuCtxSetCurrent, cuCtxSetFlags, cuCtxSetLimit,
        cuCtxSetSharedMemConfig, cuCtxSynchronize, cuCtxSynchronize_v2, cuDevicePrimaryCtxGetState,
        cuDevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2, cuDevicePrimaryCtxReset,
        cuDevicePrimaryCtxReset_v2, cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxSetFlags,
        cuDevicePrimaryCtxSetFlags_v2,
    },
    device::{
        cuDeviceCanAccessPeer, cuDeviceComputeCapability, cuDeviceGet, cuDeviceGetAttribute,
        cuDeviceGetByPCIBusId, cuDeviceGetCount, cuDeviceGetName, cuDeviceGetPCIBusId,
        cuDeviceGetProperties, cuDeviceGetUuid, cuDeviceGetUuid_v2, cuDeviceTotalMem,
        cuDeviceTotalMem_v2, cuDriverGetVersion, cuInit,
    },
    exports::cuGetExportTable,
    graph::{
        cuGraphDestroy, cuGraphExecDestroy, cuGraphExecUpdate, cuGraphExecUpdate_v2,
        cuGraphInstantiate_v2, cuGraphInstantiateWithFlags, cuGraphLaunch, cuGraphLaunch_ptsz,
        cuStreamBeginCapture, cuStreamBeginCapture_ptsz, cuStreamBeginCapture_v2,
        cuStreamBeginCapture_v2_ptsz, cuStreamEndCapture, cuStreamEndCapture_ptsz,
    },
    launch::{
        cuLaunchCooperativeKernel, cuLaunchCooperativeKernel_ptsz, cuLaunchKernel,
        cuLaunchKernel_ptsz, cuLaunchKernelEx, cuLaunchKernelEx_ptsz,
        cuOccupancyAvailableDynamicSMemPerBlock, cuOccupancyMaxActiveBlocksPerMultiprocessor,
        cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, cuOccupancyMaxActiveClusters,
        cuOccupancyMaxPotentialBlockSize, cuOccupancyMaxPotentialBlockSizeWithFlags,
    },
    memory::{
        cuMemAlloc, cuMemAlloc_v2, cuMemAllocHost, cuMemAllocHost_v2, cuMemAllocPitch_v2,
        cuMemFree, cuMemFree_v2, cuMemFreeHost, cuMemGetAddressRange_v2, cuMemGetInfo_v2,
        cuMemHostAlloc, cuMemHostGetFlags, cuMemHostRegister, cuMemHostRegister_v2,
        cuMemHostUnregister, cuMemcpy, cuMemcpy_ptds, cuMemcpyAsync, cuMemcpyAsync_ptsz,
        cuMemcpyDtoD_v2, cuMemcpyDtoD_v2_ptds, cuMemcpyDtoDAsync_v2, cuMemcpyDtoDAsync_v2_ptsz,
        cuMemcpyDtoH_v2, cuMemcpyDtoH_v2_ptds, cuMemcpyDtoHAsync_v2, cuMemcpyDtoHAsync_v2_ptsz,
        cuMemcpyHtoD_v2, cuMemcpyHtoD_v2_ptds, cuMemcpyHtoDAsync_v2, cuMemcpyHtoDAsync_v2_ptsz,
        cuMemsetD8_v2, cuMemsetD8_v2_ptds, cuMemsetD8Async, cuMemsetD8Async_ptsz, cuMemsetD16_v2,
        cuMemsetD16_v2_ptds, cuMemsetD16Async, cuMemsetD16Async_ptsz, cuMemsetD32_v2,
        cuMemsetD32_v2_ptds, cuMemsetD32Async, cuMemsetD32Async_ptsz,
    },
    misc::{
        cuGetErrorName, cuGetErrorString, cuGetProcAddress, cuGetProcAddress_v2, cuProfilerStart,
        cuProfilerStop,
    },
    module::{
        cuFuncGetAttribute, cuFuncGetModule, cuFuncGetName, cuFuncGetParamInfo, cuFuncSetAttribute,
        cuFuncSetCacheConfig, cuFuncSetSharedMemConfig, cuKernelGetAttribute, cuKernelGetFunction,
        cuKernelGetName, cuKernelGetParamInfo, cuKernelSetAttribute, cuKernelSetCacheConfig,
        cuLibraryEnumerateKernels, cuLibraryGetGlobal, cuLibraryGetKernel, cuLibraryGetKernelCount,
        cuLibraryGetModule, cuLibraryLoadData, cuLibraryLoadFromFile, cuLibraryUnload,
        cuModuleEnumerateFunctions, cuModuleGetFunction, cuModuleGetFunctionCount,
        cuModuleGetGlobal_v2, cuModuleLoad, cuModuleLoadData, cuModuleLoadDataEx,
        cuModuleLoadFatBinary, cuModuleUnload,
    },
    pool::{
        cuDeviceGetDefaultMemPool, cuDeviceGetMemPool, cuDeviceSetMemPool, cuMemAllocAsync,
        cuMemAllocAsync_ptsz, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz,
        cuMemFreeAsync, cuMemFreeAsync_ptsz, cuMemPoolCreate, cuMemPoolDestroy,
        cuMemPoolGetAttribute, cuMemPoolSetAttribute, cuMemPoolTrimTo,
    },
    runtime::{
        cuLaunchHostFunc, cuLaunchHostFunc_ptsz, cuModuleGetLoadingMode, cuPointerGetAttribute,
        cuPointerGetAttributes, cuStreamAddCallback, cuStreamAddCallback_ptsz,
        cuStreamGetCaptureInfo_v2, cuStreamGetCaptureInfo_v2_ptsz, cuStreamGetCaptureInfo_v3,
        cuStreamGetCaptureInfo_v3_ptsz, cuStreamGetCtx_ptsz, cuStreamGetCtx_v2,
        cuStreamGetCtx_v2_ptsz, cuStreamGetFlags_ptsz, cuStreamGetId, cuStreamGetId_ptsz,
        cuStreamGetPriority_ptsz, cuStreamIsCapturing, cuStreamIsCapturing_ptsz,
        cuThreadExchangeStreamCaptureMode,
    },
    stream::{
        cuEventCreate, cuEventDestroy, cuEventDestroy_v2, cuEventElapsedTime,
        cuEventElapsedTime_v2, cuEventQuery, cuEventRecord, cuEventRecord_ptsz,
        cuEventRecordWithFlags, cuEventRecordWithFlags_ptsz, cuEventSynchronize, cuStreamCreate,
        cuStreamCreateWithPriority, cuStreamDestroy, cuStreamDestroy_v2, cuStreamGetCtx,
        cuStreamGetFlags, cuStreamGetPriority, cuStreamQuery, cuStreamQuery_ptsz,
        cuStreamSynchronize, cuStreamSynchronize_ptsz, cuStreamWaitEvent, cuStreamWaitEvent_ptsz,
    },
};
pub use driver::driver;
pub use stubs::*;

/// `CUresult` as the C ABI carries it.
pub type CUresult = u32;
pub type CUdevice = i32;
pub type CUdeviceptr = u64;
pub type CUcontext = *mut std::ffi::c_void;

/// Writes a diagnostic to stderr (the shim has no other channel in a guest).
pub(crate) fn log_error(msg: &str) {
    eprintln!("vgpu libcuda: {msg}");
}

/// `VGPU_TRACE=1`: one stderr line per call sent to the host (debugging aid).
pub(crate) fn tracing() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("VGPU_TRACE").is_some())
}

pub(crate) fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("VGPU_DEBUG").is_some())
}

/// Called by every exported entry point that is not implemented: logs the name once.
pub(crate) fn unsupported(name: &CStr) -> CUresult {
    static SEEN: Mutex<Option<HashSet<usize>>> = Mutex::new(None);
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen
        .get_or_insert_with(HashSet::new)
        .insert(name.as_ptr() as usize)
    {
        log_error(&format!(
            "{} is not supported by the vGPU yet (CUDA_ERROR_NOT_SUPPORTED)",
            name.to_string_lossy()
        ));
    }
    vgpu_protocol::CuResult::NOT_SUPPORTED.0
}

/// Reads a C string argument; `None` for NULL.
pub(crate) unsafe fn cstr<'a>(p: *const c_char) -> Option<&'a CStr> {
    // SAFETY: the caller passes NULL or a NUL-terminated string, as the CUDA API requires.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) })
}

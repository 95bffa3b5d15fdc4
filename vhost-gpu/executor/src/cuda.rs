//! The real backend: NVIDIA's driver API, loaded at run time through cudarc.
//!
//! Enum-typed driver parameters (`CUdevice_attribute`, `CUfunction_attribute`) are passed as
//! plain integers through symbols looked up by name: a guest may send a value this build's
//! bindings do not name, and materialising such a value as a Rust enum would be undefined.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_uint, c_void},
    ptr,
};

use cudarc::driver::sys::{self, CUcontext, CUevent, CUfunction, CUmodule, CUresult, CUstream};
use log::{info, warn};
use thiserror::Error;
use vgpu_protocol::CuResult;

use crate::gpu::{
    ATTRIBUTE_SLOTS, DeviceProps, ForwardCall, Gpu, GpuKind, GpuResult, HostSeg, KernelDesc,
    LaunchConfig,
};

#[derive(Debug, Error)]
pub enum CudaInitError {
    #[error(
        "No NVIDIA driver library (libcuda.so.1) could be loaded on this host; use `--gpu sim` for the CPU simulator"
    )]
    NoDriver,
    #[error("cuInit failed: {0}")]
    Init(CuResult),
    #[error("CUDA device {ordinal} does not exist: this host has {count}")]
    NoSuchDevice { ordinal: i32, count: i32 },
    #[error("Driver call {call} failed: {result}")]
    Call {
        call: &'static str,
        result: CuResult,
    },
}

fn cu(r: CUresult) -> GpuResult<()> {
    let code = r as u32;
    if code == 0 {
        Ok(())
    } else {
        Err(CuResult(code))
    }
}

type RawGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_uint;
type RawFuncGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, CUfunction) -> c_uint;
type RawFuncSetAttribute = unsafe extern "C" fn(CUfunction, c_int, c_int) -> c_uint;
type RawBeginCapture = unsafe extern "C" fn(CUstream, c_int) -> c_uint;

/// How a slice's SM share is enforced on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeMode {
    /// No SM limit: the VM's kernels may use the whole GPU (time-sliced with other VMs).
    Whole,
    /// Every context of the VM is a green context holding `sm_count` SMs (spatial partition
    /// inside this process; other VMs' processes time-slice with it).
    Green { sm_count: u32 },
    /// This process is an MPS client limited to a share of the SMs
    /// (`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`); needs a running MPS control daemon.
    Mps { sm_count: u32 },
}

/// One CUDA device served to guests (the executor exposes it as their device 0).
pub struct CudaGpu {
    ordinal: i32,
    driver_version: i32,
    /// A context owned by the daemon, current while guest memory is registered.
    base_ctx: CUcontext,
    device_get_attribute: RawGetAttribute,
    func_get_attribute: RawFuncGetAttribute,
    func_set_attribute: RawFuncSetAttribute,
    param_ptrs: Vec<*mut c_void>,
    mode: ComputeMode,
    /// SMs the slice really got (green partitions round up to the hardware's granularity).
    granted_sms: Option<u32>,
    /// Green contexts behind the contexts handed out: context -> green context.
    green: std::collections::HashMap<u64, sys::CUgreenCtx>,
}

// SAFETY: the raw driver handles are used only from the executor's thread at a time (the
// executor is behind a mutex); CUDA handles are process-wide, not thread-bound.
unsafe impl Send for CudaGpu {}
// SAFETY: every method takes `&mut self` except plain getters of immutable fields.
unsafe impl Sync for CudaGpu {}

fn raw_symbol<T: Copy>(name: &[u8]) -> Result<T, CudaInitError> {
    // SAFETY: the library is loaded (checked by the caller); `T` is the C signature of the
    // named driver entry point, with enums as plain integers.
    unsafe {
        sys::culib()
            .get::<T>(name)
            .map(|s| *s)
            .map_err(|_| CudaInitError::Call {
                call: "dlsym",
                result: CuResult::NOT_FOUND,
            })
    }
}

impl CudaGpu {
    /// Opens CUDA device `ordinal` with no SM limit. Never panics when the driver is missing.
    pub fn open(ordinal: i32) -> Result<Self, CudaInitError> {
        Self::open_with(ordinal, ComputeMode::Whole)
    }

    /// Opens CUDA device `ordinal`, enforcing an SM share by `mode`.
    pub fn open_with(ordinal: i32, mode: ComputeMode) -> Result<Self, CudaInitError> {
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaInitError::NoDriver);
        }
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            cu(sys::cuInit(0)).map_err(CudaInitError::Init)?;
            let mut count = 0;
            cu(sys::cuDeviceGetCount(&raw mut count)).map_err(|result| CudaInitError::Call {
                call: "cuDeviceGetCount",
                result,
            })?;
            if ordinal < 0 || ordinal >= count {
                return Err(CudaInitError::NoSuchDevice { ordinal, count });
            }
            let mut driver_version = 0;
            cu(sys::cuDriverGetVersion(&raw mut driver_version)).map_err(|result| {
                CudaInitError::Call {
                    call: "cuDriverGetVersion",
                    result,
                }
            })?;
            let total_sms = {
                let mut v = 0;
                let get: RawGetAttribute = raw_symbol(b"cuDeviceGetAttribute\0")?;
                get(&raw mut v, 16, ordinal);
                v.max(1) as u32
            };
            let mut granted_sms = None;
            if let ComputeMode::Mps { sm_count } = mode {
                // The share is read from the environment when the driver initialises, so the
                // daemon sets it before its first cuInit (see `mps_thread_percentage`).
                let pct: u64 = std::env::var("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100);
                // Under MPS the driver already reports the client's share as its SM count.
                granted_sms = Some(total_sms);
                info!("cuda: MPS client limited to {pct}%: {total_sms} SMs (asked {sm_count})");
            }
            let mut base_ctx = ptr::null_mut();
            cu(sys::cuDevicePrimaryCtxRetain(&raw mut base_ctx, ordinal)).map_err(|result| {
                CudaInitError::Call {
                    call: "cuDevicePrimaryCtxRetain",
                    result,
                }
            })?;
            info!("cuda: device {ordinal} opened, driver {driver_version}");
            Ok(Self {
                ordinal,
                driver_version,
                base_ctx,
                device_get_attribute: raw_symbol(b"cuDeviceGetAttribute\0")?,
                func_get_attribute: raw_symbol(b"cuFuncGetAttribute\0")?,
                func_set_attribute: raw_symbol(b"cuFuncSetAttribute\0")?,
                param_ptrs: Vec::with_capacity(64),
                mode,
                granted_sms,
                green: std::collections::HashMap::new(),
            })
        }
    }

    fn kernel_desc(func: CUfunction) -> GpuResult<KernelDesc> {
        let mut name: *const c_char = ptr::null();
        // SAFETY: `func` came from cuModuleEnumerateFunctions; out-pointers are valid.
        unsafe { cu(sys::cuFuncGetName(&raw mut name, func))? };
        let name = if name.is_null() {
            String::new()
        } else {
            // SAFETY: the driver returns a NUL-terminated string that lives as long as the module.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        };
        let mut params = Vec::new();
        for index in 0.. {
            let (mut offset, mut size) = (0usize, 0usize);
            // SAFETY: valid function handle and out-pointers; the loop ends at the first error.
            let r = unsafe { sys::cuFuncGetParamInfo(func, index, &raw mut offset, &raw mut size) };
            if r as u32 != 0 {
                break;
            }
            params.push((offset as u32, size as u32));
        }
        Ok(KernelDesc {
            name,
            raw: func as u64,
            params,
        })
    }
}

/// `CUDA_ERROR_FUNCTION_NOT_LOADED`: under lazy loading (the default since CUDA 12.2) a
/// kernel is loaded at its first launch, and attribute queries before that fail with this.
const FUNCTION_NOT_LOADED: c_uint = 913;

/// Loads a lazily loaded kernel so that its attributes can be queried.
fn load_function(func: u64) -> GpuResult<()> {
    // SAFETY: a function handle of a module this backend loaded.
    unsafe { cu(sys::cuFuncLoad(func as CUfunction)) }
}

/// A cluster-dimension launch attribute.
fn cluster_attribute(cluster: [u32; 3]) -> sys::CUlaunchAttribute {
    // SAFETY: a plain C struct; all-zero is a valid (empty) attribute.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 {
        x: cluster[0].max(1),
        y: cluster[1].max(1),
        z: cluster[2].max(1),
    };
    attr
}

/// A `CUlaunchConfig` for `config` on `stream` with the cluster attribute when it has one.
fn launch_config(
    config: &LaunchConfig,
    stream: CUstream,
    attr: &mut sys::CUlaunchAttribute,
) -> sys::CUlaunchConfig {
    let clustered = config.cluster.iter().any(|&d| d > 1);
    sys::CUlaunchConfig {
        gridDimX: config.grid[0],
        gridDimY: config.grid[1],
        gridDimZ: config.grid[2],
        blockDimX: config.block[0],
        blockDimY: config.block[1],
        blockDimZ: config.block[2],
        sharedMemBytes: config.shared_mem,
        hStream: stream,
        attrs: if clustered { attr } else { ptr::null_mut() },
        numAttrs: u32::from(clustered),
    }
}

/// SMs of CUDA device `ordinal` (initialises the driver in this process).
pub fn device_sm_count(ordinal: i32) -> Result<u32, CudaInitError> {
    // SAFETY: only probes whether the library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaInitError::NoDriver);
    }
    let get: RawGetAttribute = raw_symbol(b"cuDeviceGetAttribute\0")?;
    let mut v = 0;
    // SAFETY: plain driver calls with a valid out-pointer.
    unsafe {
        cu(sys::cuInit(0)).map_err(CudaInitError::Init)?;
        let r = get(&raw mut v, 16, ordinal);
        if r != 0 {
            return Err(CudaInitError::Call {
                call: "cuDeviceGetAttribute",
                result: CuResult(r),
            });
        }
    }
    Ok(v.max(1) as u32)
}

/// The `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` that gives `sm_count` of `total` SMs.
pub fn mps_thread_percentage(sm_count: u32, total: u32) -> u32 {
    ((u64::from(sm_count.min(total)) * 100).div_ceil(u64::from(total.max(1))) as u32).max(1)
}

impl CudaGpu {
    /// A green context of at least `sm_count` SMs (rounded up to the partition granularity);
    /// returns it as a CUcontext, the green handle, and the SMs it really has.
    fn green_ctx(&mut self, sm_count: u32) -> GpuResult<(CUcontext, sys::CUgreenCtx, u32)> {
        // SAFETY: plain driver calls with valid out-pointers; the resource structs are plain
        // data the driver fills in.
        unsafe {
            let mut all: sys::CUdevResource = std::mem::zeroed();
            cu(sys::cuDeviceGetDevResource(
                self.ordinal,
                &raw mut all,
                sys::CUdevResourceType::CU_DEV_RESOURCE_TYPE_SM,
            ))?;
            let mut part: sys::CUdevResource = std::mem::zeroed();
            let mut rest: sys::CUdevResource = std::mem::zeroed();
            let mut groups = 1u32;
            cu(sys::cuDevSmResourceSplitByCount(
                &raw mut part,
                &raw mut groups,
                &raw const all,
                &raw mut rest,
                0,
                sm_count,
            ))?;
            if groups == 0 {
                return Err(CuResult::OUT_OF_MEMORY);
            }
            let mut desc: sys::CUdevResourceDesc = ptr::null_mut();
            cu(sys::cuDevResourceGenerateDesc(
                &raw mut desc,
                &raw mut part,
                1,
            ))?;
            let mut green: sys::CUgreenCtx = ptr::null_mut();
            // CU_GREEN_CTX_DEFAULT_STREAM: the NULL stream of the green context exists.
            cu(sys::cuGreenCtxCreate(&raw mut green, desc, self.ordinal, 1))?;
            let mut ctx: CUcontext = ptr::null_mut();
            cu(sys::cuCtxFromGreenCtx(&raw mut ctx, green))?;
            cu(sys::cuCtxSetCurrent(ctx))?;
            let got = part.__bindgen_anon_1.sm.smCount;
            info!("cuda: green context with {got} SMs (asked {sm_count})");
            Ok((ctx, green, got))
        }
    }
}

impl Drop for CudaGpu {
    fn drop(&mut self) {
        // SAFETY: releases the primary context retained in `open`.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.ordinal) };
    }
}

impl Gpu for CudaGpu {
    fn kind(&self) -> GpuKind {
        GpuKind::Cuda
    }

    fn driver_version(&self) -> i32 {
        self.driver_version
    }

    fn device_count(&self) -> i32 {
        1
    }

    fn device_props(&mut self, device: i32) -> GpuResult<DeviceProps> {
        if device != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
        let mut name = [0 as c_char; 256];
        let mut total = 0usize;
        let mut uuid = sys::CUuuid_st { bytes: [0; 16] };
        // SAFETY: valid buffers and device ordinal.
        unsafe {
            cu(sys::cuDeviceGetName(name.as_mut_ptr(), 256, self.ordinal))?;
            cu(sys::cuDeviceTotalMem_v2(&raw mut total, self.ordinal))?;
            cu(sys::cuDeviceGetUuid_v2(&raw mut uuid, self.ordinal))?;
        }
        let mut attributes = vec![0i32; ATTRIBUTE_SLOTS];
        for (id, slot) in attributes.iter_mut().enumerate().skip(1) {
            let mut v = 0;
            // SAFETY: the raw entry point takes the attribute as an int; unknown ones fail
            // with an error code and leave `v` at 0.
            if unsafe { (self.device_get_attribute)(&raw mut v, id as c_int, self.ordinal) } == 0 {
                *slot = v;
            }
        }
        // SAFETY: `name` is NUL-terminated by the driver (zero-initialised otherwise).
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(DeviceProps {
            name,
            uuid: uuid.bytes.map(|b| b as u8),
            total_mem: total as u64,
            attributes,
        })
    }

    fn mem_info(&mut self) -> GpuResult<(u64, u64)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers valid; a context is current.
        unsafe { cu(sys::cuMemGetInfo_v2(&raw mut free, &raw mut total))? };
        Ok((free as u64, total as u64))
    }

    fn ctx_create(&mut self, device: i32, flags: u32) -> GpuResult<u64> {
        if device != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
        if let ComputeMode::Green { sm_count } = self.mode {
            let (ctx, green, got) = self.green_ctx(sm_count)?;
            self.granted_sms = Some(got);
            self.green.insert(ctx as u64, green);
            return Ok(ctx as u64);
        }
        let mut ctx = ptr::null_mut();
        // SAFETY: valid out-pointer; the new context becomes current on this thread.
        unsafe {
            cu(sys::cuCtxCreate_v4(
                &raw mut ctx,
                ptr::null_mut(),
                flags,
                self.ordinal,
            ))?
        };
        Ok(ctx as u64)
    }

    fn ctx_destroy(&mut self, ctx: u64) -> GpuResult<()> {
        if let Some(green) = self.green.remove(&ctx) {
            // SAFETY: a green context this backend created; its CUcontext dies with it.
            return unsafe {
                cu(sys::cuCtxSetCurrent(self.base_ctx))?;
                cu(sys::cuGreenCtxDestroy(green))
            };
        }
        // SAFETY: the executor only passes contexts it created and has not destroyed.
        unsafe {
            cu(sys::cuCtxDestroy_v2(ctx as CUcontext))?;
            cu(sys::cuCtxSetCurrent(self.base_ctx))
        }
    }

    fn slice_sm_count(&self) -> Option<u32> {
        self.granted_sms
    }

    fn forward(&mut self, call: &ForwardCall) -> GpuResult<Vec<u8>> {
        crate::ops::forward::call_driver(call, self.ordinal, |name| {
            raw_symbol::<*mut c_void>(name).ok()
        })
    }

    fn set_current(&mut self, ctx: u64) -> GpuResult<()> {
        // SAFETY: a live context created by this backend.
        unsafe { cu(sys::cuCtxSetCurrent(ctx as CUcontext)) }
    }

    fn ctx_synchronize(&mut self) -> GpuResult<()> {
        // SAFETY: plain driver call.
        unsafe { cu(sys::cuCtxSynchronize()) }
    }

    fn mem_alloc(&mut self, size: u64) -> GpuResult<u64> {
        let mut dptr = 0;
        // SAFETY: valid out-pointer.
        unsafe { cu(sys::cuMemAlloc_v2(&raw mut dptr, size as usize))? };
        Ok(dptr)
    }

    fn mem_free(&mut self, dptr: u64) -> GpuResult<()> {
        // SAFETY: the executor checked `dptr` against the client's ledger.
        unsafe { cu(sys::cuMemFree_v2(dptr)) }
    }

    fn memset(
        &mut self,
        dptr: u64,
        value: u32,
        elem_size: u32,
        count: u64,
        stream: u64,
        is_async: bool,
    ) -> GpuResult<()> {
        let n = count as usize;
        let s = stream as CUstream;
        // SAFETY: the executor checked the range against the client's allocations.
        unsafe {
            cu(match (elem_size, is_async) {
                (1, false) => sys::cuMemsetD8_v2(dptr, value as u8, n),
                (1, true) => sys::cuMemsetD8Async(dptr, value as u8, n, s),
                (2, false) => sys::cuMemsetD16_v2(dptr, value as u16, n),
                (2, true) => sys::cuMemsetD16Async(dptr, value as u16, n, s),
                (4, false) => sys::cuMemsetD32_v2(dptr, value, n),
                (4, true) => sys::cuMemsetD32Async(dptr, value, n, s),
                _ => return Err(CuResult::INVALID_VALUE),
            })
        }
    }

    unsafe fn memcpy_htod(
        &mut self,
        dst: u64,
        src: HostSeg,
        stream: u64,
        is_async: bool,
    ) -> GpuResult<()> {
        let (p, n, s) = (src.ptr as *const c_void, src.len, stream as CUstream);
        // SAFETY: the caller keeps `src` valid for the copy; the device range was checked.
        cu(unsafe {
            if is_async {
                sys::cuMemcpyHtoDAsync_v2(dst, p, n, s)
            } else {
                sys::cuMemcpyHtoD_v2(dst, p, n)
            }
        })
    }

    unsafe fn memcpy_dtoh(
        &mut self,
        dst: HostSeg,
        src: u64,
        stream: u64,
        is_async: bool,
    ) -> GpuResult<()> {
        let (p, n, s) = (dst.ptr as *mut c_void, dst.len, stream as CUstream);
        // SAFETY: the caller keeps `dst` valid for the copy; the device range was checked.
        cu(unsafe {
            if is_async {
                sys::cuMemcpyDtoHAsync_v2(p, src, n, s)
            } else {
                sys::cuMemcpyDtoH_v2(p, src, n)
            }
        })
    }

    fn memcpy_dtod(
        &mut self,
        dst: u64,
        src: u64,
        len: u64,
        stream: u64,
        is_async: bool,
    ) -> GpuResult<()> {
        let (n, s) = (len as usize, stream as CUstream);
        // SAFETY: both ranges were checked against the client's allocations.
        cu(unsafe {
            if is_async {
                sys::cuMemcpyDtoDAsync_v2(dst, src, n, s)
            } else {
                sys::cuMemcpyDtoD_v2(dst, src, n)
            }
        })
    }

    fn stream_create(&mut self, flags: u32, priority: i32) -> GpuResult<u64> {
        let mut s = ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { cu(sys::cuStreamCreateWithPriority(&raw mut s, flags, priority))? };
        Ok(s as u64)
    }

    fn stream_destroy(&mut self, stream: u64) -> GpuResult<()> {
        // SAFETY: a stream this backend created.
        unsafe { cu(sys::cuStreamDestroy_v2(stream as CUstream)) }
    }

    fn stream_synchronize(&mut self, stream: u64) -> GpuResult<()> {
        // SAFETY: a live stream or a special stream value.
        unsafe { cu(sys::cuStreamSynchronize(stream as CUstream)) }
    }

    fn stream_query(&mut self, stream: u64) -> GpuResult<()> {
        // SAFETY: a live stream or a special stream value.
        unsafe { cu(sys::cuStreamQuery(stream as CUstream)) }
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64, flags: u32) -> GpuResult<()> {
        // SAFETY: live handles checked by the executor.
        unsafe {
            cu(sys::cuStreamWaitEvent(
                stream as CUstream,
                event as CUevent,
                flags,
            ))
        }
    }

    fn event_create(&mut self, flags: u32) -> GpuResult<u64> {
        let mut e = ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { cu(sys::cuEventCreate(&raw mut e, flags))? };
        Ok(e as u64)
    }

    fn event_destroy(&mut self, event: u64) -> GpuResult<()> {
        // SAFETY: an event this backend created.
        unsafe { cu(sys::cuEventDestroy_v2(event as CUevent)) }
    }

    fn event_record(&mut self, event: u64, stream: u64) -> GpuResult<()> {
        // SAFETY: live handles checked by the executor.
        unsafe { cu(sys::cuEventRecord(event as CUevent, stream as CUstream)) }
    }

    fn event_synchronize(&mut self, event: u64) -> GpuResult<()> {
        // SAFETY: a live event.
        unsafe { cu(sys::cuEventSynchronize(event as CUevent)) }
    }

    fn event_query(&mut self, event: u64) -> GpuResult<()> {
        // SAFETY: a live event.
        unsafe { cu(sys::cuEventQuery(event as CUevent)) }
    }

    fn event_elapsed_ms(&mut self, start: u64, end: u64) -> GpuResult<f32> {
        let mut ms = 0f32;
        // SAFETY: live events and a valid out-pointer.
        unsafe {
            cu(sys::cuEventElapsedTime_v2(
                &raw mut ms,
                start as CUevent,
                end as CUevent,
            ))?
        };
        Ok(ms)
    }

    fn module_load(&mut self, image: &[u8]) -> GpuResult<(u64, Vec<KernelDesc>)> {
        // PTX must be NUL-terminated for the driver; cubins and fatbins carry their sizes.
        let owned;
        let data = if !image.starts_with(b"\x7fELF")
            && image.last() != Some(&0)
            && crate::image::fatbin_len(image).is_none()
        {
            owned = [image, b"\0"].concat();
            owned.as_slice()
        } else {
            image
        };
        let mut module: CUmodule = ptr::null_mut();
        // SAFETY: `data` is a complete image held for the call.
        unsafe {
            cu(sys::cuModuleLoadData(
                &raw mut module,
                data.as_ptr() as *const c_void,
            ))?
        };
        let mut count = 0u32;
        // SAFETY: valid module and out-pointer.
        unsafe { cu(sys::cuModuleGetFunctionCount(&raw mut count, module))? };
        let mut funcs: Vec<CUfunction> = vec![ptr::null_mut(); count as usize];
        // SAFETY: `funcs` has room for `count` handles.
        unsafe {
            cu(sys::cuModuleEnumerateFunctions(
                funcs.as_mut_ptr(),
                count,
                module,
            ))?
        };
        let kernels = funcs
            .into_iter()
            .map(Self::kernel_desc)
            .collect::<GpuResult<Vec<_>>>()?;
        Ok((module as u64, kernels))
    }

    fn module_unload(&mut self, module: u64) -> GpuResult<()> {
        // SAFETY: a module this backend loaded.
        unsafe { cu(sys::cuModuleUnload(module as CUmodule)) }
    }

    fn module_get_global(&mut self, module: u64, name: &str) -> GpuResult<(u64, u64)> {
        let name = CString::new(name).map_err(|_| CuResult::INVALID_VALUE)?;
        let (mut dptr, mut size) = (0u64, 0usize);
        // SAFETY: live module, NUL-terminated name, valid out-pointers.
        unsafe {
            cu(sys::cuModuleGetGlobal_v2(
                &raw mut dptr,
                &raw mut size,
                module as CUmodule,
                name.as_ptr(),
            ))?
        };
        Ok((dptr, size as u64))
    }

    fn func_get_attribute(&mut self, func: u64, attribute: i32) -> GpuResult<i32> {
        let mut v = 0;
        // SAFETY: the raw entry point takes the attribute as an int.
        let mut r = unsafe { (self.func_get_attribute)(&raw mut v, attribute, func as CUfunction) };
        if r == FUNCTION_NOT_LOADED {
            load_function(func)?;
            // SAFETY: as above.
            r = unsafe { (self.func_get_attribute)(&raw mut v, attribute, func as CUfunction) };
        }
        if r == 0 { Ok(v) } else { Err(CuResult(r)) }
    }

    fn func_set_attribute(&mut self, func: u64, attribute: i32, value: i32) -> GpuResult<()> {
        // SAFETY: the raw entry point takes the attribute as an int.
        let mut r = unsafe { (self.func_set_attribute)(func as CUfunction, attribute, value) };
        if r == FUNCTION_NOT_LOADED {
            load_function(func)?;
            // SAFETY: as above.
            r = unsafe { (self.func_set_attribute)(func as CUfunction, attribute, value) };
        }
        if r == 0 { Ok(()) } else { Err(CuResult(r)) }
    }

    fn occupancy_max_active_blocks(
        &mut self,
        func: u64,
        block_size: i32,
        dynamic_smem: u64,
        flags: u32,
    ) -> GpuResult<i32> {
        let mut n = 0;
        let query = |n: &mut i32| {
            // SAFETY: live function handle and valid out-pointer.
            unsafe {
                sys::cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
                    n,
                    func as CUfunction,
                    block_size,
                    dynamic_smem as usize,
                    flags,
                )
            }
        };
        let mut r = query(&mut n);
        if r as c_uint == FUNCTION_NOT_LOADED {
            load_function(func)?;
            r = query(&mut n);
        }
        cu(r)?;
        Ok(n)
    }

    fn launch(
        &mut self,
        func: u64,
        config: &LaunchConfig,
        stream: u64,
        params: &[u8],
        layout: &[(u32, u32)],
    ) -> GpuResult<()> {
        self.param_ptrs.clear();
        for &(offset, size) in layout {
            if offset as usize + size as usize > params.len() {
                return Err(CuResult::INVALID_VALUE);
            }
            // The driver only reads through these pointers.
            self.param_ptrs
                .push(params[offset as usize..].as_ptr() as *mut c_void);
        }
        let [gx, gy, gz] = config.grid;
        let [bx, by, bz] = config.block;
        let args = if self.param_ptrs.is_empty() {
            ptr::null_mut()
        } else {
            self.param_ptrs.as_mut_ptr()
        };
        if config.cluster.iter().any(|&d| d > 1) {
            let mut attr = cluster_attribute(config.cluster);
            let cfg = launch_config(config, stream as CUstream, &mut attr);
            // SAFETY: as below; the configuration and its attribute outlive the call.
            return unsafe {
                cu(sys::cuLaunchKernelEx(
                    &raw const cfg,
                    func as CUfunction,
                    args,
                    ptr::null_mut(),
                ))
            };
        }
        // SAFETY: every parameter pointer points into `params`, bounds-checked above, and the
        // driver copies the values before returning.
        unsafe {
            cu(if config.cooperative {
                sys::cuLaunchCooperativeKernel(
                    func as CUfunction,
                    gx,
                    gy,
                    gz,
                    bx,
                    by,
                    bz,
                    config.shared_mem,
                    stream as CUstream,
                    args,
                )
            } else {
                sys::cuLaunchKernel(
                    func as CUfunction,
                    gx,
                    gy,
                    gz,
                    bx,
                    by,
                    bz,
                    config.shared_mem,
                    stream as CUstream,
                    args,
                    ptr::null_mut(),
                )
            })
        }
    }

    fn occupancy_max_active_clusters(
        &mut self,
        func: u64,
        config: &LaunchConfig,
    ) -> GpuResult<i32> {
        let mut attr = cluster_attribute(config.cluster);
        let cfg = launch_config(config, ptr::null_mut(), &mut attr);
        let mut n = 0;
        // SAFETY: a live function, a launch configuration whose attribute outlives the call.
        let mut r = unsafe {
            sys::cuOccupancyMaxActiveClusters(&raw mut n, func as CUfunction, &raw const cfg)
        };
        if r as c_uint == FUNCTION_NOT_LOADED {
            load_function(func)?;
            // SAFETY: as above.
            r = unsafe {
                sys::cuOccupancyMaxActiveClusters(&raw mut n, func as CUfunction, &raw const cfg)
            };
        }
        cu(r)?;
        Ok(n)
    }

    fn stream_begin_capture(&mut self, stream: u64, mode: u32) -> GpuResult<()> {
        let begin: RawBeginCapture =
            raw_symbol(b"cuStreamBeginCapture_v2\0").map_err(|_| CuResult::NOT_SUPPORTED)?;
        // SAFETY: a live stream; the mode is passed as the driver's int.
        let r = unsafe { begin(stream as CUstream, mode as c_int) };
        if r == 0 { Ok(()) } else { Err(CuResult(r)) }
    }

    fn stream_end_capture(&mut self, stream: u64) -> GpuResult<u64> {
        let mut graph: sys::CUgraph = ptr::null_mut();
        // SAFETY: a live stream and a valid out-pointer.
        unsafe { cu(sys::cuStreamEndCapture(stream as CUstream, &raw mut graph))? };
        Ok(graph as u64)
    }

    fn graph_instantiate(&mut self, graph: u64, flags: u64) -> GpuResult<u64> {
        let mut exec: sys::CUgraphExec = ptr::null_mut();
        // SAFETY: a graph this backend captured and a valid out-pointer.
        unsafe {
            cu(sys::cuGraphInstantiateWithFlags(
                &raw mut exec,
                graph as sys::CUgraph,
                flags,
            ))?
        };
        Ok(exec as u64)
    }

    fn graph_launch(&mut self, exec: u64, stream: u64) -> GpuResult<()> {
        // SAFETY: a live executable graph and stream.
        unsafe {
            cu(sys::cuGraphLaunch(
                exec as sys::CUgraphExec,
                stream as CUstream,
            ))
        }
    }

    fn graph_exec_destroy(&mut self, exec: u64) -> GpuResult<()> {
        // SAFETY: an executable graph this backend instantiated.
        unsafe { cu(sys::cuGraphExecDestroy(exec as sys::CUgraphExec)) }
    }

    fn graph_destroy(&mut self, graph: u64) -> GpuResult<()> {
        // SAFETY: a graph this backend captured.
        unsafe { cu(sys::cuGraphDestroy(graph as sys::CUgraph)) }
    }

    fn graph_exec_update(&mut self, exec: u64, graph: u64) -> (CuResult, i32) {
        // SAFETY: plain old data, all-zero is a valid value.
        let mut info: sys::CUgraphExecUpdateResultInfo = unsafe { std::mem::zeroed() };
        // SAFETY: a live executable graph and graph of this backend, and a valid out-pointer.
        let r = unsafe {
            sys::cuGraphExecUpdate_v2(
                exec as sys::CUgraphExec,
                graph as sys::CUgraph,
                &raw mut info,
            )
        };
        (CuResult(r as u32), info.result as i32)
    }

    fn register_host(&mut self, ptr: *mut u8, len: usize) -> GpuResult<()> {
        // CU_MEMHOSTREGISTER_PORTABLE: valid in every context of the process.
        const PORTABLE: c_uint = 0x01;
        // SAFETY: `ptr..ptr+len` is a live mapping of guest memory that stays mapped until
        // `unregister_host`.
        unsafe {
            cu(sys::cuCtxSetCurrent(self.base_ctx))?;
            let r = cu(sys::cuMemHostRegister_v2(ptr as *mut c_void, len, PORTABLE));
            if let Err(e) = r {
                warn!(
                    "cuda: could not pin {} MiB of guest memory ({e}); copies from it will be staged",
                    len >> 20
                );
            }
            r
        }
    }

    fn unregister_host(&mut self, ptr: *mut u8) -> GpuResult<()> {
        // SAFETY: `ptr` was registered by `register_host`.
        unsafe {
            cu(sys::cuCtxSetCurrent(self.base_ctx))?;
            cu(sys::cuMemHostUnregister(ptr as *mut c_void))
        }
    }
}

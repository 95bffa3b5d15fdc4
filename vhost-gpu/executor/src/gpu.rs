//! The `Gpu` trait: what the executor needs from a device, with the CUDA driver and the CPU
//! simulator as implementations. Handles are the backend's own raw values (CUDA pointers, or
//! simulator indices); the executor never lets a guest name one directly.

use vgpu_protocol::CuResult;

pub use crate::ops::forward::ForwardCall;

/// Result of a device operation: the error is the `CUresult` the guest will see.
pub type GpuResult<T> = Result<T, CuResult>;

/// Which implementation executes the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuKind {
    /// NVIDIA's driver, on a real GPU.
    Cuda,
    /// The CPU simulator: memory in host RAM, launches validated and recorded, never executed.
    Sim,
}

impl std::fmt::Display for GpuKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuKind::Cuda => "cuda",
            GpuKind::Sim => "sim (simulated GPU: nothing runs on a GPU)",
        })
    }
}

/// Static facts about one device, fetched once per client at init.
#[derive(Clone, Debug)]
pub struct DeviceProps {
    pub name: String,
    pub uuid: [u8; 16],
    pub total_mem: u64,
    /// Values indexed by `CUdevice_attribute`; index 0 unused.
    pub attributes: Vec<i32>,
}

/// Number of attribute slots we query and serve (`CU_DEVICE_ATTRIBUTE_MAX` of CUDA 13.0 is
/// below this; unknown ones read as 0).
pub const ATTRIBUTE_SLOTS: usize = 160;

/// A contiguous piece of host memory that holds (or receives) bulk data: a part of a guest
/// memory region, or an inline buffer.
#[derive(Clone, Copy, Debug)]
pub struct HostSeg {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: a HostSeg names shared guest memory that is mapped for the whole connection; which
// thread touches it does not matter.
unsafe impl Send for HostSeg {}
// SAFETY: as above; a HostSeg is only an address and a length.
unsafe impl Sync for HostSeg {}

/// A kernel of a loaded module, as the backend found it.
#[derive(Clone, Debug)]
pub struct KernelDesc {
    pub name: String,
    pub raw: u64,
    /// (offset, size) of each parameter.
    pub params: Vec<(u32, u32)>,
}

/// Launch geometry and options.
#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
    pub cooperative: bool,
    /// Thread-block cluster dimensions; all zero for an ordinary launch.
    pub cluster: [u32; 3],
}

/// One device backend. All calls happen on the executor's thread, with the context last given
/// to [`Gpu::set_current`] current.
pub trait Gpu: Send + Sync {
    fn kind(&self) -> GpuKind;
    fn driver_version(&self) -> i32;
    fn device_count(&self) -> i32;
    fn device_props(&mut self, device: i32) -> GpuResult<DeviceProps>;
    /// Free and total memory of the physical device.
    fn mem_info(&mut self) -> GpuResult<(u64, u64)>;

    fn ctx_create(&mut self, device: i32, flags: u32) -> GpuResult<u64>;
    fn ctx_destroy(&mut self, ctx: u64) -> GpuResult<()>;
    fn set_current(&mut self, ctx: u64) -> GpuResult<()>;
    fn ctx_synchronize(&mut self) -> GpuResult<()>;

    fn mem_alloc(&mut self, size: u64) -> GpuResult<u64>;
    fn mem_free(&mut self, dptr: u64) -> GpuResult<()>;
    fn memset(
        &mut self,
        dptr: u64,
        value: u32,
        elem_size: u32,
        count: u64,
        stream: u64,
        is_async: bool,
    ) -> GpuResult<()>;
    /// Copies `src` (host) to `dst` (device).
    ///
    /// # Safety
    /// `src` must stay readable until the copy completes on `stream` (or at once when
    /// `is_async` is false).
    unsafe fn memcpy_htod(
        &mut self,
        dst: u64,
        src: HostSeg,
        stream: u64,
        is_async: bool,
    ) -> GpuResult<()>;
    /// Copies `src` (device) to `dst` (host).
    ///
    /// # Safety
    /// `dst` must stay writable until the copy completes on `stream`.
    unsafe fn memcpy_dtoh(
        &mut self,
        dst: HostSeg,
        src: u64,
        stream: u64,
        is_async: bool,
    ) -> GpuResult<()>;
    fn memcpy_dtod(
        &mut self,
        dst: u64,
        src: u64,
        len: u64,
        stream: u64,
        is_async: bool,
    ) -> GpuResult<()>;

    fn stream_create(&mut self, flags: u32, priority: i32) -> GpuResult<u64>;
    fn stream_destroy(&mut self, stream: u64) -> GpuResult<()>;
    fn stream_synchronize(&mut self, stream: u64) -> GpuResult<()>;
    fn stream_query(&mut self, stream: u64) -> GpuResult<()>;
    fn stream_wait_event(&mut self, stream: u64, event: u64, flags: u32) -> GpuResult<()>;

    fn event_create(&mut self, flags: u32) -> GpuResult<u64>;
    fn event_destroy(&mut self, event: u64) -> GpuResult<()>;
    fn event_record(&mut self, event: u64, stream: u64) -> GpuResult<()>;
    fn event_synchronize(&mut self, event: u64) -> GpuResult<()>;
    fn event_query(&mut self, event: u64) -> GpuResult<()>;
    fn event_elapsed_ms(&mut self, start: u64, end: u64) -> GpuResult<f32>;

    fn module_load(&mut self, image: &[u8]) -> GpuResult<(u64, Vec<KernelDesc>)>;
    fn module_unload(&mut self, module: u64) -> GpuResult<()>;
    fn module_get_global(&mut self, module: u64, name: &str) -> GpuResult<(u64, u64)>;
    fn func_get_attribute(&mut self, func: u64, attribute: i32) -> GpuResult<i32>;
    fn func_set_attribute(&mut self, func: u64, attribute: i32, value: i32) -> GpuResult<()>;
    fn occupancy_max_active_blocks(
        &mut self,
        func: u64,
        block_size: i32,
        dynamic_smem: u64,
        flags: u32,
    ) -> GpuResult<i32>;

    /// Most clusters of `config.cluster` that can be co-resident for a launch of this shape.
    fn occupancy_max_active_clusters(
        &mut self,
        _func: u64,
        _config: &LaunchConfig,
    ) -> GpuResult<i32> {
        Err(CuResult::NOT_SUPPORTED)
    }

    /// Starts recording the work queued on `stream` into a graph.
    fn stream_begin_capture(&mut self, _stream: u64, _mode: u32) -> GpuResult<()> {
        Err(CuResult::NOT_SUPPORTED)
    }
    /// Ends a capture and returns the graph.
    fn stream_end_capture(&mut self, _stream: u64) -> GpuResult<u64> {
        Err(CuResult::NOT_SUPPORTED)
    }
    fn graph_instantiate(&mut self, _graph: u64, _flags: u64) -> GpuResult<u64> {
        Err(CuResult::NOT_SUPPORTED)
    }
    fn graph_launch(&mut self, _exec: u64, _stream: u64) -> GpuResult<()> {
        Err(CuResult::NOT_SUPPORTED)
    }
    fn graph_exec_destroy(&mut self, _exec: u64) -> GpuResult<()> {
        Err(CuResult::NOT_SUPPORTED)
    }
    fn graph_destroy(&mut self, _graph: u64) -> GpuResult<()> {
        Err(CuResult::NOT_SUPPORTED)
    }
    /// Updates `exec` from `graph`: the call's result and the `CUgraphExecUpdateResult`.
    fn graph_exec_update(&mut self, _exec: u64, _graph: u64) -> (CuResult, i32) {
        (CuResult::NOT_SUPPORTED, 0)
    }

    /// Launches `func`; `params` is the packed parameter buffer laid out by `layout`.
    fn launch(
        &mut self,
        func: u64,
        config: &LaunchConfig,
        stream: u64,
        params: &[u8],
        layout: &[(u32, u32)],
    ) -> GpuResult<()>;

    /// Pins a range of guest memory so copies DMA straight from it.
    fn register_host(&mut self, ptr: *mut u8, len: usize) -> GpuResult<()>;
    fn unregister_host(&mut self, ptr: *mut u8) -> GpuResult<()>;

    /// SMs of the slice, when an SM share is enforced.
    fn slice_sm_count(&self) -> Option<u32> {
        None
    }

    /// Launches recorded so far (the simulator counts them; CUDA returns `None`).
    fn launches_recorded(&self) -> Option<u64> {
        None
    }

    /// Runs a plain forward (`vgpu_protocol::for_each_forward!`) and returns its reply body.
    /// The driver's implementation is generated from the table; a backend that does not run a
    /// forward says so.
    fn forward(&mut self, call: &ForwardCall) -> GpuResult<Vec<u8>> {
        let _ = call;
        Err(CuResult::NOT_SUPPORTED)
    }
}

//! The CPU simulator. It exists so CI can exercise every path without a GPU, and it must never
//! be mistaken for the product: its device name, the handshake and every log line say "sim".
//!
//! Device memory lives in host RAM and copies really move bytes, so checksums through the
//! whole stack are meaningful. A module's global variables (`__device__`, `__constant__`) are
//! device memory too, allocated at load with the image's initial data. Kernels are validated
//! (handle, parameter buffer size) and recorded, never executed; a kernel whose name holds
//! `print` makes the simulator write a line built from its first argument to stdout, the
//! path NVIDIA's driver prints device `printf` output on (see `device_printf`).

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use log::info;
use vgpu_protocol::CuResult;

use crate::{
    gpu::{
        ATTRIBUTE_SLOTS, DeviceProps, ForwardCall, Gpu, GpuKind, GpuResult, HostSeg, KernelDesc,
        LaunchConfig,
    },
    image,
};

/// Device addresses the simulator hands out start here (and look like real ones).
const SIM_VA_BASE: u64 = 0x7f00_0000_0000;
const SIM_ALIGN: u64 = 512;

pub struct SimGpu {
    total_mem: u64,
    used_mem: u64,
    next_va: u64,
    allocations: BTreeMap<u64, Vec<u8>>,
    next_handle: u64,
    contexts: HashMap<u64, i32>,
    streams: HashMap<u64, ()>,
    events: HashMap<u64, Option<Instant>>,
    modules: HashMap<u64, SimModule>,
    functions: HashMap<u64, SimFunction>,
    host_regions: HashMap<usize, usize>,
    launches: u64,
    /// Streams being captured -> launches recorded into the graph so far.
    capturing: HashMap<u64, u64>,
    /// Graphs and executable graphs -> how many launches they hold.
    graphs: HashMap<u64, u64>,
    /// Stream attributes set (`cuStreamSetAttribute`): (stream, attribute) -> value.
    stream_attrs: HashMap<(u64, u32), [u8; 64]>,
}

struct SimModule {
    funcs: Vec<u64>,
    /// Global variables: name -> (device address, size). Each is an allocation of its own,
    /// counted as used device memory until the module is unloaded.
    globals: HashMap<String, (u64, u64)>,
}

struct SimFunction {
    name: String,
    params_len: u32,
    attrs: HashMap<i32, i32>,
}

impl SimGpu {
    /// A simulated device with `total_mem` bytes of (host) memory.
    pub fn new(total_mem: u64) -> Self {
        info!(
            "sim: simulated GPU with {} MiB of host RAM as device memory; nothing runs on a GPU",
            total_mem >> 20
        );
        Self {
            total_mem,
            used_mem: 0,
            next_va: SIM_VA_BASE,
            allocations: BTreeMap::new(),
            next_handle: 0x1000,
            contexts: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            host_regions: HashMap::new(),
            launches: 0,
            capturing: HashMap::new(),
            graphs: HashMap::new(),
            stream_attrs: HashMap::new(),
        }
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 0x10;
        self.next_handle
    }

    /// The allocation holding `[dptr, dptr+len)`, as (base, offset).
    fn locate(&self, dptr: u64, len: u64) -> GpuResult<(u64, usize)> {
        let (&base, buf) = self
            .allocations
            .range(..=dptr)
            .next_back()
            .ok_or(CuResult::INVALID_VALUE)?;
        let off = dptr - base;
        if off
            .checked_add(len)
            .is_none_or(|end| end > buf.len() as u64)
        {
            return Err(CuResult::INVALID_VALUE);
        }
        Ok((base, off as usize))
    }

    /// Allocates a module's global variables as device memory holding their initial data (the
    /// first definition of a name wins); on failure nothing stays allocated.
    fn alloc_globals(
        &mut self,
        vars: Vec<image::GlobalVar>,
    ) -> GpuResult<HashMap<String, (u64, u64)>> {
        let mut globals: HashMap<String, (u64, u64)> = HashMap::new();
        for g in vars {
            if globals.contains_key(&g.name) {
                continue;
            }
            let dptr = match self.mem_alloc(g.size) {
                Ok(dptr) => dptr,
                Err(e) => {
                    info!(
                        "sim: module global {} of {} bytes not allocated: {e:?}",
                        g.name, g.size
                    );
                    for (dptr, _) in globals.into_values() {
                        let _ = self.mem_free(dptr);
                    }
                    return Err(e);
                }
            };
            if let Some(buf) = self.allocations.get_mut(&dptr) {
                let n = g.init.len().min(buf.len());
                buf[..n].copy_from_slice(&g.init[..n]);
            }
            globals.insert(g.name, (dptr, g.size));
        }
        Ok(globals)
    }

    fn check_stream(&self, stream: u64) -> GpuResult<()> {
        if stream <= vgpu_protocol::stream::PER_THREAD || self.streams.contains_key(&stream) {
            Ok(())
        } else {
            Err(CuResult::INVALID_HANDLE)
        }
    }

    /// Attribute table of an H200-like device (values a real H200 reports).
    fn attributes() -> Vec<i32> {
        let mut a = vec![0i32; ATTRIBUTE_SLOTS];
        let set = |a: &mut Vec<i32>, i: usize, v: i32| a[i] = v;
        set(&mut a, 1, 1024); // MAX_THREADS_PER_BLOCK
        set(&mut a, 2, 1024);
        set(&mut a, 3, 1024);
        set(&mut a, 4, 64);
        set(&mut a, 5, 2_147_483_647);
        set(&mut a, 6, 65535);
        set(&mut a, 7, 65535);
        set(&mut a, 8, 49152); // MAX_SHARED_MEMORY_PER_BLOCK
        set(&mut a, 9, 65536); // TOTAL_CONSTANT_MEMORY
        set(&mut a, 10, 32); // WARP_SIZE
        set(&mut a, 11, 2_147_483_647); // MAX_PITCH
        set(&mut a, 12, 65536); // MAX_REGISTERS_PER_BLOCK
        set(&mut a, 13, 1_980_000); // CLOCK_RATE
        set(&mut a, 14, 512); // TEXTURE_ALIGNMENT
        set(&mut a, 15, 1); // GPU_OVERLAP
        set(&mut a, 16, 132); // MULTIPROCESSOR_COUNT
        set(&mut a, 19, 1); // INTEGRATED=0? keep CAN_MAP_HOST_MEMORY at 19
        set(&mut a, 18, 0); // INTEGRATED
        set(&mut a, 20, 0); // COMPUTE_MODE default
        set(&mut a, 31, 1); // CONCURRENT_KERNELS
        set(&mut a, 32, 0); // ECC_ENABLED
        set(&mut a, 33, 0x19); // PCI_BUS_ID
        set(&mut a, 34, 0); // PCI_DEVICE_ID
        set(&mut a, 36, 2_619_000); // MEMORY_CLOCK_RATE
        set(&mut a, 37, 6144); // GLOBAL_MEMORY_BUS_WIDTH
        set(&mut a, 38, 52_428_800); // L2_CACHE_SIZE
        set(&mut a, 39, 2048); // MAX_THREADS_PER_MULTIPROCESSOR
        set(&mut a, 40, 2); // ASYNC_ENGINE_COUNT
        set(&mut a, 41, 1); // UNIFIED_ADDRESSING
        set(&mut a, 50, 0); // PCI_DOMAIN_ID
        set(&mut a, 75, 9); // COMPUTE_CAPABILITY_MAJOR
        set(&mut a, 76, 0); // COMPUTE_CAPABILITY_MINOR
        set(&mut a, 81, 233_472); // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        set(&mut a, 82, 65536); // MAX_REGISTERS_PER_MULTIPROCESSOR
        set(&mut a, 83, 0); // MANAGED_MEMORY: not supported by vGPU yet
        set(&mut a, 86, 0); // PAGEABLE_MEMORY_ACCESS
        set(&mut a, 95, 1); // COOPERATIVE_LAUNCH
        set(&mut a, 97, 232_448); // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        set(&mut a, 106, 32); // MAX_BLOCKS_PER_MULTIPROCESSOR
        set(&mut a, 115, 1); // MEMORY_POOLS_SUPPORTED
        a
    }
}

/// What the simulator "prints" for a kernel whose name holds `print`: it cannot run the
/// kernel, so it writes one line derived from the launch's first argument to stdout, where
/// NVIDIA's driver writes device `printf` output (the daemon's console hands it to the guest):
/// `SIMPRINTF kernel=NAME arg0=V` (a 4-byte argument as a signed integer, an 8-byte one in
/// hex, none as `-`).
fn device_printf(name: &str, params: &[u8], layout: &[(u32, u32)]) {
    use std::io::Write;
    let arg0 = layout
        .iter()
        .min_by_key(|&&(off, _)| off)
        .and_then(|&(off, size)| params.get(off as usize..(off + size) as usize))
        .map_or("-".to_string(), |b| match <[u8; 4]>::try_from(b) {
            Ok(b4) => i32::from_le_bytes(b4).to_string(),
            Err(_) => match <[u8; 8]>::try_from(b) {
                Ok(b8) => format!("{:#x}", u64::from_le_bytes(b8)),
                Err(_) => format!("{} bytes", b.len()),
            },
        });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "SIMPRINTF kernel={name} arg0={arg0}");
    let _ = out.flush();
}

impl Gpu for SimGpu {
    fn kind(&self) -> GpuKind {
        GpuKind::Sim
    }

    fn driver_version(&self) -> i32 {
        13000
    }

    fn device_count(&self) -> i32 {
        1
    }

    fn device_props(&mut self, device: i32) -> GpuResult<DeviceProps> {
        if device != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
        Ok(DeviceProps {
            name: "vGPU SIM (simulated, no GPU)".into(),
            uuid: *b"vgpu-sim-device0",
            total_mem: self.total_mem,
            attributes: Self::attributes(),
        })
    }

    fn mem_info(&mut self) -> GpuResult<(u64, u64)> {
        Ok((self.total_mem - self.used_mem, self.total_mem))
    }

    fn ctx_create(&mut self, device: i32, _flags: u32) -> GpuResult<u64> {
        if device != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
        let h = self.handle();
        self.contexts.insert(h, device);
        Ok(h)
    }

    fn ctx_destroy(&mut self, ctx: u64) -> GpuResult<()> {
        self.contexts
            .remove(&ctx)
            .ok_or(CuResult::INVALID_CONTEXT)?;
        // The simulator's own count (not the executor's ledger), for tests to read from
        // outside: what is still allocated on the device once a context is gone.
        info!(
            "sim: context destroyed; the device holds {} bytes in {} allocations",
            self.used_mem,
            self.allocations.len()
        );
        Ok(())
    }

    fn set_current(&mut self, ctx: u64) -> GpuResult<()> {
        if self.contexts.contains_key(&ctx) {
            Ok(())
        } else {
            Err(CuResult::INVALID_CONTEXT)
        }
    }

    fn ctx_synchronize(&mut self) -> GpuResult<()> {
        Ok(())
    }

    fn mem_alloc(&mut self, size: u64) -> GpuResult<u64> {
        if size == 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        if size > self.total_mem - self.used_mem {
            return Err(CuResult::OUT_OF_MEMORY);
        }
        let buf = vec![0u8; usize::try_from(size).map_err(|_| CuResult::OUT_OF_MEMORY)?];
        let va = self.next_va;
        self.next_va += size.div_ceil(SIM_ALIGN) * SIM_ALIGN + SIM_ALIGN;
        self.allocations.insert(va, buf);
        self.used_mem += size;
        Ok(va)
    }

    fn mem_free(&mut self, dptr: u64) -> GpuResult<()> {
        let buf = self
            .allocations
            .remove(&dptr)
            .ok_or(CuResult::INVALID_VALUE)?;
        self.used_mem -= buf.len() as u64;
        Ok(())
    }

    fn memset(
        &mut self,
        dptr: u64,
        value: u32,
        elem_size: u32,
        count: u64,
        stream: u64,
        _is_async: bool,
    ) -> GpuResult<()> {
        self.check_stream(stream)?;
        let len = count
            .checked_mul(u64::from(elem_size))
            .ok_or(CuResult::INVALID_VALUE)?;
        let (base, off) = self.locate(dptr, len)?;
        let buf = &mut self
            .allocations
            .get_mut(&base)
            .ok_or(CuResult::INVALID_VALUE)?[off..off + len as usize];
        match elem_size {
            1 => buf.fill(value as u8),
            2 => buf
                .chunks_exact_mut(2)
                .for_each(|c| c.copy_from_slice(&(value as u16).to_le_bytes())),
            4 => buf
                .chunks_exact_mut(4)
                .for_each(|c| c.copy_from_slice(&value.to_le_bytes())),
            _ => return Err(CuResult::INVALID_VALUE),
        }
        Ok(())
    }

    unsafe fn memcpy_htod(
        &mut self,
        dst: u64,
        src: HostSeg,
        stream: u64,
        _is_async: bool,
    ) -> GpuResult<()> {
        self.check_stream(stream)?;
        let (base, off) = self.locate(dst, src.len as u64)?;
        let buf = self
            .allocations
            .get_mut(&base)
            .ok_or(CuResult::INVALID_VALUE)?;
        // SAFETY: the caller guarantees `src` is readable for `src.len` bytes; the destination
        // range was bounds-checked by `locate`. Guest memory may change under us, which only
        // affects the guest's own data.
        unsafe { std::ptr::copy_nonoverlapping(src.ptr, buf.as_mut_ptr().add(off), src.len) };
        Ok(())
    }

    unsafe fn memcpy_dtoh(
        &mut self,
        dst: HostSeg,
        src: u64,
        stream: u64,
        _is_async: bool,
    ) -> GpuResult<()> {
        self.check_stream(stream)?;
        let (base, off) = self.locate(src, dst.len as u64)?;
        let buf = self.allocations.get(&base).ok_or(CuResult::INVALID_VALUE)?;
        // SAFETY: the caller guarantees `dst` is writable for `dst.len` bytes; the source
        // range was bounds-checked by `locate`.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr().add(off), dst.ptr, dst.len) };
        Ok(())
    }

    fn memcpy_dtod(
        &mut self,
        dst: u64,
        src: u64,
        len: u64,
        stream: u64,
        _is_async: bool,
    ) -> GpuResult<()> {
        self.check_stream(stream)?;
        let (sbase, soff) = self.locate(src, len)?;
        let (dbase, doff) = self.locate(dst, len)?;
        let len = len as usize;
        if sbase == dbase {
            let buf = self
                .allocations
                .get_mut(&sbase)
                .ok_or(CuResult::INVALID_VALUE)?;
            buf.copy_within(soff..soff + len, doff);
        } else {
            let tmp = self.allocations[&sbase][soff..soff + len].to_vec();
            self.allocations
                .get_mut(&dbase)
                .ok_or(CuResult::INVALID_VALUE)?[doff..doff + len]
                .copy_from_slice(&tmp);
        }
        Ok(())
    }

    fn stream_create(&mut self, _flags: u32, _priority: i32) -> GpuResult<u64> {
        let h = self.handle();
        self.streams.insert(h, ());
        Ok(h)
    }

    fn stream_destroy(&mut self, stream: u64) -> GpuResult<()> {
        self.streams.remove(&stream).ok_or(CuResult::INVALID_HANDLE)
    }

    fn stream_synchronize(&mut self, stream: u64) -> GpuResult<()> {
        self.check_stream(stream)
    }

    fn stream_query(&mut self, stream: u64) -> GpuResult<()> {
        self.check_stream(stream)
    }

    fn stream_wait_event(&mut self, stream: u64, event: u64, _flags: u32) -> GpuResult<()> {
        self.check_stream(stream)?;
        exists(self.events.get(&event))
    }

    fn event_create(&mut self, _flags: u32) -> GpuResult<u64> {
        let h = self.handle();
        self.events.insert(h, None);
        Ok(h)
    }

    fn event_destroy(&mut self, event: u64) -> GpuResult<()> {
        exists(self.events.remove(&event))
    }

    fn event_record(&mut self, event: u64, stream: u64) -> GpuResult<()> {
        self.check_stream(stream)?;
        let e = self
            .events
            .get_mut(&event)
            .ok_or(CuResult::INVALID_HANDLE)?;
        *e = Some(Instant::now());
        Ok(())
    }

    fn event_synchronize(&mut self, event: u64) -> GpuResult<()> {
        exists(self.events.get(&event))
    }

    fn event_query(&mut self, event: u64) -> GpuResult<()> {
        self.event_synchronize(event)
    }

    fn event_elapsed_ms(&mut self, start: u64, end: u64) -> GpuResult<f32> {
        let s = self.events.get(&start).ok_or(CuResult::INVALID_HANDLE)?;
        let e = self.events.get(&end).ok_or(CuResult::INVALID_HANDLE)?;
        match (s, e) {
            (Some(s), Some(e)) => Ok(e.saturating_duration_since(*s).as_secs_f32() * 1000.0),
            _ => Err(CuResult::NOT_READY),
        }
    }

    fn module_load(&mut self, image: &[u8]) -> GpuResult<(u64, Vec<KernelDesc>)> {
        let info = image::module_info(image).map_err(|e| {
            info!("sim: module image refused: {e}");
            CuResult::INVALID_IMAGE
        })?;
        let globals = self.alloc_globals(info.globals)?;
        let global_bytes: u64 = globals.values().map(|&(_, size)| size).sum();
        let module = self.handle();
        let mut descs = Vec::with_capacity(info.kernels.len());
        for k in info.kernels {
            let raw = self.handle();
            let params_len = k.params.iter().map(|(o, s)| o + s).max().unwrap_or(0);
            self.functions.insert(
                raw,
                SimFunction {
                    name: k.name.clone(),
                    params_len,
                    attrs: HashMap::new(),
                },
            );
            descs.push(KernelDesc {
                name: k.name,
                raw,
                params: k.params,
            });
        }
        info!(
            "sim: module loaded with {} kernels (recorded, never executed) and {} globals ({} bytes)",
            descs.len(),
            globals.len(),
            global_bytes
        );
        self.modules.insert(
            module,
            SimModule {
                funcs: descs.iter().map(|d| d.raw).collect(),
                globals,
            },
        );
        Ok((module, descs))
    }

    fn module_unload(&mut self, module: u64) -> GpuResult<()> {
        let m = self
            .modules
            .remove(&module)
            .ok_or(CuResult::INVALID_HANDLE)?;
        for f in m.funcs {
            self.functions.remove(&f);
        }
        for (dptr, _) in m.globals.into_values() {
            self.mem_free(dptr)?;
        }
        Ok(())
    }

    fn module_get_global(&mut self, module: u64, name: &str) -> GpuResult<(u64, u64)> {
        self.modules
            .get(&module)
            .ok_or(CuResult::INVALID_HANDLE)?
            .globals
            .get(name)
            .copied()
            .ok_or(CuResult::NOT_FOUND)
    }

    fn func_get_attribute(&mut self, func: u64, attribute: i32) -> GpuResult<i32> {
        let f = self.functions.get(&func).ok_or(CuResult::INVALID_HANDLE)?;
        Ok(match attribute {
            0 => f.attrs.get(&0).copied().unwrap_or(1024), // MAX_THREADS_PER_BLOCK
            4 => 16,                                       // NUM_REGS
            5 => 90,                                       // PTX_VERSION
            6 => 90,                                       // BINARY_VERSION
            a => f.attrs.get(&a).copied().unwrap_or(0),
        })
    }

    fn func_set_attribute(&mut self, func: u64, attribute: i32, value: i32) -> GpuResult<()> {
        let f = self
            .functions
            .get_mut(&func)
            .ok_or(CuResult::INVALID_HANDLE)?;
        f.attrs.insert(attribute, value);
        Ok(())
    }

    fn occupancy_max_active_blocks(
        &mut self,
        func: u64,
        block_size: i32,
        _dynamic_smem: u64,
        _flags: u32,
    ) -> GpuResult<i32> {
        if !self.functions.contains_key(&func) || block_size <= 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        Ok((2048 / block_size).clamp(0, 32))
    }

    fn launch(
        &mut self,
        func: u64,
        config: &LaunchConfig,
        stream: u64,
        params: &[u8],
        layout: &[(u32, u32)],
    ) -> GpuResult<()> {
        self.check_stream(stream)?;
        let f = self.functions.get(&func).ok_or(CuResult::INVALID_HANDLE)?;
        let threads: u64 = config.block.iter().map(|&b| u64::from(b)).product();
        if config.grid.contains(&0) || threads == 0 || threads > 1024 {
            return Err(CuResult::INVALID_VALUE);
        }
        if params.len() != f.params_len as usize {
            info!(
                "sim: launch of {} refused: {} parameter bytes, kernel takes {}",
                f.name,
                params.len(),
                f.params_len
            );
            return Err(CuResult::INVALID_VALUE);
        }
        match self.capturing.get_mut(&stream) {
            Some(captured) => *captured += 1,
            None => {
                self.launches += 1;
                if f.name.contains("print") {
                    device_printf(&f.name, params, layout);
                }
            }
        }
        Ok(())
    }

    fn stream_begin_capture(&mut self, stream: u64, _mode: u32) -> GpuResult<()> {
        self.check_stream(stream)?;
        if self.capturing.insert(stream, 0).is_some() {
            return Err(CuResult(900)); // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        }
        Ok(())
    }

    fn stream_end_capture(&mut self, stream: u64) -> GpuResult<u64> {
        let launches = self.capturing.remove(&stream).ok_or(CuResult(901))?; // _CAPTURE_INVALIDATED
        let h = self.handle();
        self.graphs.insert(h, launches);
        Ok(h)
    }

    fn graph_instantiate(&mut self, graph: u64, _flags: u64) -> GpuResult<u64> {
        let launches = *self.graphs.get(&graph).ok_or(CuResult::INVALID_HANDLE)?;
        let h = self.handle();
        self.graphs.insert(h, launches);
        Ok(h)
    }

    fn graph_launch(&mut self, exec: u64, stream: u64) -> GpuResult<()> {
        self.check_stream(stream)?;
        self.launches += *self.graphs.get(&exec).ok_or(CuResult::INVALID_HANDLE)?;
        Ok(())
    }

    fn graph_exec_destroy(&mut self, exec: u64) -> GpuResult<()> {
        exists(self.graphs.remove(&exec))
    }

    fn graph_destroy(&mut self, graph: u64) -> GpuResult<()> {
        exists(self.graphs.remove(&graph))
    }

    /// The simulator's graphs are launch counts: an update succeeds when the counts agree
    /// (same topology) and is refused as a topology change otherwise.
    fn graph_exec_update(&mut self, exec: u64, graph: u64) -> (CuResult, i32) {
        const UPDATE_FAILURE: CuResult = CuResult(910); // CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE
        const TOPOLOGY_CHANGED: i32 = 2; // CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED
        match (self.graphs.get(&exec), self.graphs.get(&graph)) {
            (Some(e), Some(g)) if e == g => (CuResult::SUCCESS, 0),
            (Some(_), Some(_)) => (UPDATE_FAILURE, TOPOLOGY_CHANGED),
            _ => (CuResult::INVALID_HANDLE, 0),
        }
    }

    fn register_host(&mut self, ptr: *mut u8, len: usize) -> GpuResult<()> {
        self.host_regions.insert(ptr as usize, len);
        Ok(())
    }

    fn unregister_host(&mut self, ptr: *mut u8) -> GpuResult<()> {
        self.host_regions
            .remove(&(ptr as usize))
            .map(|_| ())
            .ok_or(CuResult::INVALID_VALUE)
    }

    fn launches_recorded(&self) -> Option<u64> {
        Some(self.launches)
    }

    fn forward(&mut self, call: &ForwardCall) -> GpuResult<Vec<u8>> {
        use vgpu_protocol::ops::forward as fwd;
        use zerocopy::IntoBytes;
        // The NULL, legacy and per-thread streams always exist.
        let stream_ok = |s: u64, streams: &HashMap<u64, ()>| {
            s <= vgpu_protocol::stream::PER_THREAD || streams.contains_key(&s)
        };
        match call {
            ForwardCall::StreamGetAttribute(c) => {
                let (s, attr) = (c.stream.get(), c.attr.get());
                if !stream_ok(s, &self.streams) {
                    return Err(CuResult::INVALID_HANDLE);
                }
                if !STREAM_ATTRIBUTES.contains(&attr) {
                    return Err(CuResult::INVALID_VALUE);
                }
                let reply = fwd::StreamGetAttribute::Reply {
                    value: self
                        .stream_attrs
                        .get(&(s, attr))
                        .copied()
                        .unwrap_or([0; 64]),
                    ..Default::default()
                };
                Ok(reply.as_bytes().to_vec())
            }
            ForwardCall::StreamSetAttribute(c) => {
                let (s, attr) = (c.stream.get(), c.attr.get());
                if !stream_ok(s, &self.streams) {
                    return Err(CuResult::INVALID_HANDLE);
                }
                if !STREAM_ATTRIBUTES.contains(&attr) {
                    return Err(CuResult::INVALID_VALUE);
                }
                self.stream_attrs.insert((s, attr), c.value);
                Ok(Vec::new())
            }
            ForwardCall::StreamCopyAttributes(c) => {
                let (dst, src) = (c.dst.get(), c.src.get());
                if !stream_ok(dst, &self.streams) || !stream_ok(src, &self.streams) {
                    return Err(CuResult::INVALID_HANDLE);
                }
                let copied: Vec<_> = self
                    .stream_attrs
                    .iter()
                    .filter(|((s, _), _)| *s == src)
                    .map(|((_, a), v)| (*a, *v))
                    .collect();
                self.stream_attrs.retain(|(s, _), _| *s != dst);
                for (a, v) in copied {
                    self.stream_attrs.insert((dst, a), v);
                }
                Ok(Vec::new())
            }
            // One device: peer-to-peer needs two.
            ForwardCall::DeviceGetP2PAttribute(_) => Err(CuResult::INVALID_DEVICE),
            ForwardCall::DeviceGetTexture1DLinearMaxWidth(c) => {
                if ![1, 2, 4].contains(&c.channels.get()) {
                    return Err(CuResult::INVALID_VALUE);
                }
                // Not a property of any real GPU: a fixed answer, so a test can see it pass.
                let reply = fwd::DeviceGetTexture1DLinearMaxWidth::Reply {
                    width: (1u64 << 27).into(),
                    ..Default::default()
                };
                Ok(reply.as_bytes().to_vec())
            }
            ForwardCall::DeviceGetExecAffinitySupport(c) => {
                if c.kind.get() != 0 {
                    return Err(CuResult::INVALID_VALUE);
                }
                let reply = fwd::DeviceGetExecAffinitySupport::Reply {
                    supported: 0.into(),
                    ..Default::default()
                };
                Ok(reply.as_bytes().to_vec())
            }
            ForwardCall::CtxResetPersistingL2Cache(_) => Ok(Vec::new()),
            ForwardCall::FlushGpuDirectRdmaWrites(c) => {
                if c.target.get() != 0 || ![100, 200].contains(&c.scope.get()) {
                    return Err(CuResult::INVALID_VALUE);
                }
                Ok(Vec::new())
            }
        }
    }
}

/// `CUDA_ERROR_INVALID_HANDLE` unless the handle named something.
fn exists<T>(found: Option<T>) -> GpuResult<()> {
    found.map(|_| ()).ok_or(CuResult::INVALID_HANDLE)
}

/// `CUstreamAttrID` values a stream accepts (access policy window, synchronisation policy,
/// priority, memory synchronisation domain map and domain).
const STREAM_ATTRIBUTES: [u32; 5] = [1, 3, 8, 9, 10];

#[cfg(test)]
mod tests {
    use super::*;

    fn htod(sim: &mut SimGpu, dst: u64, data: &mut [u8]) -> GpuResult<()> {
        let src = HostSeg {
            ptr: data.as_mut_ptr(),
            len: data.len(),
        };
        // SAFETY: `data` is readable for its length.
        unsafe { sim.memcpy_htod(dst, src, 0, false) }
    }

    fn dtoh(sim: &mut SimGpu, src: u64, len: usize) -> GpuResult<Vec<u8>> {
        let mut out = vec![0u8; len];
        let dst = HostSeg {
            ptr: out.as_mut_ptr(),
            len,
        };
        // SAFETY: `out` is writable for its length.
        unsafe { sim.memcpy_dtoh(dst, src, 0, false) }?;
        Ok(out)
    }

    #[test]
    fn module_globals_are_device_memory_until_unload() {
        let mut sim = SimGpu::new(1 << 30);
        let image = image::rt_constant_fatbin();
        let (module, kernels) = sim.module_load(&image).unwrap();
        assert_eq!(kernels.len(), 1);
        // ctable[256] and coef[4] (constant bank), gdata[1024] and gcounter (global memory).
        let globals = 1024 + 16 + 4096 + 8;
        assert_eq!(sim.mem_info().unwrap(), ((1 << 30) - globals, 1 << 30));

        let (ctable, size) = sim.module_get_global(module, "ctable").unwrap();
        assert_eq!(size, 1024);
        assert_eq!(dtoh(&mut sim, ctable, 1024).unwrap(), vec![0; 1024]);
        let mut table: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        htod(&mut sim, ctable, &mut table).unwrap();
        assert_eq!(dtoh(&mut sim, ctable, 1024).unwrap(), table);
        // At an offset, and not past the variable's end.
        assert_eq!(dtoh(&mut sim, ctable + 400, 8).unwrap(), table[400..408]);
        assert_eq!(
            dtoh(&mut sim, ctable + 1020, 8),
            Err(CuResult::INVALID_VALUE)
        );

        let (gdata, size) = sim.module_get_global(module, "gdata").unwrap();
        assert_eq!(size, 4096);
        let (gcounter, size) = sim.module_get_global(module, "gcounter").unwrap();
        assert_eq!(size, 8);
        assert_ne!(gdata, gcounter);
        // Device-to-device copies reach globals too.
        sim.memcpy_dtod(gdata, ctable, 1024, 0, false).unwrap();
        assert_eq!(dtoh(&mut sim, gdata, 1024).unwrap(), table);
        assert_eq!(sim.module_get_global(module, "coef").unwrap().1, 16);

        assert_eq!(
            sim.module_get_global(module, "missing"),
            Err(CuResult::NOT_FOUND)
        );
        assert_eq!(
            sim.module_get_global(module + 1, "ctable"),
            Err(CuResult::INVALID_HANDLE)
        );
        // A second load of the same image has globals of its own.
        let (second, _) = sim.module_load(&image).unwrap();
        let (ctable2, _) = sim.module_get_global(second, "ctable").unwrap();
        assert_ne!(ctable2, ctable);
        assert_eq!(dtoh(&mut sim, ctable2, 1024).unwrap(), vec![0; 1024]);

        sim.module_unload(module).unwrap();
        sim.module_unload(second).unwrap();
        assert_eq!(sim.mem_info().unwrap(), (1 << 30, 1 << 30));
        assert_eq!(dtoh(&mut sim, ctable, 4), Err(CuResult::INVALID_VALUE));
    }

    #[test]
    fn ptx_globals_start_with_their_initialisers() {
        let ptx = ".version 9.0\n.target sm_90\n.address_size 64\n\
                   .global .align 4 .b8 ginit[8] = {1, 0, 0, 0, 254, 255, 255, 255};\n\
                   .global .align 8 .f64 dd = 0d3FD0000000000000;\n\
                   .const .align 4 .u32 zeros[4];\n\
                   .visible .entry k()\n{\n\tret;\n}\n";
        let mut sim = SimGpu::new(1 << 20);
        let (module, _) = sim.module_load(ptx.as_bytes()).unwrap();
        let (g, size) = sim.module_get_global(module, "ginit").unwrap();
        assert_eq!(size, 8);
        assert_eq!(
            dtoh(&mut sim, g, 8).unwrap(),
            [1i32.to_le_bytes(), (-2i32).to_le_bytes()].concat()
        );
        let (d, _) = sim.module_get_global(module, "dd").unwrap();
        assert_eq!(dtoh(&mut sim, d, 8).unwrap(), 0.25f64.to_le_bytes());
        let (z, size) = sim.module_get_global(module, "zeros").unwrap();
        assert_eq!(dtoh(&mut sim, z, 16).unwrap(), vec![0; 16]);
        assert_eq!(size, 16);
    }

    #[test]
    fn globals_larger_than_the_device_fail_the_load_and_leave_nothing() {
        let ptx = ".version 9.0\n.target sm_90\n.address_size 64\n\
                   .global .align 4 .b8 small[64];\n\
                   .global .align 4 .b8 huge[2097152];\n";
        let mut sim = SimGpu::new(1 << 20);
        assert_eq!(
            sim.module_load(ptx.as_bytes()).map(|_| ()),
            Err(CuResult::OUT_OF_MEMORY)
        );
        assert_eq!(sim.mem_info().unwrap(), (1 << 20, 1 << 20));
        assert!(sim.allocations.is_empty());
    }
}

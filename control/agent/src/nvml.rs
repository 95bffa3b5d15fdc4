//! GPU telemetry from NVML, read at run time.
//!
//! `nvml-wrapper` loads `libnvidia-ml.so.1` when the agent starts. Without it (no NVIDIA
//! driver, a CI runner) the agent logs one note and the figures only NVML has (memory used,
//! utilisation, clocks, power, temperature, XID errors, per-process use) are absent from its
//! metrics; nothing else changes. A thread samples every GPU NVML sees once a second and waits
//! for critical XID events in between; the metrics endpoint renders the last sample.
//!
//! Per slice, NVML's per-process figures are attributed to the allocation whose worker the
//! process is (a worker and its children carry `VGPU_AGENT_ALLOCATION` in their environment).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;

/// XIDs after which NVIDIA's guidance is to reset the GPU or drain the node (double-bit ECC,
/// fallen off the bus, row-remapping failure, contained/uncontained ECC, GSP errors, NVLink):
/// one of them makes the GPU unhealthy until the agent restarts.
pub const FATAL_XIDS: &[u64] = &[48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140];

/// One physical GPU as NVML reported it at the last sample. `None`: NVML could not say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub pci_bus_id: String,
    pub name: String,
    pub fb_total_bytes: Option<u64>,
    pub fb_used_bytes: Option<u64>,
    pub fb_free_bytes: Option<u64>,
    pub fb_reserved_bytes: Option<u64>,
    /// Percent of the last sample period a kernel ran.
    pub gpu_util: Option<u32>,
    /// Percent of the last sample period device memory was read or written.
    pub mem_copy_util: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub power_mw: Option<u32>,
    pub temp_c: Option<u32>,
    pub energy_mj: Option<u64>,
    pub ecc_sbe_volatile: Option<u64>,
    pub ecc_dbe_volatile: Option<u64>,
    /// The last XID error seen (0: none), as DCGM's `XID_ERRORS` reports it.
    pub last_xid: u64,
    /// Critical XID events seen since the agent started, by XID.
    pub xid_counts: BTreeMap<u64, u64>,
    /// False when NVML lost the GPU or a fatal XID ([`FATAL_XIDS`]) was seen.
    pub healthy: bool,
}

/// What NVML tells about one slice (the processes of its worker).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceUsage {
    /// Device memory its processes hold, as NVML counts it (contexts included).
    pub fb_used_bytes: u64,
    /// SM utilisation of its processes over the last second, percent of the whole GPU.
    pub sm_util: u32,
    /// GPU time: the integral of its SM utilisation (1 s at 100% = 1 s).
    pub gpu_seconds: f64,
}

/// NVML's state as the metrics see it.
#[derive(Clone, Debug, Default)]
pub enum Telemetry {
    /// Not tried yet.
    #[default]
    Starting,
    /// NVML could not be loaded or initialised: why.
    Absent(String),
    /// The last sample.
    Present {
        driver_version: String,
        gpus: Vec<GpuSample>,
        slices: BTreeMap<String, SliceUsage>,
    },
}

/// Shared between the sampler thread and the metrics endpoint.
pub type Shared = Arc<Mutex<Telemetry>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Telemetry> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The allocation a process works for, from its environment (`None`: not a worker's).
fn allocation_of(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix("VGPU_AGENT_ALLOCATION=")
            .map(str::to_string)
    })
}

fn ok<T>(r: Result<T, NvmlError>) -> Option<T> {
    r.ok()
}

/// Starts the sampler thread; returns what it fills.
pub fn start(interval: Duration) -> Shared {
    let shared: Shared = Arc::default();
    let t = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("nvml".into())
        .spawn(move || run(&t, interval));
    if let Err(e) = spawned {
        *lock(&shared) = Telemetry::Absent(format!("no sampler thread: {e}"));
    }
    shared
}

fn run(shared: &Shared, interval: Duration) {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            log::info!(
                "NVML (libnvidia-ml.so.1) not available ({e}): GPU usage metrics (DCGM_FI_DEV_FB_USED, GPU_UTIL, power, clocks, XID errors) are absent"
            );
            *lock(shared) = Telemetry::Absent(e.to_string());
            return;
        }
    };
    let driver_version = nvml.sys_driver_version().unwrap_or_default();
    let count = nvml.device_count().unwrap_or(0);
    log::info!("NVML {driver_version}: sampling {count} GPU(s) every {interval:?}");
    // Critical XID events, where the driver lets us register for them.
    let mut events = nvml.create_event_set().ok();
    let mut registered = 0;
    for i in 0..count {
        if let (Some(set), Ok(d)) = (events.take(), nvml.device_by_index(i)) {
            match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(s) => {
                    events = Some(s);
                    registered += 1;
                }
                Err(e) => {
                    log::info!("NVML: no XID events for GPU {i}: {}", e.error);
                    // A failed registration consumes the set: start another while it held none
                    // (after that, the GPUs registered so far keep theirs and the rest get none).
                    if registered == 0 {
                        events = nvml.create_event_set().ok();
                    }
                }
            }
        }
    }
    let mut xids: HashMap<u32, (u64, BTreeMap<u64, u64>)> = HashMap::new();
    let mut last_ts: HashMap<u32, u64> = HashMap::new();
    let mut gpu_seconds: BTreeMap<String, f64> = BTreeMap::new();
    let mut owners: HashMap<u32, Option<String>> = HashMap::new();
    let mut last = Instant::now();
    loop {
        let elapsed = last.elapsed().as_secs_f64();
        last = Instant::now();
        let mut gpus = Vec::new();
        let mut slices: BTreeMap<String, SliceUsage> = BTreeMap::new();
        let mut seen_pids = Vec::new();
        for i in 0..count {
            let Ok(d) = nvml.device_by_index(i) else {
                gpus.push(GpuSample {
                    index: i,
                    healthy: false,
                    ..GpuSample::default()
                });
                continue;
            };
            let mem = d.memory_info().ok();
            let util = d.utilization_rates().ok();
            let (last_xid, counts) = xids.get(&i).cloned().unwrap_or_default();
            let lost = matches!(d.memory_info(), Err(NvmlError::GpuLost));
            let fatal = counts.keys().any(|x| FATAL_XIDS.contains(x));
            gpus.push(GpuSample {
                index: i,
                uuid: d.uuid().unwrap_or_default(),
                pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                name: d.name().unwrap_or_default(),
                fb_total_bytes: mem.as_ref().map(|m| m.total),
                fb_used_bytes: mem.as_ref().map(|m| m.used),
                fb_free_bytes: mem.as_ref().map(|m| m.free),
                fb_reserved_bytes: mem.as_ref().map(|m| m.reserved),
                gpu_util: util.as_ref().map(|u| u.gpu),
                mem_copy_util: util.as_ref().map(|u| u.memory),
                sm_clock_mhz: ok(d.clock_info(Clock::SM)),
                mem_clock_mhz: ok(d.clock_info(Clock::Memory)),
                power_mw: ok(d.power_usage()),
                temp_c: ok(d.temperature(TemperatureSensor::Gpu)),
                energy_mj: ok(d.total_energy_consumption()),
                ecc_sbe_volatile: ok(
                    d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                ),
                ecc_dbe_volatile: ok(
                    d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                ),
                last_xid,
                xid_counts: counts,
                healthy: !lost && !fatal,
            });
            // Per slice: memory of its processes, and their SM use since the last sample.
            for p in d.running_compute_processes().unwrap_or_default() {
                seen_pids.push(p.pid);
                let owner = owners.entry(p.pid).or_insert_with(|| allocation_of(p.pid));
                if let (Some(a), UsedGpuMemory::Used(b)) = (owner.clone(), p.used_gpu_memory) {
                    slices.entry(a).or_default().fb_used_bytes += b;
                }
            }
            let since = last_ts.get(&i).copied();
            let samples = d.process_utilization_stats(since).unwrap_or_default();
            let mut per_pid: HashMap<u32, (u64, u32)> = HashMap::new();
            for s in &samples {
                let e = per_pid.entry(s.pid).or_default();
                e.0 += u64::from(s.sm_util);
                e.1 += 1;
                last_ts.insert(i, last_ts.get(&i).copied().unwrap_or(0).max(s.timestamp));
            }
            for (pid, (sum, n)) in per_pid {
                let owner = owners.entry(pid).or_insert_with(|| allocation_of(pid));
                if let Some(a) = owner.clone() {
                    let mean = sum as f64 / f64::from(n.max(1));
                    let s = slices.entry(a.clone()).or_default();
                    s.sm_util += mean.round() as u32;
                    *gpu_seconds.entry(a).or_default() += mean / 100.0 * elapsed;
                }
            }
        }
        owners.retain(|pid, _| seen_pids.contains(pid));
        for (a, s) in &mut slices {
            s.gpu_seconds = gpu_seconds.get(a).copied().unwrap_or(0.0);
        }
        // A slice keeps its GPU time after its processes end (a counter).
        for (a, secs) in &gpu_seconds {
            slices.entry(a.clone()).or_default().gpu_seconds = *secs;
        }
        *lock(shared) = Telemetry::Present {
            driver_version: driver_version.clone(),
            gpus,
            slices,
        };
        // Until the next sample: wait for XID events (or just sleep).
        let until = last + interval;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(set) = &events else {
                std::thread::sleep(left);
                break;
            };
            match set.wait(left.as_millis().max(1) as u32) {
                Ok(ev) => {
                    let idx = ev.device.index().unwrap_or(u32::MAX);
                    let xid = match ev.event_data {
                        Some(XidError::Value(x)) => x,
                        _ => 999,
                    };
                    log::warn!("NVML: GPU {idx} reported XID {xid}");
                    let e = xids.entry(idx).or_default();
                    e.0 = xid;
                    *e.1.entry(xid).or_default() += 1;
                }
                Err(NvmlError::Timeout) => break,
                Err(_) => {
                    std::thread::sleep(left);
                    break;
                }
            }
        }
    }
}

//! Prometheus text exposition for the controller.
//!
//! Families: pool-level (`vgpu_pool_*`, `vgpu_scheduler_*`), HAMi scheduler names per physical
//! GPU and per vGPU slice (`hami_*`; with `--legacy-metrics` also HAMi's pre-2.9 names), and
//! HAMi quota families per project. DCGM names per physical GPU come from the agents, which are
//! on the GPU hosts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::pool::{DECISION_BUCKETS, MetricsSnapshot};

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn render(m: &MetricsSnapshot, legacy: bool) -> String {
    let mut s = String::with_capacity(4096);
    let c = &m.counters;

    head(
        &mut s,
        "vgpu_pool_hosts",
        "gauge",
        "Hosts known to the pool by state.",
    );
    let alive = m.hosts.iter().filter(|h| h.alive).count();
    let drained = m.hosts.iter().filter(|h| !h.host.schedulable).count();
    let _ = writeln!(s, "vgpu_pool_hosts{{state=\"alive\"}} {alive}");
    let _ = writeln!(
        s,
        "vgpu_pool_hosts{{state=\"lost\"}} {}",
        m.hosts.len() - alive
    );
    let _ = writeln!(s, "vgpu_pool_hosts{{state=\"drained\"}} {drained}");
    head(
        &mut s,
        "vgpu_pool_gpus",
        "gauge",
        "Physical GPUs known to the pool.",
    );
    let _ = writeln!(s, "vgpu_pool_gpus {}", m.gpus.len());
    let remote = m.allocations.iter().filter(|a| a.remote).count();
    head(
        &mut s,
        "vgpu_pool_allocations",
        "gauge",
        "Active allocations (slices held by VMs).",
    );
    let _ = writeln!(
        s,
        "vgpu_pool_allocations{{remote=\"false\"}} {}",
        m.allocations.len() - remote
    );
    let _ = writeln!(s, "vgpu_pool_allocations{{remote=\"true\"}} {remote}");
    head(
        &mut s,
        "vgpu_pool_remote_sessions",
        "gauge",
        "Active allocations served over the network from another host.",
    );
    let _ = writeln!(s, "vgpu_pool_remote_sessions {remote}");
    head(
        &mut s,
        "vgpu_pool_memory_bytes",
        "gauge",
        "GPU memory in the pool.",
    );
    let total: u64 = m.gpus.iter().map(|g| g.gpu.info.memory_bytes).sum();
    let alloc: u64 = m.gpus.iter().map(|g| g.memory_allocated_bytes).sum();
    let _ = writeln!(
        s,
        "vgpu_pool_memory_bytes{{kind=\"total\"}} {total}\nvgpu_pool_memory_bytes{{kind=\"allocated\"}} {alloc}"
    );
    head(
        &mut s,
        "vgpu_pool_sm",
        "gauge",
        "SMs in the pool (capacity includes oversubscription).",
    );
    let cap: u64 = m.gpus.iter().map(|g| g.sm_capacity).sum();
    let sm: u64 = m.gpus.iter().map(|g| g.sm_allocated).sum();
    let _ = writeln!(
        s,
        "vgpu_pool_sm{{kind=\"capacity\"}} {cap}\nvgpu_pool_sm{{kind=\"allocated\"}} {sm}"
    );
    head(
        &mut s,
        "vgpu_pool_allocation_requests_total",
        "counter",
        "Allocation requests by result.",
    );
    let _ = writeln!(
        s,
        "vgpu_pool_allocation_requests_total{{result=\"ok\"}} {}",
        c.allocations_ok
    );
    let _ = writeln!(
        s,
        "vgpu_pool_allocation_requests_total{{result=\"no_capacity\"}} {}",
        c.refused_capacity
    );
    let _ = writeln!(
        s,
        "vgpu_pool_allocation_requests_total{{result=\"quota_exceeded\"}} {}",
        c.refused_quota
    );
    head(
        &mut s,
        "vgpu_pool_remote_allocations_total",
        "counter",
        "Allocations placed on another host (network fallback).",
    );
    let _ = writeln!(
        s,
        "vgpu_pool_remote_allocations_total {}",
        c.allocations_remote
    );
    head(
        &mut s,
        "vgpu_pool_releases_total",
        "counter",
        "Allocations ended, by reason.",
    );
    for (r, n) in &c.releases {
        let _ = writeln!(s, "vgpu_pool_releases_total{{reason=\"{}\"}} {n}", esc(r));
    }
    head(
        &mut s,
        "vgpu_pool_reclamations_total",
        "counter",
        "Slices returned to the pool without an explicit release (lease expiry, lost host, worker exit).",
    );
    let reclaimed: u64 = c
        .releases
        .iter()
        .filter(|(r, _)| r.as_str() != "released")
        .map(|(_, n)| n)
        .sum();
    let _ = writeln!(s, "vgpu_pool_reclamations_total {reclaimed}");
    head(
        &mut s,
        "vgpu_pool_hosts_lost_total",
        "counter",
        "Hosts marked lost after their heartbeats stopped.",
    );
    let _ = writeln!(s, "vgpu_pool_hosts_lost_total {}", c.hosts_lost);
    head(
        &mut s,
        "vgpu_scheduler_decision_seconds",
        "histogram",
        "Time of one placement decision (lock held, store write excluded).",
    );
    for (i, b) in DECISION_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            s,
            "vgpu_scheduler_decision_seconds_bucket{{le=\"{b}\"}} {}",
            c.decision_buckets[i]
        );
    }
    let _ = writeln!(
        s,
        "vgpu_scheduler_decision_seconds_bucket{{le=\"+Inf\"}} {}",
        c.decision_count
    );
    let _ = writeln!(
        s,
        "vgpu_scheduler_decision_seconds_sum {}",
        c.decision_seconds_sum
    );
    let _ = writeln!(
        s,
        "vgpu_scheduler_decision_seconds_count {}",
        c.decision_count
    );

    // HAMi scheduler names per physical GPU.
    let dev = |g: &crate::pool::GpuView| {
        format!(
            "node=\"{}\",device_uuid=\"{}\",device_index=\"{}\",device_type=\"{}\"",
            esc(&g.gpu.host),
            esc(&g.gpu.info.uuid),
            g.gpu.info.index,
            esc(&g.gpu.info.model)
        )
    };
    head(
        &mut s,
        "hami_gpu_memory_limit_bytes",
        "gauge",
        "Memory of the physical GPU.",
    );
    for g in &m.gpus {
        let _ = writeln!(
            s,
            "hami_gpu_memory_limit_bytes{{{}}} {}",
            dev(g),
            g.gpu.info.memory_bytes
        );
    }
    head(
        &mut s,
        "hami_gpu_core_limit_ratio",
        "gauge",
        "Compute capacity of the GPU as a ratio of its SMs (the oversubscription ratio).",
    );
    for g in &m.gpus {
        let _ = writeln!(
            s,
            "hami_gpu_core_limit_ratio{{{}}} {}",
            dev(g),
            g.gpu.oversubscription_ratio
        );
    }
    head(
        &mut s,
        "hami_gpu_memory_allocated_bytes",
        "gauge",
        "Memory of the GPU given to slices.",
    );
    for g in &m.gpus {
        let _ = writeln!(
            s,
            "hami_gpu_memory_allocated_bytes{{{},device_cores=\"{}\"}} {}",
            dev(g),
            g.gpu.info.sm_count,
            g.memory_allocated_bytes
        );
    }
    head(
        &mut s,
        "hami_gpu_core_allocated_ratio",
        "gauge",
        "SMs of the GPU given to slices, as a ratio of its SMs.",
    );
    for g in &m.gpus {
        let r = g.sm_allocated as f64 / f64::from(g.gpu.info.sm_count.max(1));
        let _ = writeln!(
            s,
            "hami_gpu_core_allocated_ratio{{{},device_cores=\"{}\"}} {r}",
            dev(g),
            g.gpu.info.sm_count
        );
    }
    head(
        &mut s,
        "hami_gpu_shared_count",
        "gauge",
        "Slices on the GPU.",
    );
    for g in &m.gpus {
        let _ = writeln!(
            s,
            "hami_gpu_shared_count{{{},device_cores=\"{}\"}} {}",
            dev(g),
            g.gpu.info.sm_count,
            g.slices
        );
    }
    // HAMi per-vGPU (namespace = project, pod = VM, container_index = vGPU index inside the VM).
    let mut vidx: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    head(
        &mut s,
        "hami_vgpu_memory_allocated_bytes",
        "gauge",
        "Memory of the vGPU slice.",
    );
    let mut per_slice = Vec::new();
    for a in &m.allocations {
        let i = vidx.entry((&a.project, &a.vm)).or_default();
        let labels = format!(
            "namespace=\"{}\",node=\"{}\",pod=\"{}\",container_index=\"{i}\",device_uuid=\"{}\",instance_uuid=\"{}\",host=\"{}\",remote=\"{}\",slice_mode=\"{}\",allocation=\"{}\"",
            esc(&a.project),
            esc(&a.gpu_host),
            esc(&a.vm),
            esc(&a.gpu_uuid),
            esc(&a.vm),
            esc(&a.vm_host),
            a.remote,
            if a.profile.is_some() {
                "profile"
            } else {
                "arbitrary"
            },
            esc(&a.id)
        );
        *i += 1;
        let _ = writeln!(
            s,
            "hami_vgpu_memory_allocated_bytes{{{labels}}} {}",
            a.memory_bytes
        );
        per_slice.push((labels, a));
    }
    head(
        &mut s,
        "vgpu_slice_sm_count",
        "gauge",
        "SMs of the vGPU slice.",
    );
    for (l, a) in &per_slice {
        let _ = writeln!(s, "vgpu_slice_sm_count{{{l}}} {}", a.sm_count);
    }
    head(
        &mut s,
        "hami_resource_quota_used",
        "gauge",
        "Quota use per project.",
    );
    for p in &m.projects {
        let n = esc(&p.project.name);
        let _ = writeln!(
            s,
            "hami_resource_quota_used{{namespace=\"{n}\",quota_name=\"allocations\"}} {}",
            p.usage.allocations
        );
        let _ = writeln!(
            s,
            "hami_resource_quota_used{{namespace=\"{n}\",quota_name=\"memory_bytes\"}} {}",
            p.usage.memory_bytes
        );
        let _ = writeln!(
            s,
            "hami_resource_quota_used{{namespace=\"{n}\",quota_name=\"sm\"}} {}",
            p.usage.sm
        );
    }
    head(
        &mut s,
        "hami_resource_quota_limit",
        "gauge",
        "Quota limit per project (absent = unlimited).",
    );
    for p in &m.projects {
        let n = esc(&p.project.name);
        let q = &p.project.quota;
        for (k, v) in [
            ("allocations", q.max_allocations),
            ("memory_bytes", q.max_memory_bytes),
            ("sm", q.max_sm),
        ] {
            if let Some(v) = v {
                let _ = writeln!(
                    s,
                    "hami_resource_quota_limit{{namespace=\"{n}\",quota_name=\"{k}\"}} {v}"
                );
            }
        }
    }
    if legacy {
        let ldev = |g: &crate::pool::GpuView| {
            format!(
                "nodeid=\"{}\",deviceuuid=\"{}\",deviceidx=\"{}\",devicetype=\"{}\"",
                esc(&g.gpu.host),
                esc(&g.gpu.info.uuid),
                g.gpu.info.index,
                esc(&g.gpu.info.model)
            )
        };
        head(
            &mut s,
            "GPUDeviceMemoryLimit",
            "gauge",
            "HAMi legacy: memory of the GPU.",
        );
        for g in &m.gpus {
            let _ = writeln!(
                s,
                "GPUDeviceMemoryLimit{{{}}} {}",
                ldev(g),
                g.gpu.info.memory_bytes
            );
        }
        head(
            &mut s,
            "GPUDeviceMemoryAllocated",
            "gauge",
            "HAMi legacy: memory given to slices.",
        );
        for g in &m.gpus {
            let _ = writeln!(
                s,
                "GPUDeviceMemoryAllocated{{{},devicecores=\"{}\"}} {}",
                ldev(g),
                g.gpu.info.sm_count,
                g.memory_allocated_bytes
            );
        }
        head(
            &mut s,
            "GPUDeviceSharedNum",
            "gauge",
            "HAMi legacy: slices on the GPU.",
        );
        for g in &m.gpus {
            let _ = writeln!(s, "GPUDeviceSharedNum{{{}}} {}", ldev(g), g.slices);
        }
        head(
            &mut s,
            "vGPU_device_memory_limit_in_bytes",
            "gauge",
            "HAMi legacy: memory limit of the vGPU.",
        );
        for a in &m.allocations {
            let _ = writeln!(
                s,
                "vGPU_device_memory_limit_in_bytes{{podnamespace=\"{}\",podname=\"{}\",ctrname=\"{}\",vdeviceid=\"0\",deviceuuid=\"{}\"}} {}",
                esc(&a.project),
                esc(&a.vm),
                esc(&a.id),
                esc(&a.gpu_uuid),
                a.memory_bytes
            );
        }
    }
    s
}

//! Prometheus text exposition for the controller.
//!
//! Families: pool-level (`vgpu_pool_*`, `vgpu_scheduler_*`), HAMi scheduler names per physical
//! GPU and per vGPU slice (`hami_*`; with `--legacy-metrics` also HAMi's pre-2.9 names), and
//! HAMi quota families per project. DCGM names per physical GPU come from the agents, which are
//! on the GPU hosts.

use std::collections::BTreeMap;
use vgpu_pool_wire::prometheus::{Text, esc};

use crate::pool::{DECISION_BUCKETS, GpuView, MetricsSnapshot, ProjectView};

/// A GPU's host, UUID, index and model, under the label `names` of a dialect.
fn gpu_labels(g: &GpuView, names: [&str; 4]) -> String {
    let [host, uuid, index, model] = names;
    format!(
        "{host}=\"{}\",{uuid}=\"{}\",{index}=\"{}\",{model}=\"{}\"",
        esc(&g.gpu.host),
        esc(&g.gpu.info.uuid),
        g.gpu.info.index,
        esc(&g.gpu.info.model)
    )
}

pub fn render(m: &MetricsSnapshot, legacy: bool) -> String {
    let mut t = Text::default();
    let c = &m.counters;

    let alive = m.hosts.iter().filter(|h| h.alive).count();
    let drained = m.hosts.iter().filter(|h| !h.host.schedulable).count();
    t.family(
        "vgpu_pool_hosts",
        "gauge",
        "Hosts known to the pool by state.",
        [
            ("state=\"alive\"", alive),
            ("state=\"lost\"", m.hosts.len() - alive),
            ("state=\"drained\"", drained),
        ],
    );
    t.family(
        "vgpu_pool_gpus",
        "gauge",
        "Physical GPUs known to the pool.",
        [("", m.gpus.len())],
    );
    let remote = m.allocations.iter().filter(|a| a.remote).count();
    t.family(
        "vgpu_pool_allocations",
        "gauge",
        "Active allocations (slices held by VMs).",
        [
            ("remote=\"false\"", m.allocations.len() - remote),
            ("remote=\"true\"", remote),
        ],
    );
    t.family(
        "vgpu_pool_remote_sessions",
        "gauge",
        "Active allocations served over the network from another host.",
        [("", remote)],
    );
    let total: u64 = m.gpus.iter().map(|g| g.gpu.info.memory_bytes).sum();
    let alloc: u64 = m.gpus.iter().map(|g| g.memory_allocated_bytes).sum();
    t.family(
        "vgpu_pool_memory_bytes",
        "gauge",
        "GPU memory in the pool.",
        [("kind=\"total\"", total), ("kind=\"allocated\"", alloc)],
    );
    let cap: u64 = m.gpus.iter().map(|g| g.sm_capacity).sum();
    let sm: u64 = m.gpus.iter().map(|g| g.sm_allocated).sum();
    t.family(
        "vgpu_pool_sm",
        "gauge",
        "SMs in the pool (capacity includes oversubscription).",
        [("kind=\"capacity\"", cap), ("kind=\"allocated\"", sm)],
    );
    t.family(
        "vgpu_pool_allocation_requests_total",
        "counter",
        "Allocation requests by result.",
        [
            ("result=\"ok\"", c.allocations_ok),
            ("result=\"no_capacity\"", c.refused_capacity),
            ("result=\"quota_exceeded\"", c.refused_quota),
        ],
    );
    t.family(
        "vgpu_pool_remote_allocations_total",
        "counter",
        "Allocations placed on another host (network fallback).",
        [("", c.allocations_remote)],
    );
    t.family(
        "vgpu_pool_releases_total",
        "counter",
        "Allocations ended, by reason.",
        c.releases
            .iter()
            .map(|(r, n)| (format!("reason=\"{}\"", esc(r)), n)),
    );
    let reclaimed: u64 = c
        .releases
        .iter()
        .filter(|(r, _)| r.as_str() != "released")
        .map(|(_, n)| n)
        .sum();
    t.family(
        "vgpu_pool_reclamations_total",
        "counter",
        "Slices returned to the pool without an explicit release (lease expiry, lost host, worker exit).",
        [("", reclaimed)],
    );
    t.family(
        "vgpu_pool_hosts_lost_total",
        "counter",
        "Hosts marked lost after their heartbeats stopped.",
        [("", c.hosts_lost)],
    );
    t.head(
        "vgpu_scheduler_decision_seconds",
        "histogram",
        "Time of one placement decision (lock held, store write excluded).",
    );
    let bucket = "vgpu_scheduler_decision_seconds_bucket";
    for (b, n) in DECISION_BUCKETS.iter().zip(&c.decision_buckets) {
        t.sample(bucket, &format!("le=\"{b}\""), n);
    }
    t.sample(bucket, "le=\"+Inf\"", c.decision_count);
    t.sample(
        "vgpu_scheduler_decision_seconds_sum",
        "",
        c.decision_seconds_sum,
    );
    t.sample(
        "vgpu_scheduler_decision_seconds_count",
        "",
        c.decision_count,
    );

    // HAMi scheduler names per physical GPU.
    let dev = |g: &GpuView| gpu_labels(g, ["node", "device_uuid", "device_index", "device_type"]);
    let cores = |g: &GpuView| format!("{},device_cores=\"{}\"", dev(g), g.gpu.info.sm_count);
    t.family(
        "hami_gpu_memory_limit_bytes",
        "gauge",
        "Memory of the physical GPU.",
        m.gpus.iter().map(|g| (dev(g), g.gpu.info.memory_bytes)),
    );
    t.family(
        "hami_gpu_core_limit_ratio",
        "gauge",
        "Compute capacity of the GPU as a ratio of its SMs (the oversubscription ratio).",
        m.gpus
            .iter()
            .map(|g| (dev(g), g.gpu.oversubscription_ratio)),
    );
    t.family(
        "hami_gpu_memory_allocated_bytes",
        "gauge",
        "Memory of the GPU given to slices.",
        m.gpus.iter().map(|g| (cores(g), g.memory_allocated_bytes)),
    );
    t.family(
        "hami_gpu_core_allocated_ratio",
        "gauge",
        "SMs of the GPU given to slices, as a ratio of its SMs.",
        m.gpus.iter().map(|g| {
            let r = g.sm_allocated as f64 / f64::from(g.gpu.info.sm_count.max(1));
            (cores(g), r)
        }),
    );
    t.family(
        "hami_gpu_shared_count",
        "gauge",
        "Slices on the GPU.",
        m.gpus.iter().map(|g| (cores(g), g.slices)),
    );
    // HAMi per-vGPU (namespace = project, pod = VM, container_index = vGPU index inside the VM).
    let mut vidx: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let per_slice: Vec<_> = m
        .allocations
        .iter()
        .map(|a| {
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
            (labels, a)
        })
        .collect();
    t.family(
        "hami_vgpu_memory_allocated_bytes",
        "gauge",
        "Memory of the vGPU slice.",
        per_slice.iter().map(|(l, a)| (l, a.memory_bytes)),
    );
    t.family(
        "vgpu_slice_sm_count",
        "gauge",
        "SMs of the vGPU slice.",
        per_slice.iter().map(|(l, a)| (l, a.sm_count)),
    );
    let quota = |p: &ProjectView, k: &str| {
        format!("namespace=\"{}\",quota_name=\"{k}\"", esc(&p.project.name))
    };
    t.family(
        "hami_resource_quota_used",
        "gauge",
        "Quota use per project.",
        m.projects.iter().flat_map(|p| {
            let u = &p.usage;
            [
                ("allocations", u.allocations),
                ("memory_bytes", u.memory_bytes),
                ("sm", u.sm),
            ]
            .map(|(k, v)| (quota(p, k), v))
        }),
    );
    t.family(
        "hami_resource_quota_limit",
        "gauge",
        "Quota limit per project (absent = unlimited).",
        m.projects.iter().flat_map(|p| {
            let q = &p.project.quota;
            [
                ("allocations", q.max_allocations),
                ("memory_bytes", q.max_memory_bytes),
                ("sm", q.max_sm),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((quota(p, k), v?)))
        }),
    );
    if legacy {
        let ldev = |g: &GpuView| gpu_labels(g, ["nodeid", "deviceuuid", "deviceidx", "devicetype"]);
        t.family(
            "GPUDeviceMemoryLimit",
            "gauge",
            "HAMi legacy: memory of the GPU.",
            m.gpus.iter().map(|g| (ldev(g), g.gpu.info.memory_bytes)),
        );
        t.family(
            "GPUDeviceMemoryAllocated",
            "gauge",
            "HAMi legacy: memory given to slices.",
            m.gpus.iter().map(|g| {
                let l = format!("{},devicecores=\"{}\"", ldev(g), g.gpu.info.sm_count);
                (l, g.memory_allocated_bytes)
            }),
        );
        t.family(
            "GPUDeviceSharedNum",
            "gauge",
            "HAMi legacy: slices on the GPU.",
            m.gpus.iter().map(|g| (ldev(g), g.slices)),
        );
        t.family(
            "vGPU_device_memory_limit_in_bytes",
            "gauge",
            "HAMi legacy: memory limit of the vGPU.",
            m.allocations.iter().map(|a| {
                let l = format!(
                    "podnamespace=\"{}\",podname=\"{}\",ctrname=\"{}\",vdeviceid=\"0\",deviceuuid=\"{}\"",
                    esc(&a.project),
                    esc(&a.vm),
                    esc(&a.id),
                    esc(&a.gpu_uuid)
                );
                (l, a.memory_bytes)
            }),
        );
    }
    t.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, PoolConfig};
    use crate::store::SqliteStore;

    /// The exposition of a pool with two hosts (h2 drained), four GPUs, a project with an
    /// allocation quota only, and two allocations of it on h1.
    fn populated(legacy: bool) -> String {
        let dir =
            std::env::temp_dir().join(format!("vgpu-metrics-{}-{legacy}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        crate::transfer::tests::populated(&dir.join("a.db"));
        let pool = Pool::open(
            Box::new(SqliteStore::open(&dir.join("a.db")).unwrap()),
            PoolConfig::default(),
        )
        .unwrap();
        let text = render(&pool.metrics_snapshot(), legacy);
        let _ = std::fs::remove_dir_all(&dir);
        text
    }

    #[test]
    fn families_have_their_samples_and_labels() {
        let t = populated(true);
        for line in [
            "# HELP vgpu_pool_hosts Hosts known to the pool by state.\n# TYPE vgpu_pool_hosts gauge\nvgpu_pool_hosts{state=\"alive\"} 2\n",
            "\nvgpu_pool_hosts{state=\"drained\"} 1\n",
            "\nvgpu_pool_gpus 4\n",
            "\nvgpu_pool_sm{kind=\"capacity\"} 528\nvgpu_pool_sm{kind=\"allocated\"} 99\n",
            "\nvgpu_scheduler_decision_seconds_bucket{le=\"+Inf\"} 0\nvgpu_scheduler_decision_seconds_sum 0\nvgpu_scheduler_decision_seconds_count 0\n",
            "\nhami_gpu_shared_count{node=\"h1\",device_uuid=\"GPU-h1-0\",device_index=\"0\",device_type=\"SIM\",device_cores=\"132\"} 1\n",
            "\nhami_resource_quota_used{namespace=\"team-a\",quota_name=\"sm\"} 99\n",
            "\nhami_resource_quota_limit{namespace=\"team-a\",quota_name=\"allocations\"} 5\n",
            "\nGPUDeviceSharedNum{nodeid=\"h1\",deviceuuid=\"GPU-h1-0\",deviceidx=\"0\",devicetype=\"SIM\"} 1\n",
        ] {
            assert!(t.contains(line), "{line:?} missing from:\n{t}");
        }
        // Unlimited quotas have no limit sample; a family without samples keeps its head.
        assert!(!t.contains("hami_resource_quota_limit{namespace=\"team-a\",quota_name=\"sm\"}"));
        assert!(
            t.contains("# TYPE vgpu_pool_releases_total counter\n# HELP"),
            "{t}"
        );
        assert_eq!(t.matches("\nvgpu_slice_sm_count{").count(), 2, "{t}");
        assert!(!populated(false).contains("GPUDevice"));
    }
}

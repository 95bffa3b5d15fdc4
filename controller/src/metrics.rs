//! The controller's Prometheus exposition (`prometheus-client`, through
//! `vgpu_pool_wire::prometheus`).
//!
//! Families: pool-level (`vgpu_pool_*`, `vgpu_scheduler_*`), per host and per GPU health, HAMi
//! scheduler names per physical GPU and per vGPU slice (`hami_*`, HAMi's scales: core figures in
//! percent of a GPU; with `--legacy-metrics` also HAMi's pre-2.9 names), and HAMi quota families
//! per project. DCGM names per physical GPU come from the agents, which are on the GPU hosts.
//! `docs/metrics.md` lists every family.

use std::collections::BTreeMap;
use std::fmt;

use vgpu_pool_wire::prometheus::{self as prom, Encoder, Labels};

use crate::pool::{DECISION_BUCKETS, GpuView, MetricsSnapshot, ProjectView};

/// A GPU's host, UUID, index and model, under the label `names` of a dialect.
fn gpu_labels(g: &GpuView, names: [&'static str; 4]) -> Labels {
    let [host, uuid, index, model] = names;
    vec![
        (host, g.gpu.host.clone()),
        (uuid, g.gpu.info.uuid.clone()),
        (index, g.gpu.info.index.to_string()),
        (model, g.gpu.info.model.clone()),
    ]
}

/// Percent of the GPU's SMs `sm` is (HAMi's core scale: 100 = the whole GPU).
fn core_percent(sm: u64, g: &GpuView) -> f64 {
    100.0 * sm as f64 / f64::from(g.gpu.info.sm_count.max(1))
}

fn with(mut l: Labels, more: impl IntoIterator<Item = (&'static str, String)>) -> Labels {
    l.extend(more);
    l
}

pub fn render(m: &MetricsSnapshot, legacy: bool) -> String {
    let m = m.clone();
    prom::render(move |e| encode(&m, legacy, e))
}

fn encode(m: &MetricsSnapshot, legacy: bool, e: &mut Encoder) -> fmt::Result {
    let c = &m.counters;
    let n = |v: usize| v as i64;
    let alive = m.hosts.iter().filter(|h| h.alive).count();
    let drained = m.hosts.iter().filter(|h| !h.host.schedulable).count();
    prom::gauge(
        e,
        "vgpu_pool_hosts",
        "Hosts known to the pool by state.",
        [
            (vec![("state", "alive".into())], n(alive)),
            (vec![("state", "lost".into())], n(m.hosts.len() - alive)),
            (vec![("state", "drained".into())], n(drained)),
        ],
    )?;
    prom::gauge(
        e,
        "vgpu_pool_host_up",
        "1 while the host's agent heartbeats, 0 once the controller has marked it lost.",
        m.hosts.iter().map(|h| {
            (
                vec![
                    ("host", h.host.name.clone()),
                    ("gpu_source", h.host.gpu_source.clone()),
                ],
                i64::from(h.alive),
            )
        }),
    )?;
    prom::gauge(
        e,
        "vgpu_pool_gpus",
        "Physical GPUs known to the pool.",
        [(Labels::new(), n(m.gpus.len()))],
    )?;
    prom::gauge(
        e,
        "vgpu_pool_gpu_healthy",
        "1 when the GPU is healthy in the pool (operator-set health; unhealthy GPUs get no new slices).",
        m.gpus.iter().map(|g| {
            (
                gpu_labels(g, ["host", "device_uuid", "device_index", "device_type"]),
                i64::from(g.gpu.health == "healthy"),
            )
        }),
    )?;
    let remote = m.allocations.iter().filter(|a| a.remote).count();
    prom::gauge(
        e,
        "vgpu_pool_allocations",
        "Active allocations (slices held by VMs).",
        [
            (
                vec![("remote", "false".into())],
                n(m.allocations.len() - remote),
            ),
            (vec![("remote", "true".into())], n(remote)),
        ],
    )?;
    prom::gauge(
        e,
        "vgpu_pool_remote_sessions",
        "Active allocations served over the network from another host.",
        [(Labels::new(), n(remote))],
    )?;
    let total: u64 = m.gpus.iter().map(|g| g.gpu.info.memory_bytes).sum();
    let alloc: u64 = m.gpus.iter().map(|g| g.memory_allocated_bytes).sum();
    prom::gauge(
        e,
        "vgpu_pool_memory_bytes",
        "GPU memory in the pool.",
        [
            (vec![("kind", "total".into())], total as i64),
            (vec![("kind", "allocated".into())], alloc as i64),
        ],
    )?;
    let cap: u64 = m.gpus.iter().map(|g| g.sm_capacity).sum();
    let sm: u64 = m.gpus.iter().map(|g| g.sm_allocated).sum();
    prom::gauge(
        e,
        "vgpu_pool_sm",
        "SMs in the pool (capacity includes oversubscription).",
        [
            (vec![("kind", "capacity".into())], cap as i64),
            (vec![("kind", "allocated".into())], sm as i64),
        ],
    )?;
    prom::counter(
        e,
        "vgpu_pool_allocation_requests",
        "Allocation requests by result.",
        [
            (vec![("result", "ok".into())], c.allocations_ok),
            (vec![("result", "no_capacity".into())], c.refused_capacity),
            (vec![("result", "quota_exceeded".into())], c.refused_quota),
        ],
    )?;
    prom::counter(
        e,
        "vgpu_pool_remote_allocations",
        "Allocations placed on another host (network fallback).",
        [(Labels::new(), c.allocations_remote)],
    )?;
    prom::counter(
        e,
        "vgpu_pool_releases",
        "Allocations ended, by reason.",
        c.releases
            .iter()
            .map(|(r, v)| (vec![("reason", r.clone())], *v)),
    )?;
    let reclaimed: u64 = c
        .releases
        .iter()
        .filter(|(r, _)| r.as_str() != "released")
        .map(|(_, v)| v)
        .sum();
    prom::counter(
        e,
        "vgpu_pool_reclamations",
        "Slices returned to the pool without an explicit release (lease expiry, lost host, worker exit).",
        [(Labels::new(), reclaimed)],
    )?;
    prom::counter(
        e,
        "vgpu_pool_hosts_lost",
        "Hosts marked lost after their heartbeats stopped.",
        [(Labels::new(), c.hosts_lost)],
    )?;
    let buckets: Vec<(f64, u64)> = DECISION_BUCKETS
        .iter()
        .copied()
        .zip(c.decision_buckets.iter().copied())
        .collect();
    prom::histogram(
        e,
        "vgpu_scheduler_decision_seconds",
        "Time of one placement decision (lock held, store write excluded).",
        c.decision_seconds_sum,
        c.decision_count,
        &buckets,
    )?;

    // HAMi scheduler names per physical GPU; core figures in percent of the GPU.
    let dev = |g: &GpuView| gpu_labels(g, ["node", "device_uuid", "device_index", "device_type"]);
    // HAMi's `device_cores` label: the cores (percent) allocated on the GPU.
    let cores = |g: &GpuView| {
        let pct = core_percent(g.sm_allocated, g).round();
        with(dev(g), [("device_cores", format!("{pct}"))])
    };
    prom::gauge(
        e,
        "hami_gpu_memory_limit_bytes",
        "Total device memory of the GPU, in bytes.",
        m.gpus
            .iter()
            .map(|g| (dev(g), g.gpu.info.memory_bytes as i64)),
    )?;
    prom::gauge(
        e,
        "hami_gpu_core_limit_ratio",
        "Device core capacity of the GPU (0-100 per GPU, times the oversubscription ratio).",
        m.gpus
            .iter()
            .map(|g| (dev(g), 100.0 * g.gpu.oversubscription_ratio)),
    )?;
    prom::gauge(
        e,
        "hami_gpu_memory_allocated_bytes",
        "Device memory given to slices on the GPU, in bytes.",
        m.gpus
            .iter()
            .map(|g| (cores(g), g.memory_allocated_bytes as i64)),
    )?;
    prom::gauge(
        e,
        "hami_gpu_core_allocated_ratio",
        "Percent of the GPU's SMs given to slices (0-100; over 100 when oversubscribed).",
        m.gpus
            .iter()
            .map(|g| (dev(g), core_percent(g.sm_allocated, g))),
    )?;
    prom::gauge(
        e,
        "hami_node_gpu_memory_allocated_ratio",
        "Percent of the GPU's memory given to slices (0-100).",
        m.gpus.iter().map(|g| {
            let r =
                100.0 * g.memory_allocated_bytes as f64 / (g.gpu.info.memory_bytes.max(1)) as f64;
            (
                gpu_labels(g, ["node", "device_uuid", "device_index", "device_type"]),
                r,
            )
        }),
    )?;
    prom::gauge(
        e,
        "hami_gpu_shared_count",
        "Slices on the GPU.",
        m.gpus.iter().map(|g| (dev(g), i64::from(g.slices))),
    )?;
    // HAMi per-vGPU (namespace = project, pod = VM, container_index = vGPU index inside the VM).
    let by_uuid: BTreeMap<&str, &GpuView> = m
        .gpus
        .iter()
        .map(|g| (g.gpu.info.uuid.as_str(), g))
        .collect();
    let mut vidx: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let per_slice: Vec<_> = m
        .allocations
        .iter()
        .map(|a| {
            let i = vidx.entry((&a.project, &a.vm)).or_default();
            let labels: Labels = vec![
                ("namespace", a.project.clone()),
                ("node", a.gpu_host.clone()),
                ("pod", a.vm.clone()),
                ("container_index", i.to_string()),
                ("device_uuid", a.gpu_uuid.clone()),
                ("instance_uuid", a.vm.clone()),
                ("host", a.vm_host.clone()),
                ("remote", a.remote.to_string()),
                (
                    "slice_mode",
                    if a.profile.is_some() {
                        "profile"
                    } else {
                        "arbitrary"
                    }
                    .into(),
                ),
                ("allocation", a.id.clone()),
            ];
            *i += 1;
            (labels, a)
        })
        .collect();
    prom::gauge(
        e,
        "hami_vgpu_memory_allocated_bytes",
        "vGPU memory of the slice, in bytes.",
        per_slice
            .iter()
            .map(|(l, a)| (l.clone(), a.memory_bytes as i64)),
    )?;
    prom::gauge(
        e,
        "hami_vgpu_core_allocated_ratio",
        "vGPU cores of the slice, percent of its GPU's SMs (0-100).",
        per_slice.iter().filter_map(|(l, a)| {
            let g = by_uuid.get(a.gpu_uuid.as_str())?;
            Some((l.clone(), core_percent(u64::from(a.sm_count), g)))
        }),
    )?;
    prom::gauge(
        e,
        "vgpu_slice_sm_count",
        "SMs of the vGPU slice.",
        per_slice
            .iter()
            .map(|(l, a)| (l.clone(), i64::from(a.sm_count))),
    )?;
    let quota = |p: &ProjectView, k: &str| -> Labels {
        vec![
            ("namespace", p.project.name.clone()),
            ("quota_name", k.to_string()),
        ]
    };
    prom::gauge(
        e,
        "hami_resource_quota_used",
        "Quota use per project.",
        m.projects.iter().flat_map(|p| {
            let u = &p.usage;
            [
                ("allocations", u.allocations),
                ("memory_bytes", u.memory_bytes),
                ("sm", u.sm),
            ]
            .map(|(k, v)| (quota(p, k), v as i64))
        }),
    )?;
    prom::gauge(
        e,
        "hami_resource_quota_limit",
        "Quota limit per project (absent = unlimited).",
        m.projects.iter().flat_map(|p| {
            let q = &p.project.quota;
            [
                ("allocations", q.max_allocations),
                ("memory_bytes", q.max_memory_bytes),
                ("sm", q.max_sm),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((quota(p, k), v? as i64)))
        }),
    )?;
    if legacy {
        let ldev = |g: &GpuView| gpu_labels(g, ["nodeid", "deviceuuid", "deviceidx", "devicetype"]);
        prom::gauge(
            e,
            "GPUDeviceMemoryLimit",
            "HAMi legacy: memory of the GPU.",
            m.gpus
                .iter()
                .map(|g| (ldev(g), g.gpu.info.memory_bytes as i64)),
        )?;
        prom::gauge(
            e,
            "GPUDeviceCoreLimit",
            "HAMi legacy: core capacity of the GPU (percent).",
            m.gpus
                .iter()
                .map(|g| (ldev(g), 100.0 * g.gpu.oversubscription_ratio)),
        )?;
        prom::gauge(
            e,
            "GPUDeviceMemoryAllocated",
            "HAMi legacy: memory given to slices.",
            m.gpus.iter().map(|g| {
                let cores = format!("{}", core_percent(g.sm_allocated, g).round());
                (
                    with(ldev(g), [("devicecores", cores)]),
                    g.memory_allocated_bytes as i64,
                )
            }),
        )?;
        prom::gauge(
            e,
            "GPUDeviceCoreAllocated",
            "HAMi legacy: cores given to slices (percent).",
            m.gpus
                .iter()
                .map(|g| (ldev(g), core_percent(g.sm_allocated, g))),
        )?;
        prom::gauge(
            e,
            "GPUDeviceSharedNum",
            "HAMi legacy: slices on the GPU.",
            m.gpus.iter().map(|g| (ldev(g), i64::from(g.slices))),
        )?;
        prom::gauge(
            e,
            "vGPU_device_memory_limit_in_bytes",
            "HAMi legacy: memory limit of the vGPU.",
            m.allocations.iter().map(|a| {
                (
                    vec![
                        ("podnamespace", a.project.clone()),
                        ("podname", a.vm.clone()),
                        ("ctrname", a.id.clone()),
                        ("vdeviceid", "0".into()),
                        ("deviceuuid", a.gpu_uuid.clone()),
                    ],
                    a.memory_bytes as i64,
                )
            }),
        )?;
    }
    Ok(())
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
            "\nvgpu_scheduler_decision_seconds_sum 0.0\nvgpu_scheduler_decision_seconds_count 0\n",
            "\nvgpu_scheduler_decision_seconds_bucket{le=\"+Inf\"} 0\n",
            "\nhami_gpu_shared_count{node=\"h1\",device_uuid=\"GPU-h1-0\",device_index=\"0\",device_type=\"SIM\"} 1\n",
            "\nhami_resource_quota_used{namespace=\"team-a\",quota_name=\"sm\"} 99\n",
            "\nhami_resource_quota_limit{namespace=\"team-a\",quota_name=\"allocations\"} 5\n",
            "\nGPUDeviceSharedNum{nodeid=\"h1\",deviceuuid=\"GPU-h1-0\",deviceidx=\"0\",devicetype=\"SIM\"} 1\n",
        ] {
            assert!(t.contains(line), "{line:?} missing from:\n{t}");
        }
        // Unlimited quotas have no limit sample; a family without samples keeps its head.
        assert!(!t.contains("hami_resource_quota_limit{namespace=\"team-a\",quota_name=\"sm\"}"));
        assert!(
            t.contains("# TYPE vgpu_pool_releases counter\n# HELP"),
            "{t}"
        );
        assert_eq!(t.matches("\nvgpu_slice_sm_count{").count(), 2, "{t}");
        // HAMi's scales: cores in percent of a GPU, `device_cores` what is allocated.
        let line = |name: &str, has: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(has))
                .unwrap_or_else(|| panic!("no {name} with {has} in:\n{t}"))
                .to_string()
        };
        assert!(line("hami_vgpu_core_allocated_ratio", "pod=\"vm1\"").ends_with("} 50.0"));
        assert!(line("hami_vgpu_core_allocated_ratio", "pod=\"vm2\"").ends_with("} 25.0"));
        assert!(line("hami_gpu_core_limit_ratio", "GPU-h1-0").ends_with("} 100.0"));
        let used = line("hami_gpu_core_allocated_ratio", "GPU-h1-0");
        let pct = used.rsplit(' ').next().unwrap();
        assert!(pct == "50.0" || pct == "25.0", "{used}");
        let cores = format!("device_cores=\"{}\"", pct.trim_end_matches(".0"));
        assert!(
            line("hami_gpu_memory_allocated_bytes", "GPU-h1-0").contains(&cores),
            "{t}"
        );
        assert!(
            t.contains("\nvgpu_pool_host_up{host=\"h1\",gpu_source=\"sim\"} 1\n"),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"));
        assert!(!populated(false).contains("GPUDevice"));
    }
}

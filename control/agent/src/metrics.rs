//! The agent's Prometheus endpoint (hand-written text exposition format, tiny HTTP server).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::workers::Workers;
use vgpu_pool_wire::prometheus::{Text, esc};
use vgpu_pool_wire::{Assignment, GpuInfo};

/// What the agent exports.
#[derive(Debug)]
pub struct AgentMetrics {
    host: String,
    gpus: Vec<GpuInfo>,
    pub heartbeats: u64,
    pub heartbeat_failures: u64,
    worker_starts: u64,
    worker_exits: u64,
    worker_start_failures: u64,
    /// Running slices: assignment, worker RSS, device memory the slice holds (its daemon's
    /// ledger, from the worker's status file).
    running: Vec<(Assignment, Option<u64>, Option<u64>)>,
}

impl AgentMetrics {
    pub fn new(host: &str, gpus: &[GpuInfo]) -> Self {
        AgentMetrics {
            host: host.to_string(),
            gpus: gpus.to_vec(),
            heartbeats: 0,
            heartbeat_failures: 0,
            worker_starts: 0,
            worker_exits: 0,
            worker_start_failures: 0,
            running: Vec::new(),
        }
    }

    pub(crate) fn update_workers(&mut self, w: &Workers) {
        self.worker_starts = w.starts;
        self.worker_exits = w.exits;
        self.worker_start_failures = w.start_failures;
        let reports = w.report();
        self.running = w
            .running
            .iter()
            .filter_map(|(id, wk)| {
                let rss = reports
                    .iter()
                    .find(|r| &r.allocation_id == id)
                    .and_then(|r| r.rss_bytes);
                wk.assignment.clone().map(|a| {
                    let used = crate::workers::slice_memory_used(&w.status_path(id));
                    (a, rss, used)
                })
            })
            .collect();
    }

    /// Render the Prometheus text format.
    pub fn render(&self) -> String {
        let mut t = Text::default();
        let h = esc(&self.host);
        // DCGM-exporter names per physical GPU. Only what the agent really knows: the frame buffer
        // size from discovery (MiB, as DCGM reports it). Usage figures (FB_USED, GPU_UTIL) need
        // NVML and are not exported yet.
        t.family(
            "DCGM_FI_DEV_FB_TOTAL",
            "gauge",
            "Total frame buffer of the GPU in MiB.",
            self.gpus.iter().map(|g| {
                let l = format!(
                    "gpu=\"{}\",UUID=\"{}\",pci_bus_id=\"{}\",device=\"nvidia{}\",modelName=\"{}\",Hostname=\"{h}\",hostname=\"{h}\"",
                    g.index,
                    esc(&g.uuid),
                    esc(&g.pci_bus_id),
                    g.index,
                    esc(&g.model)
                );
                (l, g.memory_bytes >> 20)
            }),
        );
        t.family(
            "vgpu_agent_gpu_sim",
            "gauge",
            "1 when the GPU is simulated (CI only).",
            self.gpus.iter().map(|g| {
                let l = format!("host=\"{h}\",device_uuid=\"{}\"", esc(&g.uuid));
                (l, u8::from(g.sim))
            }),
        );
        // HAMi-compatible per-vGPU families (namespace = project, pod = VM, container = vGPU index).
        let slice = |a: &Assignment| {
            format!(
                "namespace=\"{}\",pod=\"{}\",container=\"0\",vdevice_index=\"0\",device_uuid=\"{}\",host=\"{h}\",allocation=\"{}\",remote=\"{}\"",
                esc(&a.project),
                esc(&a.vm),
                esc(&a.gpu_uuid),
                esc(&a.allocation_id),
                a.remote_endpoint.is_some()
            )
        };
        t.family(
            "hami_vgpu_memory_limit_bytes",
            "gauge",
            "Memory limit of the vGPU slice.",
            self.running
                .iter()
                .map(|(a, _, _)| (slice(a), a.memory_bytes)),
        );
        t.family(
            "hami_vgpu_memory_used_bytes",
            "gauge",
            "Device memory the vGPU slice holds (the daemon's ledger).",
            self.running
                .iter()
                .filter_map(|(a, _, used)| Some((slice(a), (*used)?))),
        );
        t.family(
            "vgpu_agent_worker_rss_bytes",
            "gauge",
            "Resident memory of the worker process.",
            self.running.iter().filter_map(|(a, rss, _)| {
                Some((
                    format!("host=\"{h}\",allocation=\"{}\"", esc(&a.allocation_id)),
                    (*rss)?,
                ))
            }),
        );
        let host = format!("host=\"{h}\"");
        t.family(
            "vgpu_agent_workers",
            "gauge",
            "Worker processes running.",
            [(&host, self.running.len() as u64)],
        );
        for (name, help, v) in [
            (
                "vgpu_agent_worker_starts_total",
                "Workers started.",
                self.worker_starts,
            ),
            (
                "vgpu_agent_worker_exits_total",
                "Workers that exited on their own.",
                self.worker_exits,
            ),
            (
                "vgpu_agent_worker_start_failures_total",
                "Workers that could not be started.",
                self.worker_start_failures,
            ),
            (
                "vgpu_agent_heartbeats_total",
                "Heartbeats answered by the controller.",
                self.heartbeats,
            ),
            (
                "vgpu_agent_heartbeat_failures_total",
                "Heartbeats or registrations that failed.",
                self.heartbeat_failures,
            ),
        ] {
            t.family(name, "counter", help, [(&host, v)]);
        }
        t.into_string()
    }
}

/// How long the metrics endpoint waits for a client's request, or for it to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Serve GET /metrics on `addr` from a background thread; returns the bound address.
pub fn serve(
    addr: &str,
    m: Arc<Mutex<AgentMetrics>>,
    _stop: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    std::thread::Builder::new().name("agent-metrics".into()).spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            // One connection at a time, each bounded: a client that sends nothing or reads
            // nothing is dropped after the timeout.
            let _ = c.set_read_timeout(Some(IO_TIMEOUT));
            let _ = c.set_write_timeout(Some(IO_TIMEOUT));
            let mut buf = [0u8; 2048];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body, ctype) = if path == "/metrics" {
                let body = m.lock().unwrap_or_else(|p| p.into_inner()).render();
                ("200 OK", body, "text/plain; version=0.0.4")
            } else {
                ("404 Not Found", "{\"error\":{\"code\":\"not_found\",\"message\":\"only /metrics\"}}".to_string(), "application/json")
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_reports_the_memory_its_worker_says_it_holds() {
        let dir = std::env::temp_dir().join(format!("vgpu-agent-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = dir.join("a1.sock.status");
        let a = Assignment {
            allocation_id: "a1".into(),
            vm: "vm1".into(),
            project: "p".into(),
            gpu_uuid: "GPU-1".into(),
            gpu_arg: "0".into(),
            memory_bytes: 8 << 30,
            sm_count: 66,
            remote_endpoint: None,
        };
        assert_eq!(
            crate::workers::slice_memory_used(&status),
            None,
            "no report yet"
        );
        std::fs::write(
            &status,
            "{\"memory_used_bytes\": 134217728, \"clients\": 1}\n",
        )
        .unwrap();
        let used = crate::workers::slice_memory_used(&status);
        assert_eq!(used, Some(128 << 20));
        let mut m = AgentMetrics::new("h1", &[]);
        m.running = vec![(a, None, used)];
        let text = m.render();
        assert!(
            text.contains("hami_vgpu_memory_used_bytes{namespace=\"p\",pod=\"vm1\",container=\"0\",vdevice_index=\"0\",device_uuid=\"GPU-1\",host=\"h1\",allocation=\"a1\",remote=\"false\"} 134217728"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

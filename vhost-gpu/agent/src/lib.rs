//! Host agent of the vGPU pool.
//!
//! It discovers the host's GPUs (CUDA driver loaded at run time, or `--sim-gpus N` simulated
//! ones), registers them with the controller, heartbeats, and starts and stops one worker
//! process (`vhost-gpu --socket ... --gpu ... --mem-limit ... --sm-count ...`) per allocation the
//! controller assigns to this host. The heartbeat carries what really runs; the answer carries
//! what should run (the controller's view of allocations wins; workers it no longer wants are
//! stopped, and workers that exit are reported and not restarted).
//!
//! Workers are recorded in `<state-dir>/workers/<allocation>.pid`, so an agent that restarts
//! adopts the workers that still run instead of starting second copies.

pub mod discovery;
mod metrics;
pub mod wire;
mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::wire::{HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse};
use crate::workers::Workers;

pub use metrics::AgentMetrics;

/// Command-line arguments of the agent (usable as `vhost-gpu agent` through `#[command(flatten)]`).
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Controller base URL, e.g. http://10.0.0.1:8470; for several controller replicas a
    /// comma-separated list (the agent moves to the next when one cannot be reached).
    #[arg(
        long,
        env = "VGPU_CONTROLLER_URL",
        default_value = "http://127.0.0.1:8470"
    )]
    pub controller: String,
    /// Bearer token for the agent endpoints (the controller's --agent-token or admin token).
    #[arg(long, env = "VGPU_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Host name to register (default: the kernel host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Address other hosts use to reach this host's `vhost-gpu serve`.
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise_addr: String,
    /// Port of this host's `vhost-gpu serve` (network fallback endpoint).
    #[arg(long, default_value_t = 7470)]
    pub serve_port: u16,
    /// Topology labels, `key=value`, repeatable or comma separated (e.g. rack=r1,zone=z1).
    #[arg(long = "label", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Report N simulated H200-like GPUs instead of real ones (CI/testing only).
    #[arg(long)]
    pub sim_gpus: Option<u32>,
    /// Directory for worker sockets and pid files.
    #[arg(long, default_value = "./.vgpu-agent")]
    pub state_dir: PathBuf,
    /// Worker program (default: `vhost-gpu` next to this executable, else from PATH).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// Extra arguments put before the standard worker arguments (repeatable). With
    /// `--worker-bin /bin/sh --worker-arg=-c --worker-arg='exec sleep 600'` a test runs a stand-in.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,
    /// Address of the agent's Prometheus endpoint (GET /metrics); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:9471")]
    pub metrics_addr: String,
    /// Write the bound metrics address to this file (for tests and scripts).
    #[arg(long)]
    pub metrics_addr_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for an https:// controller (e.g. a self-signed one).
    #[arg(long, env = "VGPU_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// HTTP client for the controller's API: global timeout, HTTP error statuses returned as
/// values, and optionally an extra CA certificate (PEM) as the only trusted root.
pub fn http_client(
    ca_cert: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<ureq::Agent> {
    let mut b = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false);
    if let Some(p) = ca_cert {
        let pem =
            std::fs::read(p).with_context(|| format!("reading CA certificate {}", p.display()))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            bail!("no PEM certificate in {}", p.display());
        }
        b = b.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(b.build().new_agent())
}

/// Errors talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("controller does not know this host (it was dropped or the controller lost it)")]
    UnknownHost,
    #[error("controller answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach controller: {0}")]
    Transport(String),
}

struct Client {
    /// Controller replicas (`--controller a,b,c`); requests go to `bases[cur]` and move on to
    /// the next when it cannot be reached.
    bases: Vec<String>,
    cur: std::sync::atomic::AtomicUsize,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(base: &str, token: &str, agent: ureq::Agent) -> Self {
        Client {
            bases: base
                .split(',')
                .map(|b| b.trim().trim_end_matches('/').to_string())
                .filter(|b| !b.is_empty())
                .collect(),
            cur: Default::default(),
            token: token.to_string(),
            agent,
        }
    }

    fn post<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        use std::sync::atomic::Ordering;
        let n = self.bases.len().max(1);
        let start = self.cur.load(Ordering::Relaxed);
        let mut last = ClientError::Transport("no controller URL".into());
        for i in 0..n {
            let at = (start + i) % n;
            match self.post_to(at, path, body) {
                Err(ClientError::Transport(e)) => {
                    if n > 1 {
                        log::warn!(
                            "controller {} unreachable ({e}); trying the next",
                            self.bases[at]
                        );
                    }
                    last = ClientError::Transport(e);
                }
                r => {
                    self.cur.store(at, Ordering::Relaxed);
                    return r;
                }
            }
        }
        Err(last)
    }

    fn post_to<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        at: usize,
        path: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        let Some(base) = self.bases.get(at) else {
            return Err(ClientError::Transport("no controller URL".into()));
        };
        let mut resp = self
            .agent
            .post(&format!("{base}{path}"))
            .header("authorization", &format!("Bearer {}", self.token))
            .send_json(body)
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if status == 404 || status == 410 {
            return Err(ClientError::UnknownHost);
        }
        if status >= 300 {
            return Err(ClientError::Status { status, body: text });
        }
        serde_json::from_str(&text)
            .map_err(|e| ClientError::Transport(format!("bad JSON from controller: {e}")))
    }
}

fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

fn parse_labels(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in raw.iter().filter(|l| !l.is_empty()) {
        let Some((k, v)) = l.split_once('=') else {
            bail!("label {l:?} is not key=value");
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn default_worker_bin() -> PathBuf {
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let cand = dir.join("vhost-gpu");
        if cand.is_file() {
            return cand;
        }
    }
    PathBuf::from("vhost-gpu")
}

/// Run the agent until the process is killed.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    run_until(args, Arc::new(AtomicBool::new(false)))
}

/// Run the agent until `stop` becomes true; then stop the workers it started and return.
pub fn run_until(args: AgentArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(kernel_hostname);
    let labels = parse_labels(&args.labels)?;
    let (gpus, source) = match args.sim_gpus {
        Some(n) => {
            log::warn!(
                "agent {name}: using {n} SIMULATED GPU(s) (--sim-gpus): for CI and testing only, no real GPU work happens"
            );
            (discovery::sim_gpus(&name, n), "sim")
        }
        None => {
            let g = discovery::cuda_gpus().context("GPU discovery")?;
            log::info!(
                "agent {name}: found {} CUDA GPU(s) through the driver",
                g.len()
            );
            (g, "cuda")
        }
    };
    std::fs::create_dir_all(args.state_dir.join("workers"))
        .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;
    let worker_bin = args.worker_bin.clone().unwrap_or_else(default_worker_bin);
    let metrics = Arc::new(Mutex::new(AgentMetrics::new(&name, &gpus)));
    let bound = metrics::serve(&args.metrics_addr, metrics.clone(), stop.clone())
        .with_context(|| format!("binding metrics endpoint {}", args.metrics_addr))?;
    log::info!("agent {name}: metrics on http://{bound}/metrics");
    if let Some(f) = &args.metrics_addr_file {
        std::fs::write(f, bound.to_string())?;
    }
    let mut workers = Workers::new(
        state_dir.join("workers"),
        worker_bin,
        args.worker_args.clone(),
    );
    workers.adopt();
    // The agents' shared token doubles as the pool's secret between slice servers and workers.
    workers.set_remote_token(&args.token);
    // Other hosts' VMs reach this host's GPUs here (the controller hands out this endpoint).
    let _slice_server = if args.serve_port == 0 {
        None
    } else {
        workers.start_slice_server(
            &format!("{}:{}", args.advertise_addr, args.serve_port),
            args.sim_gpus.is_some(),
        )
    };

    let client = Client::new(
        &args.controller,
        &args.token,
        http_client(args.ca_cert.as_deref(), Duration::from_secs(10))?,
    );
    let reg = RegisterRequest {
        name: name.clone(),
        address: args.advertise_addr.clone(),
        serve_port: args.serve_port,
        socket_dir: state_dir.join("sockets").display().to_string(),
        labels,
        gpus,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        gpu_source: source.to_string(),
    };
    std::fs::create_dir_all(state_dir.join("sockets"))?;
    let mut registered = false;
    let mut interval = Duration::from_millis(1000);
    while !stop.load(Ordering::Relaxed) {
        if !registered {
            match client.post::<_, RegisterResponse>("/v1/agents/register", &reg) {
                Ok(r) => {
                    registered = true;
                    interval = Duration::from_millis(r.heartbeat_interval_ms.max(50));
                    log::info!(
                        "agent {name}: registered with {} ({} GPUs)",
                        args.controller,
                        reg.gpus.len()
                    );
                }
                Err(e) => {
                    log::warn!("agent {name}: registration failed: {e}");
                    metrics
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .heartbeat_failures += 1;
                    sleep_unless(&stop, Duration::from_millis(500));
                    continue;
                }
            }
        }
        workers.reap();
        let hb = HeartbeatRequest {
            workers: workers.report(),
        };
        match client.post::<_, HeartbeatResponse>(&format!("/v1/agents/{name}/heartbeat"), &hb) {
            Ok(r) => {
                interval = Duration::from_millis(r.heartbeat_interval_ms.max(50));
                workers.reconcile(&r.assignments);
                let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                m.heartbeats += 1;
                m.update_workers(&workers);
            }
            Err(ClientError::UnknownHost) => {
                log::warn!("agent {name}: controller does not know this host; registering again");
                registered = false;
                continue;
            }
            Err(e) => {
                log::warn!("agent {name}: heartbeat failed: {e}");
                metrics
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .heartbeat_failures += 1;
            }
        }
        sleep_unless(&stop, interval);
    }
    workers.stop_all();
    Ok(())
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !stop.load(Ordering::Relaxed) && !left.is_zero() {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_reject() {
        let l = parse_labels(&["rack=r1".into(), "zone = z1".into()]).unwrap();
        assert_eq!(l.get("rack").unwrap(), "r1");
        assert_eq!(l.get("zone").unwrap(), "z1");
        assert!(parse_labels(&["rack".into()]).is_err());
    }
}

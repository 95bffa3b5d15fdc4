//! Host agent of the vGPU pool.
//!
//! It discovers the host's GPUs (CUDA driver loaded at run time, or `--sim-gpus N` simulated
//! ones), registers them with the controller, heartbeats, and starts and stops one worker
//! process (`vhost-gpu --socket ... --gpu ... --mem-limit ... --sm-count ...`) per allocation the
//! controller assigns to this host. The heartbeat carries what really runs; the answer carries
//! what should run (the controller's view of allocations wins; workers it no longer wants are
//! stopped, and workers that exit are reported and not restarted).
//!
//! Identity: the agent enrols once with the pool's enrolment (agent) token and gets a credential
//! of its own, bound to its host name, which it keeps in `<state-dir>/host.token` (mode 0600).
//! It registers and heartbeats with that credential only; the controller refuses it for any
//! other host.
//!
//! Workers die with the agent (`PR_SET_PDEATHSIG`). They are recorded in
//! `<state-dir>/workers/<allocation>.pid`; a returning agent adopts leftovers that still run
//! (checked by the allocation id in their environment) until the controller's first answer, which
//! stops those whose allocation is gone. Every path comes from the agent's own flags.

pub mod discovery;
mod metrics;
pub mod nvml;
mod workers;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use vgpu_pool_wire::{
    ClientSetupError, EnrollRequest, EnrollResponse, FileError, HeartbeatRequest,
    HeartbeatResponse, RegisterRequest, RegisterResponse, create_private_dir, http_client,
    write_private,
};

use vgpu_protocol::error_chain;

use crate::discovery::DiscoveryError;
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
    /// The pool's enrolment token (the controller's --agent-token): used to obtain this host's
    /// own credential when it has none, and as the pool secret of remote slices.
    #[arg(long, env = "VGPU_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// This host's credential (default `<state-dir>/host.token`): written 0600 at enrolment, or
    /// made by an operator with `vgpuctl host-token NAME`.
    #[arg(long)]
    pub host_token_file: Option<PathBuf>,
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
    /// Report N simulated GPUs when this host has no CUDA driver, instead of failing (what
    /// `vgpu-controller up` asks for).
    #[arg(long, conflicts_with = "sim_gpus")]
    pub sim_gpus_without_driver: Option<u32>,
    /// Directory for the credential, worker sockets (`sockets/`), pid files and logs (`workers/`).
    #[arg(long, default_value = "./.vgpu-agent")]
    pub state_dir: PathBuf,
    /// Directory of the workers' vhost-user sockets and status files (default
    /// `<state-dir>/sockets`; installed: /run/vgpu/sockets).
    #[arg(long)]
    pub socket_dir: Option<PathBuf>,
    /// Mode of the workers' sockets, octal (0660: the agent's user and --socket-group may
    /// connect). Default: as the worker's umask leaves it.
    #[arg(long, value_parser = vgpu_config::socket::parse_mode)]
    pub socket_mode: Option<u32>,
    /// Group of the workers' sockets and their directory, a name or number: the group QEMU runs
    /// in (kvm, libvirt-qemu), so QEMU running as its own user can connect.
    #[arg(long)]
    pub socket_group: Option<String>,
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

/// Creates the workers' socket directory; with a socket group, gives it that group and mode
/// 0750 (so members of the group, QEMU, can reach the sockets in it, and nobody else).
fn socket_dir(dir: &Path, group: Option<&str>) -> Result<Option<u32>, AgentError> {
    std::fs::create_dir_all(dir).map_err(FileError::on("create", dir))?;
    let Some(group) = group else {
        return Ok(None);
    };
    let gid = vgpu_config::socket::group_id(group).map_err(AgentError::SocketGroup)?;
    vgpu_config::socket::apply(dir, Some(0o750), Some(gid)).map_err(AgentError::SocketGroup)?;
    Ok(Some(gid))
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Label {0:?} is not key=value")]
    BadLabel(String),
    #[error("Cannot give the worker sockets their group")]
    SocketGroup(#[source] vgpu_config::socket::SocketError),
    #[error("GPU discovery failed")]
    Discovery(#[source] DiscoveryError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("Cannot bind the metrics endpoint {addr}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot set up the controller client")]
    Client(#[from] ClientSetupError),
    #[error(
        "Host {host} has no credential in {} and no enrolment token (--token): pass the pool's agent token, or write there the credential `vgpuctl host-token {host}` prints",
        path.display()
    )]
    NoCredential { host: String, path: PathBuf },
}

/// Errors talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Controller does not know this host (it was dropped or the controller lost it)")]
    UnknownHost,
    #[error("Controller refused the credential: {0}")]
    Unauthorized(String),
    #[error("Controller answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("No controller URL")]
    NoUrl,
    #[error("Cannot reach the controller")]
    Transport(#[source] ureq::Error),
    #[error("Bad JSON from the controller")]
    BadJson(#[source] serde_json::Error),
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
        self.post_as(&self.token, path, body)
    }

    fn post_as<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        path: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        let n = self.bases.len().max(1);
        let start = self.cur.load(Ordering::Relaxed);
        let mut last = ClientError::NoUrl;
        for i in 0..n {
            let at = (start + i) % n;
            match self.post_to(at, token, path, body) {
                Err(e @ (ClientError::Transport(_) | ClientError::NoUrl)) => {
                    if n > 1 {
                        log::warn!(
                            "controller {} unreachable ({}); trying the next",
                            self.bases[at],
                            error_chain(&e)
                        );
                    }
                    last = e;
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
        token: &str,
        path: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        let Some(base) = self.bases.get(at) else {
            return Err(ClientError::NoUrl);
        };
        let mut resp = self
            .agent
            .post(&format!("{base}{path}"))
            .header("authorization", &format!("Bearer {token}"))
            .send_json(body)
            .map_err(ClientError::Transport)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(ClientError::Transport)?;
        if status == 404 || status == 410 {
            return Err(ClientError::UnknownHost);
        }
        if status == 401 {
            return Err(ClientError::Unauthorized(error_message(&text)));
        }
        if status >= 300 {
            return Err(ClientError::Status {
                status,
                body: error_message(&text),
            });
        }
        serde_json::from_str(&text).map_err(ClientError::BadJson)
    }
}

/// The message of a controller error answer (`{"error": {"message": ...}}`), else the body.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// The host credential stored at `path`, if any (the file is made 0600 if it was wider).
fn read_credential(path: &Path) -> Option<String> {
    let t = std::fs::read_to_string(path).ok()?;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        log::warn!("{} was readable by others; making it 0600", path.display());
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// This host's credential: the stored one, else a new one from enrolling with the pool's
/// enrolment token (then stored 0600 at `path`). Retries until it has one or `stop`; fails when
/// there is neither a stored credential nor an enrolment token.
fn obtain_credential(
    client: &Client,
    name: &str,
    path: &Path,
    enrol: Option<&str>,
    stop: &AtomicBool,
) -> Result<Option<String>, AgentError> {
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = read_credential(path) {
            return Ok(Some(t));
        }
        let Some(enrol) = enrol else {
            return Err(AgentError::NoCredential {
                host: name.to_string(),
                path: path.to_path_buf(),
            });
        };
        match enroll(client, enrol, name) {
            Ok(t) => {
                write_private(path, &format!("{t}\n")).map_err(FileError::on("write", path))?;
                log::info!(
                    "agent {name}: enrolled; this host's credential is in {} (mode 0600)",
                    path.display()
                );
                return Ok(Some(t));
            }
            Err(e) => {
                log::error!(
                    "agent {name}: enrolment failed: {}; an operator can write this host's credential to {}",
                    error_chain(&e),
                    path.display()
                );
                sleep_unless(stop, Duration::from_secs(2));
            }
        }
    }
    Ok(None)
}

fn enroll(client: &Client, enrol_token: &str, name: &str) -> Result<String, ClientError> {
    let r: EnrollResponse = client.post_as(
        enrol_token,
        "/v1/agents/enroll",
        &EnrollRequest {
            host: name.to_string(),
        },
    )?;
    Ok(r.token)
}

fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

fn parse_labels(raw: &[String]) -> Result<BTreeMap<String, String>, AgentError> {
    let mut out = BTreeMap::new();
    for l in raw.iter().filter(|l| !l.is_empty()) {
        let Some((k, v)) = l.split_once('=') else {
            return Err(AgentError::BadLabel(l.clone()));
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
pub fn run(args: AgentArgs) -> Result<(), AgentError> {
    run_until(args, Arc::new(AtomicBool::new(false)))
}

/// Run the agent until `stop` becomes true; then stop the workers it started and return.
pub fn run_until(args: AgentArgs, stop: Arc<AtomicBool>) -> Result<(), AgentError> {
    let name = args.name.clone().unwrap_or_else(kernel_hostname);
    let labels = parse_labels(&args.labels)?;
    let sim = args.sim_gpus.or(args
        .sim_gpus_without_driver
        .filter(|_| !discovery::cuda_driver_present()));
    let (gpus, source) = match sim {
        Some(n) => {
            log::warn!(
                "agent {name}: using {n} SIMULATED GPU(s): for CI and testing only, no real GPU work happens"
            );
            (discovery::sim_gpus(&name, n), "sim")
        }
        None => {
            let g = discovery::cuda_gpus().map_err(AgentError::Discovery)?;
            log::info!(
                "agent {name}: found {} CUDA GPU(s) through the driver",
                g.len()
            );
            (g, "cuda")
        }
    };
    let state_dir = std::fs::create_dir_all(&args.state_dir)
        .and_then(|()| std::fs::canonicalize(&args.state_dir))
        .map_err(FileError::on("create", &args.state_dir))?;
    // Pid files and worker logs: the agent's only. Sockets: reachable by the VMM.
    let workers_dir = state_dir.join("workers");
    create_private_dir(&workers_dir).map_err(FileError::on("create", &workers_dir))?;
    let sockets_dir = args
        .socket_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("sockets"));
    let socket_gid = socket_dir(&sockets_dir, args.socket_group.as_deref())?;
    let cred_path = args
        .host_token_file
        .clone()
        .unwrap_or_else(|| state_dir.join("host.token"));
    let worker_bin = args.worker_bin.clone().unwrap_or_else(default_worker_bin);
    let metrics = Arc::new(Mutex::new(AgentMetrics::new(&name, &gpus)));
    // NVML is read whatever the GPUs' source: it reports the host's real GPUs (none on a CI
    // runner, where it is absent and says so once).
    let telemetry = nvml::start(Duration::from_secs(1));
    let bound = metrics::serve(&args.metrics_addr, metrics.clone(), telemetry, stop.clone())
        .map_err(|source| AgentError::Metrics {
            addr: args.metrics_addr.clone(),
            source,
        })?;
    log::info!("agent {name}: metrics on http://{bound}/metrics");
    if let Some(f) = &args.metrics_addr_file {
        std::fs::write(f, bound.to_string()).map_err(FileError::on("write", f))?;
    }
    let mut workers = Workers::new(
        workers_dir,
        sockets_dir.clone(),
        worker_bin,
        args.worker_args.clone(),
    );
    workers.set_socket_access(args.socket_mode, socket_gid);
    workers.adopt();
    // The pool's enrolment token doubles as the secret between slice servers and workers.
    if let Some(t) = &args.token {
        workers.set_remote_token(t);
    }
    // Other hosts' VMs reach this host's GPUs here (the controller hands out this endpoint);
    // started once the controller's first answer has settled the leftover workers.
    let mut slice_server: Option<workers::SliceServer> = None;
    let mut settled = false;
    // When the slice server was last started: one that dies is started again, once a second
    // at most (remote slices on this host's GPUs would otherwise be lost until a restart).
    let mut server_started: Option<Instant> = None;
    let serve_addr = format!("{}:{}", args.advertise_addr, args.serve_port);

    let mut client = Client::new(
        &args.controller,
        "",
        http_client(args.ca_cert.as_deref(), Duration::from_secs(10))?,
    );
    match obtain_credential(&client, &name, &cred_path, args.token.as_deref(), &stop)? {
        Some(t) => client.token = t,
        None => return Ok(()),
    }
    let reg = RegisterRequest {
        name: name.clone(),
        address: args.advertise_addr.clone(),
        serve_port: args.serve_port,
        socket_dir: sockets_dir.display().to_string(),
        labels,
        gpus,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        gpu_source: source.to_string(),
    };
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
                Err(ClientError::Unauthorized(e)) => {
                    log::error!("agent {name}: registration refused: {e}");
                    refresh_credential(&mut client, &name, &cred_path, args.token.as_deref());
                    lock(&metrics).heartbeat_failures += 1;
                    sleep_unless(&stop, Duration::from_secs(1));
                    continue;
                }
                Err(e) => {
                    log::warn!("agent {name}: registration failed: {}", error_chain(&e));
                    lock(&metrics).heartbeat_failures += 1;
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
                if !settled {
                    settled = true;
                    if args.serve_port != 0 {
                        slice_server = workers.start_slice_server(&serve_addr, sim.is_some());
                        server_started = slice_server.as_ref().map(|_| Instant::now());
                    }
                }
                let mut m = lock(&metrics);
                m.heartbeats += 1;
                m.update_workers(&workers);
            }
            Err(ClientError::Unauthorized(e)) => {
                log::error!("agent {name}: heartbeat refused: {e}");
                refresh_credential(&mut client, &name, &cred_path, args.token.as_deref());
                registered = false;
            }
            Err(ClientError::UnknownHost) => {
                log::warn!("agent {name}: controller does not know this host; registering again");
                registered = false;
                continue;
            }
            Err(e) => {
                log::warn!("agent {name}: heartbeat failed: {}", error_chain(&e));
                lock(&metrics).heartbeat_failures += 1;
            }
        }
        if let Some(t) = server_started
            && t.elapsed() >= Duration::from_secs(1)
            && slice_server
                .as_mut()
                .is_none_or(workers::SliceServer::exited)
        {
            log::warn!(
                "agent {name}: the remote-slice server on {serve_addr} is gone; starting it again"
            );
            slice_server = workers.start_slice_server(&serve_addr, sim.is_some());
            server_started = Some(Instant::now());
        }
        sleep_unless(&stop, interval);
    }
    workers.stop_all();
    drop(slice_server);
    Ok(())
}

/// After the controller refused the credential: take a new one an operator wrote to `path`,
/// else enrol again (which the controller allows only when it has no credential for this host).
fn refresh_credential(client: &mut Client, name: &str, path: &Path, enrol: Option<&str>) {
    if let Some(t) = read_credential(path)
        && t != client.token
    {
        log::info!(
            "agent {name}: using the new credential in {}",
            path.display()
        );
        client.token = t;
        return;
    }
    let Some(enrol) = enrol else { return };
    match enroll(client, enrol, name) {
        Ok(t) => match write_private(path, &format!("{t}\n")) {
            Ok(()) => {
                log::info!(
                    "agent {name}: enrolled again; credential in {}",
                    path.display()
                );
                client.token = t;
            }
            Err(e) => log::error!(
                "agent {name}: cannot store the credential in {}: {e}",
                path.display()
            ),
        },
        Err(e) => log::error!(
            "agent {name}: enrolling again failed: {}; an operator can write this host's credential to {}",
            error_chain(&e),
            path.display()
        ),
    }
}

/// The agent's metrics, also after a thread panicked holding them.
fn lock(metrics: &Mutex<AgentMetrics>) -> std::sync::MutexGuard<'_, AgentMetrics> {
    metrics.lock().unwrap_or_else(|p| p.into_inner())
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

    // Mutation: `socket_dir` not giving the directory its group and 0750 fails this (QEMU in
    // that group could not reach the sockets); an unknown group must stop the agent.
    #[test]
    fn the_socket_directory_gets_the_socket_group() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = std::env::temp_dir().join(format!("vgpu-agent-sockdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        // Root may give any group (CI runs as root); anyone may give their own.
        // SAFETY: geteuid and getegid have no preconditions.
        let gid = if unsafe { libc::geteuid() } == 0 {
            4242
        } else {
            // SAFETY: as above.
            unsafe { libc::getegid() }
        };
        let dir = tmp.join("sockets");
        assert_eq!(socket_dir(&dir, Some(&gid.to_string())).unwrap(), Some(gid));
        let md = std::fs::metadata(&dir).unwrap();
        assert_eq!((md.mode() & 0o777, md.gid()), (0o750, gid));
        assert_eq!(socket_dir(&tmp.join("plain"), None).unwrap(), None);
        assert!(matches!(
            socket_dir(&tmp.join("x"), Some("no-such-group-vgpu")),
            Err(AgentError::SocketGroup(_))
        ));
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

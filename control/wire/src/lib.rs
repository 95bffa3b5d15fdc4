//! What the host agent and the pool controller exchange: the JSON messages of registration,
//! enrolment, heartbeats and worker assignments (one definition for both sides), the HTTP
//! client both use to call the controller's API, the private files (credentials, tokens) both
//! write, and the Prometheus text both expose. No GPU code: the controller links this crate,
//! not the agent.

mod client;
mod files;
pub mod prometheus;

pub use client::{ClientSetupError, http_client};
pub use files::{FileError, create_private, create_private_dir, write_private};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One physical GPU as the agent discovered it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuInfo {
    /// `GPU-xxxxxxxx-...` for CUDA devices, `SIM-GPU-<host>-<n>` for simulated ones.
    pub uuid: String,
    /// CUDA ordinal on the host (or index among simulated GPUs).
    pub index: u32,
    pub model: String,
    pub pci_bus_id: String,
    pub numa_node: Option<i32>,
    pub sm_count: u32,
    pub memory_bytes: u64,
    /// True for a simulated GPU (CI only: never the product).
    pub sim: bool,
}

/// `POST /v1/agents/register`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// Host name, unique in the pool.
    pub name: String,
    /// Address other hosts use to reach this host's `vhost-gpu serve`.
    pub address: String,
    /// Port of this host's `vhost-gpu serve` (network fallback endpoint).
    pub serve_port: u16,
    /// Directory where this host's agent puts worker sockets (its own `<state-dir>/sockets`).
    /// The controller only reports socket paths under it to users; it never sends a path back.
    pub socket_dir: String,
    /// Topology labels such as `rack` and `zone`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub gpus: Vec<GpuInfo>,
    #[serde(default)]
    pub agent_version: String,
    /// `"cuda"` or `"sim"`.
    #[serde(default)]
    pub gpu_source: String,
}

/// `POST /v1/agents/enroll`: asks for this host's own credential.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollRequest {
    pub host: String,
}

/// Answer to an enrolment: the host's credential, shown once (the controller keeps its hash).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub host: String,
    pub token: String,
}

/// Answer to a registration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    pub host: String,
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
}

/// What the agent knows about one worker process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WorkerState {
    Running,
    Exited,
}

/// One worker, as reported in a heartbeat.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerReport {
    pub allocation_id: String,
    pub state: WorkerState,
    pub pid: Option<u32>,
    /// Exit code when `state == exited` (None when killed by a signal).
    pub exit_code: Option<i32>,
    /// Resident memory of the worker process, where readable.
    pub rss_bytes: Option<u64>,
    /// Device memory the slice holds, from the worker's status file (its ledger), where it
    /// reports one.
    #[serde(default)]
    pub memory_used_bytes: Option<u64>,
}

/// `POST /v1/agents/{name}/heartbeat`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub workers: Vec<WorkerReport>,
}

/// Something the controller wants this host to run: one per-VM worker. It carries no
/// filesystem path: the agent derives the socket, pid and log paths from its own state
/// directory and the allocation id (which it checks is a plain name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub allocation_id: String,
    pub vm: String,
    pub project: String,
    pub gpu_uuid: String,
    /// Value for the worker's `--gpu`: `sim` or the CUDA ordinal on the GPU's host.
    pub gpu_arg: String,
    pub memory_bytes: u64,
    pub sm_count: u32,
    /// `host:port` of the GPU host's `vhost-gpu serve` when the slice is remote.
    pub remote_endpoint: Option<String>,
}

/// Answer to a heartbeat: the full set of workers this host should run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    pub assignments: Vec<Assignment>,
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
}

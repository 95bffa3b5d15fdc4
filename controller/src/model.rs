//! Resources of the pool as the API and the store see them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use vgpu_pool_wire::GpuInfo;

/// How a GPU may be cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SliceMode {
    /// All slices on the GPU have one shape at a time: one fixed profile (1/N), or only
    /// arbitrary slices (like NVIDIA's homogeneous vGPU profiles).
    #[default]
    Homogeneous,
    /// Profiles of different sizes and arbitrary slices side by side.
    Mixed,
}

impl SliceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SliceMode::Homogeneous => "homogeneous",
            SliceMode::Mixed => "mixed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "homogeneous" => Some(SliceMode::Homogeneous),
            "mixed" => Some(SliceMode::Mixed),
            _ => None,
        }
    }
}

/// A physical GPU with its operator policy.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Gpu {
    #[serde(flatten)]
    pub info: GpuInfo,
    pub host: String,
    /// `healthy` or `unhealthy`; unhealthy GPUs get no new slices.
    pub health: String,
    pub slice_mode: SliceMode,
    /// Compute oversubscription: the SMs of all slices may add up to `sm_count * ratio`.
    /// Memory is never oversubscribed.
    pub oversubscription_ratio: f64,
}

/// A host running an agent.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub serve_port: u16,
    pub socket_dir: String,
    pub labels: BTreeMap<String, String>,
    /// False when drained by an operator.
    pub schedulable: bool,
    pub gpu_source: String,
    pub registered_at: u64,
}

/// Quota of a project; `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default)]
    pub max_allocations: Option<u64>,
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
    #[serde(default)]
    pub max_sm: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub name: String,
    pub quota: Quota,
    #[serde(skip)]
    pub token_sha256: Option<String>,
    pub created_at: u64,
}

/// The slice a request wants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SliceSpec {
    /// Fixed profile as a fraction of the GPU: "1", "1/2", "1/4", "1/8", ... (power of two).
    #[serde(default)]
    pub profile: Option<String>,
    /// Arbitrary slice: SM count.
    #[serde(default)]
    pub sm_count: Option<u32>,
    /// Arbitrary slice: memory in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Fill the fullest GPU that fits (keeps whole GPUs free).
    #[default]
    Binpack,
    /// Use the emptiest GPU (spreads load).
    Spread,
}

fn default_topology() -> Vec<String> {
    vec!["rack".to_string(), "zone".to_string()]
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Allow a GPU on another host (network fallback) when the VM's host has no room.
    #[serde(default)]
    pub allow_remote: bool,
    #[serde(default)]
    pub strategy: Strategy,
    /// Prefer GPUs on this NUMA node of the VM's host.
    #[serde(default)]
    pub numa_node: Option<i32>,
    /// For remote placement: prefer hosts sharing these labels with the VM's host, in order.
    #[serde(default = "default_topology")]
    pub topology_preference: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_remote: false,
            strategy: Strategy::Binpack,
            numa_node: None,
            topology_preference: default_topology(),
        }
    }
}

/// `POST /v1/allocations`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationRequest {
    /// VM name or instance UUID.
    pub vm: String,
    /// The host the VM runs on.
    pub host: String,
    /// Project; taken from the token for project tokens, required for the admin token.
    #[serde(default)]
    pub project: Option<String>,
    pub slice: SliceSpec,
    #[serde(default)]
    pub policy: Policy,
}

/// An allocation: a VM holds a slice of one GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    pub id: String,
    pub project: String,
    pub vm: String,
    pub vm_host: String,
    pub gpu_uuid: String,
    pub gpu_host: String,
    /// Denominator of the fixed profile (4 for "1/4"), or None for an arbitrary slice.
    pub profile: Option<u32>,
    pub sm_count: u32,
    pub memory_bytes: u64,
    pub remote: bool,
    /// `address:port` of the GPU host's `vhost-gpu serve` for a remote slice.
    pub endpoint: Option<String>,
    /// vhost-user socket of the worker on the VM's host.
    pub socket_path: String,
    /// `pending` until the agent reports the worker running, then `running`.
    pub state: String,
    pub created_at: u64,
    /// Device memory the slice holds now, as its worker last reported it in a heartbeat
    /// (absent until one has; never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
}

/// A slice view (what `GET /v1/slices` lists).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Slice {
    pub id: String,
    pub gpu_uuid: String,
    pub gpu_host: String,
    pub profile: Option<String>,
    pub sm_count: u32,
    pub memory_bytes: u64,
    pub allocation_id: String,
    pub project: String,
    pub vm: String,
}

pub fn profile_label(p: Option<u32>) -> Option<String> {
    p.map(|n| {
        if n == 1 {
            "1".to_string()
        } else {
            format!("1/{n}")
        }
    })
}

/// Parse "1", "1/2", "1/4", ... into the denominator.
pub fn parse_profile(s: &str) -> Option<u32> {
    let s = s.trim();
    let n: u32 = if s == "1" {
        1
    } else {
        s.strip_prefix("1/")?.parse().ok()?
    };
    ((1..=128).contains(&n) && n.is_power_of_two()).then_some(n)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        assert_eq!(parse_profile("1"), Some(1));
        assert_eq!(parse_profile("1/8"), Some(8));
        assert_eq!(parse_profile("1/3"), None);
        assert_eq!(parse_profile("2/4"), None);
        assert_eq!(parse_profile("1/0"), None);
        assert_eq!(profile_label(Some(4)).as_deref(), Some("1/4"));
    }
}

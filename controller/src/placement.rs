//! OpenStack Placement sync (`--placement-url`, off by default; `docs/openstack.md`).
//!
//! Each pass, from the pool's own state:
//!
//! 1. For every pool host, Nova's compute-node resource provider is found by name (the
//!    hypervisor host name, which must be the agent's host name). Under it the sync keeps one
//!    child provider per GPU, `<host>_vgpu_<gpu uuid>`, with the inventories `CUSTOM_VGPU_SM`,
//!    `CUSTOM_VGPU_MEMORY_MB` and one class per fixed profile (`CUSTOM_VGPU_<MODEL>_1_<N>`),
//!    and traits for the model, the slice mode, the compute mode and remote capability.
//!    A GPU whose host serves remote slices also gets a *sharing* provider,
//!    `vgpu_remote_<gpu uuid>` (`MISC_SHARES_VIA_AGGREGATE`), in one aggregate with the
//!    compute nodes of the pool's hosts that have no GPU, so Nova can land an instance there.
//! 2. Placement's allocations against those providers, by consumer (instance UUID), are the
//!    truth for which instance holds which slice: a consumer without a pool allocation gets one
//!    (on the GPU Placement chose, in project `--placement-project`, `vm` = the instance UUID);
//!    a pool allocation of that project whose instance Placement no longer has is released.
//!    Slices made outside Nova (`vgpuctl allocate`) are mirrored the other way: an allocation
//!    under a consumer derived from the allocation id, project `vgpu-pool`, consumer type
//!    `VGPU_POOL`, removed from Placement when the slice is gone.
//! 3. The classes of one GPU share its capacity, which Placement cannot know, so every
//!    inventory's `reserved` is set so that what is left of it is what the pool could still
//!    place of that class now; a drained host or an unhealthy GPU has everything reserved.
//!
//! Every write carries the provider's generation; a 409 re-reads it and tries again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Role;
use crate::model::{Allocation, AllocationRequest, Policy, Quota, SliceMode, SliceSpec};
use crate::pool::{GpuView, HostView, Pool, PoolError};

/// The microversion every request asks for (consumer types need 1.38).
pub const MICROVERSION: &str = "placement 1.38";
pub const RC_SM: &str = "CUSTOM_VGPU_SM";
pub const RC_MEMORY_MB: &str = "CUSTOM_VGPU_MEMORY_MB";
/// Placement project and user of the allocations that mirror slices made outside Nova.
pub const MIRROR_PROJECT: &str = "vgpu-pool";
pub const MIRROR_CONSUMER_TYPE: &str = "VGPU_POOL";
const MIB: u64 = 1 << 20;
const RETRIES: usize = 8;

#[derive(Args, Debug, Clone, Default)]
pub struct PlacementArgs {
    /// OpenStack Placement endpoint (e.g. http://placement:8778); the sync is off without it.
    #[arg(long, env = "VGPU_PLACEMENT_URL")]
    pub placement_url: Option<String>,
    /// Token sent as X-Auth-Token (a Keystone token; `admin` for `auth_strategy = noauth2`).
    #[arg(
        long,
        env = "VGPU_PLACEMENT_TOKEN",
        hide_env_values = true,
        default_value = "admin"
    )]
    pub placement_token: String,
    /// Time between two sync passes.
    #[arg(long, default_value_t = 2_000)]
    pub placement_interval_ms: u64,
    /// Fixed profiles offered as resource classes (denominators: 2 is 1/2).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub placement_profiles: Vec<u32>,
    /// Pool project of the slices Nova's instances hold (created when missing).
    #[arg(long, default_value = "openstack")]
    pub placement_project: String,
    /// Aggregate of the sharing providers and the compute nodes (default: a UUID derived
    /// from the name `vgpu-pool-remote`).
    #[arg(long)]
    pub placement_aggregate: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("{method} {path} failed")]
    Http {
        method: &'static str,
        path: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{method} {path} answered {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{method} {path} still conflicted after {RETRIES} tries")]
    Conflicts { method: &'static str, path: String },
    #[error("Bad answer to {path}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Pool refused")]
    Pool(#[from] PoolError),
}

/// A deterministic UUID (version 5 layout) from a name.
pub fn uuid_from(name: &str) -> String {
    let h = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Placement consumer of the mirror of a pool allocation made outside Nova.
pub fn mirror_consumer(allocation_id: &str) -> String {
    uuid_from(&format!("vgpu-pool-allocation:{allocation_id}"))
}

/// `NVIDIA H200` -> `H200`, `SIM H200 (simulated, ...)` -> `SIM_H200`: words up to the first
/// with a digit, `NVIDIA` left out, upper case, `[A-Z0-9_]` only.
pub fn model_token(model: &str) -> String {
    let mut words = Vec::new();
    for w in model.split_whitespace() {
        if w.eq_ignore_ascii_case("nvidia") {
            continue;
        }
        let w: String = w
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if w.is_empty() {
            continue;
        }
        let digit = w.chars().any(|c| c.is_ascii_digit());
        words.push(w);
        if digit || words.len() == 3 {
            break;
        }
    }
    if words.is_empty() {
        "GPU".to_string()
    } else {
        words.join("_")
    }
}

/// `CUSTOM_VGPU_H200_1_2` for the 1/2 profile of an H200.
pub fn profile_class(model: &str, n: u32) -> String {
    format!("CUSTOM_VGPU_{}_1_{n}", model_token(model))
}

/// The denominator of a profile class of this model, if `rc` is one.
pub fn parse_profile_class(model: &str, rc: &str) -> Option<u32> {
    let prefix = format!("CUSTOM_VGPU_{}_1_", model_token(model));
    rc.strip_prefix(&prefix)?.parse().ok()
}

/// Traits of a GPU's providers.
pub fn gpu_traits(g: &GpuView, remote_capable: bool) -> Vec<String> {
    let mut t = vec![
        format!("CUSTOM_VGPU_MODEL_{}", model_token(&g.gpu.info.model)),
        format!(
            "CUSTOM_VGPU_SLICE_{}",
            g.gpu.slice_mode.as_str().to_ascii_uppercase()
        ),
        if g.gpu.oversubscription_ratio > 1.0 {
            "CUSTOM_VGPU_COMPUTE_OVERSUBSCRIBED".to_string()
        } else {
            "CUSTOM_VGPU_COMPUTE_DEDICATED".to_string()
        },
    ];
    if remote_capable {
        t.push("CUSTOM_VGPU_REMOTE_CAPABLE".into());
    }
    t
}

/// One inventory record.
#[derive(Clone, Debug, PartialEq)]
pub struct Inventory {
    pub total: u64,
    pub reserved: u64,
    pub max_unit: u64,
    pub allocation_ratio: f64,
}

impl Inventory {
    fn json(&self) -> Value {
        json!({"total": self.total, "reserved": self.reserved, "min_unit": 1,
               "max_unit": self.max_unit, "step_size": 1,
               "allocation_ratio": self.allocation_ratio})
    }
}

/// What the inventories of one GPU's provider must say. `used` is what Placement counts as
/// allocated per class on that provider; `allocs` are the pool's allocations on the GPU.
/// Each class keeps `used` plus what the pool could still place of that class.
pub fn inventories(
    g: &GpuView,
    drained: bool,
    profiles: &[u32],
    allocs: &[&Allocation],
    used: &BTreeMap<String, u64>,
) -> BTreeMap<String, Inventory> {
    let ratio = g.gpu.oversubscription_ratio.max(1.0);
    let sm_total = u64::from(g.gpu.info.sm_count);
    let mem_total = g.gpu.info.memory_bytes;
    let sm_free = g.sm_capacity.saturating_sub(g.sm_allocated);
    let mem_free = mem_total.saturating_sub(g.memory_allocated_bytes);
    let homogeneous = g.gpu.slice_mode == SliceMode::Homogeneous;
    let shapes: BTreeSet<Option<u32>> = allocs.iter().map(|a| a.profile).collect();
    let only_shape = |s: Option<u32>| !homogeneous || shapes.iter().all(|x| *x == s);
    // reserved so that (total - reserved) * ratio is used + free, never below zero
    let inv = |total: u64, used: u64, free: u64, ratio: f64| {
        let keep = if drained {
            0
        } else {
            (((used + free) as f64) / ratio).ceil() as u64
        };
        Inventory {
            total,
            reserved: total.saturating_sub(keep),
            max_unit: total,
            allocation_ratio: ratio,
        }
    };
    let u = |rc: &str| used.get(rc).copied().unwrap_or(0);
    let mut out = BTreeMap::new();
    let custom_ok = only_shape(None);
    out.insert(
        RC_SM.to_string(),
        inv(
            sm_total,
            u(RC_SM),
            if custom_ok { sm_free } else { 0 },
            ratio,
        ),
    );
    out.insert(
        RC_MEMORY_MB.to_string(),
        inv(
            mem_total / MIB,
            u(RC_MEMORY_MB),
            if custom_ok { mem_free / MIB } else { 0 },
            1.0,
        ),
    );
    for &n in profiles {
        if n == 0 || !n.is_power_of_two() || n > 128 {
            continue;
        }
        let rc = profile_class(&g.gpu.info.model, n);
        let sm_one = sm_total / u64::from(n);
        let mem_one = mem_total / u64::from(n);
        let free = if only_shape(Some(n)) && sm_one > 0 && mem_one > 0 {
            (sm_free / sm_one).min(mem_free / mem_one)
        } else {
            0
        };
        out.insert(rc.clone(), inv(u64::from(n), u(&rc), free, ratio));
    }
    out
}

/// One consumer's allocations as Placement holds them.
#[derive(Clone, Debug, PartialEq)]
pub struct Consumer {
    pub uuid: String,
    pub project_id: String,
    /// Resource provider -> class -> amount, over every provider (the compute node's VCPU etc.
    /// included).
    pub resources: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Where a provider of ours stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct OurProvider {
    pub gpu_uuid: String,
    pub gpu_host: String,
    pub model: String,
    pub sharing: bool,
}

/// What one pass changes.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A Nova consumer without a slice: allocate on `gpu_uuid` for an instance on `vm_host`.
    Allocate {
        consumer: String,
        gpu_uuid: String,
        vm_host: String,
        slice: SliceSpec,
        remote: bool,
    },
    /// A pool slice of Nova's project whose instance Placement no longer has.
    Release {
        allocation: String,
        consumer: String,
    },
    /// A slice made outside Nova without its mirror in Placement: a fixed profile as its
    /// class (amount 1), an arbitrary slice as SMs and memory.
    Mirror {
        allocation: String,
        consumer: String,
        provider: String,
        resources: BTreeMap<String, u64>,
    },
    /// A mirror whose slice is gone.
    DeleteMirror { consumer: String },
    /// A consumer of our providers that cannot be turned into a slice.
    Skip { consumer: String, why: String },
}

/// Decide what one pass does: Placement's consumers against the pool's allocations.
/// `compute_nodes` maps compute-node provider UUIDs to pool host names; `gpu_provider` maps a
/// GPU UUID to its child provider (for mirrors); `profiles` are the profile classes offered.
pub fn plan(
    project: &str,
    profiles: &[u32],
    allocs: &[Allocation],
    consumers: &[Consumer],
    ours: &HashMap<String, OurProvider>,
    compute_nodes: &HashMap<String, String>,
    gpu_provider: &HashMap<String, String>,
) -> Vec<Action> {
    let mut out = Vec::new();
    let by_vm: HashMap<&str, &Allocation> = allocs
        .iter()
        .filter(|a| a.project == project)
        .map(|a| (a.vm.as_str(), a))
        .collect();
    let mirrors: HashMap<String, &Allocation> = allocs
        .iter()
        .filter(|a| a.project != project)
        .map(|a| (mirror_consumer(&a.id), a))
        .collect();
    let mut instances = BTreeSet::new();
    let mut mirrored = BTreeSet::new();
    for c in consumers {
        if c.project_id == MIRROR_PROJECT {
            if mirrors.contains_key(&c.uuid) {
                mirrored.insert(c.uuid.clone());
            } else {
                out.push(Action::DeleteMirror {
                    consumer: c.uuid.clone(),
                });
            }
            continue;
        }
        instances.insert(c.uuid.clone());
        if by_vm.contains_key(c.uuid.as_str()) {
            continue;
        }
        let mut mine = c
            .resources
            .iter()
            .filter_map(|(rp, r)| Some((ours.get(rp)?, r)));
        let Some((p, res)) = mine.next() else {
            continue;
        };
        if mine.next().is_some() {
            out.push(Action::Skip {
                consumer: c.uuid.clone(),
                why: "holds more than one vGPU provider; one slice per instance".into(),
            });
            continue;
        }
        let vm_host = c
            .resources
            .keys()
            .find_map(|rp| compute_nodes.get(rp))
            .cloned()
            .unwrap_or_else(|| p.gpu_host.clone());
        let profile = res
            .iter()
            .find_map(|(rc, n)| Some((parse_profile_class(&p.model, rc)?, *n)));
        let slice = match (profile, res.get(RC_SM), res.get(RC_MEMORY_MB)) {
            (Some((n, 1)), None, None) => SliceSpec {
                profile: Some(if n == 1 { "1".into() } else { format!("1/{n}") }),
                sm_count: None,
                memory_bytes: None,
            },
            (None, Some(&sm), Some(&mb)) if sm > 0 && mb > 0 => SliceSpec {
                profile: None,
                sm_count: Some(u32::try_from(sm).unwrap_or(u32::MAX)),
                memory_bytes: Some(mb * MIB),
            },
            _ => {
                out.push(Action::Skip {
                    consumer: c.uuid.clone(),
                    why: format!(
                        "asks for {res:?}: one profile class with amount 1, or both {RC_SM} and {RC_MEMORY_MB}"
                    ),
                });
                continue;
            }
        };
        out.push(Action::Allocate {
            consumer: c.uuid.clone(),
            gpu_uuid: p.gpu_uuid.clone(),
            remote: vm_host != p.gpu_host,
            vm_host,
            slice,
        });
    }
    for a in allocs.iter().filter(|a| a.project == project) {
        if !instances.contains(&a.vm) {
            out.push(Action::Release {
                allocation: a.id.clone(),
                consumer: a.vm.clone(),
            });
        }
    }
    for (consumer, a) in &mirrors {
        if mirrored.contains(consumer) {
            continue;
        }
        if let Some(rp) = gpu_provider.get(&a.gpu_uuid) {
            let model = ours.get(rp).map_or("", |p| p.model.as_str());
            let resources = match a.profile {
                Some(n) if profiles.contains(&n) => BTreeMap::from([(profile_class(model, n), 1)]),
                _ => BTreeMap::from([
                    (RC_SM.to_string(), u64::from(a.sm_count)),
                    (RC_MEMORY_MB.to_string(), a.memory_bytes.div_ceil(MIB)),
                ]),
            };
            out.push(Action::Mirror {
                allocation: a.id.clone(),
                consumer: consumer.clone(),
                provider: rp.clone(),
                resources,
            });
        }
    }
    out
}

/// HTTP to Placement.
struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), PlacementError> {
        let url = format!("{}{path}", self.base);
        let err = |source| PlacementError::Http {
            method,
            path: path.to_string(),
            source,
        };
        let h = |b: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
            b.header("OpenStack-API-Version", MICROVERSION)
                .header("X-Auth-Token", &self.token)
                .header("Accept", "application/json")
        };
        let hb = |b: ureq::RequestBuilder<ureq::typestate::WithBody>| {
            b.header("OpenStack-API-Version", MICROVERSION)
                .header("X-Auth-Token", &self.token)
                .header("Accept", "application/json")
        };
        let empty = json!({});
        let resp = match method {
            "GET" => h(self.agent.get(&url)).call(),
            "DELETE" => h(self.agent.delete(&url)).call(),
            "PUT" => hb(self.agent.put(&url)).send_json(body.unwrap_or(&empty)),
            "POST" => hb(self.agent.post(&url)).send_json(body.unwrap_or(&empty)),
            _ => unreachable!("method {method}"),
        };
        let mut resp = resp.map_err(err)?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(err)?;
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|source| PlacementError::Json {
                path: path.to_string(),
                source,
            })?
        };
        Ok((status, v))
    }

    /// A call that must answer 2xx (409 is returned to the caller as `Ok(None)`).
    fn ok(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, PlacementError> {
        let (status, v) = self.call(method, path, body)?;
        match status {
            200..=299 => Ok(Some(v)),
            409 => Ok(None),
            _ => Err(PlacementError::Status {
                method,
                path: path.to_string(),
                status,
                body: v.to_string(),
            }),
        }
    }

    fn get(&self, path: &str) -> Result<Value, PlacementError> {
        self.ok("GET", path, None)?
            .ok_or_else(|| PlacementError::Status {
                method: "GET",
                path: path.to_string(),
                status: 409,
                body: String::new(),
            })
    }

    fn generation(&self, rp: &str) -> Result<u64, PlacementError> {
        let v = self.get(&format!("/resource_providers/{rp}"))?;
        Ok(v["generation"].as_u64().unwrap_or(0))
    }

    /// PUT a provider's sub-resource with its generation; on 409 read it again and retry.
    fn put_generation(&self, rp: &str, what: &str, mut body: Value) -> Result<(), PlacementError> {
        let path = format!("/resource_providers/{rp}/{what}");
        for _ in 0..RETRIES {
            body["resource_provider_generation"] = json!(self.generation(rp)?);
            if self.ok("PUT", &path, Some(&body))?.is_some() {
                return Ok(());
            }
        }
        Err(PlacementError::Conflicts {
            method: "PUT",
            path,
        })
    }

    fn provider_by_name(&self, name: &str) -> Result<Option<String>, PlacementError> {
        let v = self.get(&format!("/resource_providers?name={}", encode(name)))?;
        Ok(v["resource_providers"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|p| p["uuid"].as_str())
            .map(str::to_string))
    }

    fn ensure_provider(&self, name: &str, parent: Option<&str>) -> Result<String, PlacementError> {
        if let Some(u) = self.provider_by_name(name)? {
            return Ok(u);
        }
        let uuid = uuid_from(&format!("vgpu-pool-provider:{name}"));
        let mut body = json!({"name": name, "uuid": uuid});
        if let Some(p) = parent {
            body["parent_provider_uuid"] = json!(p);
        }
        // 409: another writer created it meanwhile
        self.ok("POST", "/resource_providers", Some(&body))?;
        Ok(uuid)
    }
}

/// Percent-encoding for a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What a pass did, for the log and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PassReport {
    pub providers: usize,
    pub actions: Vec<Action>,
    pub hosts_without_compute_node: Vec<String>,
}

/// The sync: one `pass` at a time, from a thread of its own (`spawn`).
pub struct Sync {
    pool: Arc<Pool>,
    args: PlacementArgs,
    client: Client,
    known: BTreeSet<String>,
    aggregate: String,
}

impl Sync {
    pub fn new(pool: Arc<Pool>, args: PlacementArgs, base: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let aggregate = args
            .placement_aggregate
            .clone()
            .unwrap_or_else(|| uuid_from("vgpu-pool-remote"));
        Sync {
            pool,
            client: Client {
                agent,
                base: base.trim_end_matches('/').to_string(),
                token: args.placement_token.clone(),
            },
            args,
            known: BTreeSet::new(),
            aggregate,
        }
    }

    /// Create a custom resource class or trait once.
    fn ensure_name(&mut self, kind: &str, name: &str) -> Result<(), PlacementError> {
        let key = format!("{kind}/{name}");
        if self.known.contains(&key) {
            return Ok(());
        }
        self.client.ok("PUT", &format!("/{kind}/{name}"), None)?;
        self.known.insert(key);
        Ok(())
    }

    /// One pass: providers, inventories, traits, aggregates; consumers; the plan carried out;
    /// inventories again from what it changed.
    pub fn pass(&mut self) -> Result<PassReport, PlacementError> {
        let mut report = PassReport::default();
        let hosts: Vec<HostView> = self.pool.hosts();
        let gpus: Vec<GpuView> = self.pool.gpus();
        let mut compute_nodes = HashMap::new();
        let mut cn_of_host = HashMap::new();
        for h in &hosts {
            match self.client.provider_by_name(&h.host.name)? {
                Some(u) => {
                    compute_nodes.insert(u.clone(), h.host.name.clone());
                    cn_of_host.insert(h.host.name.clone(), u);
                }
                None => report.hosts_without_compute_node.push(h.host.name.clone()),
            }
        }
        let mut ours: HashMap<String, OurProvider> = HashMap::new();
        let mut gpu_provider = HashMap::new();
        let mut providers_of_gpu: Vec<(String, GpuView, bool)> = Vec::new();
        let any_remote = gpus.iter().any(|g| self.remote_capable(&hosts, g));
        for g in &gpus {
            let Some(cn) = cn_of_host.get(&g.gpu.host) else {
                continue;
            };
            let name = format!("{}_vgpu_{}", g.gpu.host, g.gpu.info.uuid);
            let rp = self.client.ensure_provider(&name, Some(cn))?;
            let p = OurProvider {
                gpu_uuid: g.gpu.info.uuid.clone(),
                gpu_host: g.gpu.host.clone(),
                model: g.gpu.info.model.clone(),
                sharing: false,
            };
            ours.insert(rp.clone(), p.clone());
            gpu_provider.insert(g.gpu.info.uuid.clone(), rp.clone());
            providers_of_gpu.push((rp, g.clone(), false));
            if self.remote_capable(&hosts, g) {
                let srp = self
                    .client
                    .ensure_provider(&format!("vgpu_remote_{}", g.gpu.info.uuid), None)?;
                ours.insert(srp.clone(), OurProvider { sharing: true, ..p });
                providers_of_gpu.push((srp, g.clone(), true));
            }
        }
        report.providers = providers_of_gpu.len();
        // classes and traits, then traits and aggregates of each provider
        let mut names = vec![RC_SM.to_string(), RC_MEMORY_MB.to_string()];
        for g in &gpus {
            for &n in &self.args.placement_profiles {
                names.push(profile_class(&g.gpu.info.model, n));
            }
        }
        for n in names {
            self.ensure_name("resource_classes", &n)?;
        }
        for (rp, g, sharing) in &providers_of_gpu {
            let mut traits = gpu_traits(g, self.remote_capable(&hosts, g));
            if *sharing {
                traits.push("MISC_SHARES_VIA_AGGREGATE".into());
            }
            for t in traits.iter().filter(|t| t.starts_with("CUSTOM_")) {
                self.ensure_name("traits", t)?;
            }
            traits.sort();
            let have = self
                .client
                .get(&format!("/resource_providers/{rp}/traits"))?;
            let mut now = strings(&have["traits"]);
            now.sort();
            if now != traits {
                self.client
                    .put_generation(rp, "traits", json!({"traits": traits}))?;
            }
            if *sharing {
                self.ensure_aggregate(rp)?;
            }
        }
        // Only hosts without a GPU see the sharing providers: a GPU host takes its own
        // GPUs' child providers, so one instance never finds the same GPU twice.
        if any_remote {
            for (host, cn) in &cn_of_host {
                if !gpus.iter().any(|g| &g.gpu.host == host) {
                    self.ensure_aggregate(cn)?;
                }
            }
        }
        // inventories first from the pool as it is, so new providers can be allocated from
        self.update_inventories(&hosts, &providers_of_gpu)?;
        // consumers of our providers
        let mut seen = BTreeSet::new();
        let mut consumers = Vec::new();
        for rp in ours.keys() {
            let v = self
                .client
                .get(&format!("/resource_providers/{rp}/allocations"))?;
            if let Some(m) = v["allocations"].as_object() {
                for c in m.keys() {
                    if seen.insert(c.clone()) {
                        consumers.push(self.consumer(c)?);
                    }
                }
            }
        }
        let allocs = self.pool.allocations(&Role::Admin);
        let actions = plan(
            &self.args.placement_project,
            &self.args.placement_profiles,
            &allocs,
            &consumers,
            &ours,
            &compute_nodes,
            &gpu_provider,
        );
        for a in &actions {
            if let Err(e) = self.carry_out(a) {
                log::warn!("placement sync: {a:?}: {}", vgpu_protocol::error_chain(&e));
            } else if !matches!(a, Action::Skip { .. }) {
                log::info!("placement sync: {a:?}");
            }
            if let Action::Skip { consumer, why } = a {
                log::warn!("placement sync: consumer {consumer} left alone: {why}");
            }
        }
        if !actions.is_empty() {
            self.update_inventories(&self.pool.hosts(), &providers_of_gpu)?;
        }
        report.actions = actions;
        Ok(report)
    }

    fn remote_capable(&self, hosts: &[HostView], g: &GpuView) -> bool {
        hosts
            .iter()
            .any(|h| h.host.name == g.gpu.host && h.host.serve_port != 0)
    }

    fn ensure_aggregate(&self, rp: &str) -> Result<(), PlacementError> {
        let v = self
            .client
            .get(&format!("/resource_providers/{rp}/aggregates"))?;
        let mut aggs = strings(&v["aggregates"]);
        if aggs.contains(&self.aggregate) {
            return Ok(());
        }
        aggs.push(self.aggregate.clone());
        self.client
            .put_generation(rp, "aggregates", json!({"aggregates": aggs}))
    }

    fn consumer(&self, uuid: &str) -> Result<Consumer, PlacementError> {
        let v = self.client.get(&format!("/allocations/{uuid}"))?;
        let mut resources = BTreeMap::new();
        if let Some(m) = v["allocations"].as_object() {
            for (rp, a) in m {
                let r: BTreeMap<String, u64> = a["resources"]
                    .as_object()
                    .map(|r| {
                        r.iter()
                            .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                            .collect()
                    })
                    .unwrap_or_default();
                resources.insert(rp.clone(), r);
            }
        }
        Ok(Consumer {
            uuid: uuid.to_string(),
            project_id: v["project_id"].as_str().unwrap_or_default().to_string(),
            resources,
        })
    }

    fn update_inventories(
        &self,
        hosts: &[HostView],
        providers: &[(String, GpuView, bool)],
    ) -> Result<(), PlacementError> {
        let gpus: HashMap<String, GpuView> = self
            .pool
            .gpus()
            .into_iter()
            .map(|g| (g.gpu.info.uuid.clone(), g))
            .collect();
        let allocs = self.pool.allocations(&Role::Admin);
        for (rp, g, _) in providers {
            let Some(g) = gpus.get(&g.gpu.info.uuid) else {
                continue;
            };
            let drained = hosts
                .iter()
                .find(|h| h.host.name == g.gpu.host)
                .is_none_or(|h| !h.host.schedulable || !h.alive)
                || g.gpu.health != "healthy";
            let on_gpu: Vec<&Allocation> = allocs
                .iter()
                .filter(|a| a.gpu_uuid == g.gpu.info.uuid)
                .collect();
            let usages = self
                .client
                .get(&format!("/resource_providers/{rp}/usages"))?;
            let used: BTreeMap<String, u64> = usages["usages"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default();
            let want = inventories(g, drained, &self.args.placement_profiles, &on_gpu, &used);
            let have = self
                .client
                .get(&format!("/resource_providers/{rp}/inventories"))?;
            let same = want.iter().all(|(rc, i)| {
                let h = &have["inventories"][rc];
                h["total"].as_u64() == Some(i.total)
                    && h["reserved"].as_u64() == Some(i.reserved)
                    && h["max_unit"].as_u64() == Some(i.max_unit)
                    && h["allocation_ratio"]
                        .as_f64()
                        .is_some_and(|r| (r - i.allocation_ratio).abs() < 1e-6)
            }) && have["inventories"]
                .as_object()
                .is_some_and(|m| m.len() == want.len());
            if same {
                continue;
            }
            let inv: serde_json::Map<String, Value> =
                want.iter().map(|(k, i)| (k.clone(), i.json())).collect();
            self.client
                .put_generation(rp, "inventories", json!({"inventories": inv}))?;
        }
        Ok(())
    }

    fn carry_out(&self, a: &Action) -> Result<(), PlacementError> {
        match a {
            Action::Allocate {
                consumer,
                gpu_uuid,
                vm_host,
                slice,
                remote,
            } => {
                self.ensure_project()?;
                let req = AllocationRequest {
                    vm: consumer.clone(),
                    host: vm_host.clone(),
                    project: Some(self.args.placement_project.clone()),
                    slice: slice.clone(),
                    policy: Policy {
                        allow_remote: *remote,
                        ..Policy::default()
                    },
                };
                self.pool
                    .allocate_on(&Role::Admin, req, Some(gpu_uuid.as_str()))?;
            }
            Action::Release { allocation, .. } => {
                match self.pool.release(&Role::Admin, allocation) {
                    Ok(_) | Err(PoolError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Action::Mirror {
                consumer,
                provider,
                resources,
                ..
            } => {
                let body = json!({
                    "allocations": {provider: {"resources": resources}},
                    "project_id": MIRROR_PROJECT, "user_id": MIRROR_PROJECT,
                    "consumer_generation": null, "consumer_type": MIRROR_CONSUMER_TYPE,
                });
                if self
                    .client
                    .ok("PUT", &format!("/allocations/{consumer}"), Some(&body))?
                    .is_none()
                {
                    log::warn!(
                        "placement sync: mirror {consumer} refused (409): retried next pass"
                    );
                }
            }
            Action::DeleteMirror { consumer } => {
                let (status, v) =
                    self.client
                        .call("DELETE", &format!("/allocations/{consumer}"), None)?;
                if !(200..300).contains(&status) && status != 404 {
                    return Err(PlacementError::Status {
                        method: "DELETE",
                        path: format!("/allocations/{consumer}"),
                        status,
                        body: v.to_string(),
                    });
                }
            }
            Action::Skip { .. } => {}
        }
        Ok(())
    }

    fn ensure_project(&self) -> Result<(), PoolError> {
        match self
            .pool
            .create_project(&self.args.placement_project, Quota::default())
        {
            Ok(_) | Err(PoolError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Run the sync every `--placement-interval-ms` on a thread of its own, when a URL is given.
pub fn spawn(pool: Arc<Pool>, args: &PlacementArgs) -> Option<std::thread::JoinHandle<()>> {
    let url = args.placement_url.clone()?;
    let every = Duration::from_millis(args.placement_interval_ms.max(100));
    let mut sync = Sync::new(pool, args.clone(), &url);
    log::info!("placement sync on {url} every {every:?}");
    let t = std::thread::Builder::new()
        .name("placement-sync".into())
        .spawn(move || {
            let mut last_missing = Vec::new();
            loop {
                match sync.pass() {
                    Ok(r) => {
                        if r.hosts_without_compute_node != last_missing {
                            for h in &r.hosts_without_compute_node {
                                log::warn!(
                                    "placement sync: no compute-node provider named {h:?} (Nova's hypervisor host name must be the agent's host name)"
                                );
                            }
                            last_missing = r.hosts_without_compute_node;
                        }
                    }
                    Err(e) => log::warn!("placement sync: {}", vgpu_protocol::error_chain(&e)),
                }
                std::thread::sleep(every);
            }
        });
    match t {
        Ok(t) => Some(t),
        Err(e) => {
            log::error!("cannot start the placement sync thread: {e}");
            None
        }
    }
}

/// The strings of a JSON array (Placement's trait and aggregate lists); none for anything else.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gpu, GpuInfo};

    const H200: &str = "NVIDIA H200";

    fn gpu(sm_alloc: u64, mem_alloc: u64, mode: SliceMode) -> GpuView {
        GpuView {
            gpu: Gpu {
                info: GpuInfo {
                    uuid: "GPU-1".into(),
                    index: 0,
                    model: H200.into(),
                    pci_bus_id: "0000:00:06.0".into(),
                    numa_node: None,
                    sm_count: 132,
                    memory_bytes: 140 << 30,
                    sim: false,
                },
                host: "kvm-1".into(),
                health: "healthy".into(),
                slice_mode: mode,
                oversubscription_ratio: 1.0,
            },
            sm_capacity: 132,
            sm_allocated: sm_alloc,
            memory_allocated_bytes: mem_alloc,
            memory_free_bytes: (140 << 30) - mem_alloc,
            slices: 0,
        }
    }

    fn alloc(id: &str, project: &str, vm: &str, profile: Option<u32>) -> Allocation {
        Allocation {
            id: id.into(),
            project: project.into(),
            vm: vm.into(),
            vm_host: "kvm-1".into(),
            gpu_uuid: "GPU-1".into(),
            gpu_host: "kvm-1".into(),
            profile,
            sm_count: 66,
            memory_bytes: 70 << 30,
            remote: false,
            endpoint: None,
            socket_path: format!("/s/{id}.sock"),
            state: "running".into(),
            created_at: 0,
            memory_used_bytes: None,
        }
    }

    #[test]
    fn names() {
        assert_eq!(model_token("NVIDIA H200"), "H200");
        assert_eq!(
            model_token("SIM H200 (simulated, not a real GPU)"),
            "SIM_H200"
        );
        assert_eq!(profile_class(H200, 2), "CUSTOM_VGPU_H200_1_2");
        assert_eq!(parse_profile_class(H200, "CUSTOM_VGPU_H200_1_4"), Some(4));
        assert_eq!(parse_profile_class(H200, "CUSTOM_VGPU_SM"), None);
        let u = uuid_from("x");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "5");
        assert_ne!(mirror_consumer("a-1"), mirror_consumer("a-2"));
    }

    /// Mutations caught: `reserved` from the GPU's totals instead of its free capacity (the
    /// half-used GPU would offer two more 1/2 slices), the homogeneous rule left out (SMs
    /// offered next to a profile slice), `drained` ignored.
    #[test]
    fn reserved_follows_what_the_pool_can_still_place() {
        let profiles = [1, 2, 4];
        // empty GPU: everything offered
        let g = gpu(0, 0, SliceMode::Homogeneous);
        let inv = inventories(&g, false, &profiles, &[], &BTreeMap::new());
        assert_eq!(inv[RC_SM].reserved, 0);
        assert_eq!(inv[RC_MEMORY_MB].total, 140 * 1024);
        assert_eq!(inv[RC_MEMORY_MB].reserved, 0);
        assert_eq!(inv["CUSTOM_VGPU_H200_1_2"].total, 2);
        assert_eq!(inv["CUSTOM_VGPU_H200_1_2"].reserved, 0);
        // one 1/2 slice held by a Placement consumer: one more 1/2 fits (used 1 + free 1 = 2),
        // nothing of another shape on a homogeneous GPU
        let a = alloc("a-1", "openstack", "i-1", Some(2));
        let used = BTreeMap::from([("CUSTOM_VGPU_H200_1_2".to_string(), 1)]);
        let g = gpu(66, 70 << 30, SliceMode::Homogeneous);
        let inv = inventories(&g, false, &profiles, &[&a], &used);
        assert_eq!(inv["CUSTOM_VGPU_H200_1_2"].reserved, 0);
        assert_eq!(inv["CUSTOM_VGPU_H200_1_4"].reserved, 4);
        assert_eq!(inv["CUSTOM_VGPU_H200_1_1"].reserved, 1);
        assert_eq!(inv[RC_SM].reserved, 132);
        assert_eq!(inv[RC_MEMORY_MB].reserved, 140 * 1024);
        // the same slice made outside Placement (not in `used`): only one 1/2 left to offer
        let inv = inventories(&g, false, &profiles, &[&a], &BTreeMap::new());
        assert_eq!(inv["CUSTOM_VGPU_H200_1_2"].reserved, 1);
        // mixed: the other shapes get what is left
        let g = gpu(66, 70 << 30, SliceMode::Mixed);
        let inv = inventories(&g, false, &profiles, &[&a], &used);
        assert_eq!(inv["CUSTOM_VGPU_H200_1_4"].reserved, 2);
        assert_eq!(inv[RC_SM].reserved, 66);
        assert_eq!(inv[RC_MEMORY_MB].reserved, 70 * 1024);
        // drained: nothing offered
        let inv = inventories(&gpu(0, 0, SliceMode::Mixed), true, &profiles, &[], &used);
        assert!(inv.values().all(|i| i.reserved == i.total), "{inv:?}");
    }

    fn consumer(uuid: &str, project: &str, res: &[(&str, &[(&str, u64)])]) -> Consumer {
        Consumer {
            uuid: uuid.into(),
            project_id: project.into(),
            resources: res
                .iter()
                .map(|(rp, r)| {
                    (
                        rp.to_string(),
                        r.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Mutations caught: dropping any of the four directions (allocate for a new consumer,
    /// release an orphan slice, mirror a slice made outside Nova, delete an orphan mirror),
    /// taking the GPU's host instead of the compute node as the VM's host, mirroring a
    /// profile slice as SMs (a homogeneous GPU has no SMs to offer next to a profile).
    #[test]
    fn plan_reconciles_both_ways() {
        let ours = HashMap::from([
            (
                "rp-gpu".to_string(),
                OurProvider {
                    gpu_uuid: "GPU-1".into(),
                    gpu_host: "kvm-1".into(),
                    model: H200.into(),
                    sharing: false,
                },
            ),
            (
                "rp-share".to_string(),
                OurProvider {
                    gpu_uuid: "GPU-1".into(),
                    gpu_host: "kvm-1".into(),
                    model: H200.into(),
                    sharing: true,
                },
            ),
        ]);
        let cns = HashMap::from([
            ("cn-1".to_string(), "kvm-1".to_string()),
            ("cn-2".to_string(), "kvm-2".to_string()),
        ]);
        let gp = HashMap::from([("GPU-1".to_string(), "rp-gpu".to_string())]);
        let allocs = vec![
            alloc("a-kept", "openstack", "i-kept", Some(2)),
            alloc("a-orphan", "openstack", "i-gone", Some(2)),
            alloc("a-cli", "default", "myvm", None),
            alloc("a-cli2", "default", "myvm2", None),
            alloc("a-cli3", "default", "myvm3", Some(2)),
        ];
        let consumers = vec![
            consumer(
                "i-kept",
                "p",
                &[
                    ("cn-1", &[("VCPU", 1)]),
                    ("rp-gpu", &[("CUSTOM_VGPU_H200_1_2", 1)]),
                ],
            ),
            consumer(
                "i-new",
                "p",
                &[
                    ("cn-1", &[("VCPU", 1)]),
                    ("rp-gpu", &[("CUSTOM_VGPU_H200_1_2", 1)]),
                ],
            ),
            consumer(
                "i-remote",
                "p",
                &[
                    ("cn-2", &[("VCPU", 1)]),
                    ("rp-share", &[(RC_SM, 10), (RC_MEMORY_MB, 1024)]),
                ],
            ),
            consumer(
                "i-odd",
                "p",
                &[("cn-1", &[]), ("rp-gpu", &[("CUSTOM_VGPU_H200_1_2", 2)])],
            ),
            consumer(
                &mirror_consumer("a-cli"),
                MIRROR_PROJECT,
                &[("rp-gpu", &[])],
            ),
            consumer(
                &mirror_consumer("a-old"),
                MIRROR_PROJECT,
                &[("rp-gpu", &[])],
            ),
        ];
        let mut got = plan("openstack", &[1, 2], &allocs, &consumers, &ours, &cns, &gp);
        got.sort_by_key(|a| format!("{a:?}"));
        let mut want = vec![
            Action::Allocate {
                consumer: "i-new".into(),
                gpu_uuid: "GPU-1".into(),
                vm_host: "kvm-1".into(),
                slice: SliceSpec {
                    profile: Some("1/2".into()),
                    sm_count: None,
                    memory_bytes: None,
                },
                remote: false,
            },
            Action::Allocate {
                consumer: "i-remote".into(),
                gpu_uuid: "GPU-1".into(),
                vm_host: "kvm-2".into(),
                slice: SliceSpec {
                    profile: None,
                    sm_count: Some(10),
                    memory_bytes: Some(1024 * MIB),
                },
                remote: true,
            },
            Action::Release {
                allocation: "a-orphan".into(),
                consumer: "i-gone".into(),
            },
            Action::Mirror {
                allocation: "a-cli2".into(),
                consumer: mirror_consumer("a-cli2"),
                provider: "rp-gpu".into(),
                resources: BTreeMap::from([(RC_SM.into(), 66), (RC_MEMORY_MB.into(), 70 * 1024)]),
            },
            Action::Mirror {
                allocation: "a-cli3".into(),
                consumer: mirror_consumer("a-cli3"),
                provider: "rp-gpu".into(),
                resources: BTreeMap::from([("CUSTOM_VGPU_H200_1_2".into(), 1)]),
            },
            Action::DeleteMirror {
                consumer: mirror_consumer("a-old"),
            },
        ];
        want.sort_by_key(|a| format!("{a:?}"));
        let skips: Vec<_> = got
            .iter()
            .filter(|a| matches!(a, Action::Skip { .. }))
            .cloned()
            .collect();
        assert_eq!(skips.len(), 1, "{got:?}");
        got.retain(|a| !matches!(a, Action::Skip { .. }));
        assert_eq!(got, want);
    }
}

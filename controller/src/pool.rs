//! The pool: the store, the capacity index, leases and counters behind one lock.
//!
//! Every change goes: lock -> validate -> decide -> write the store -> change memory -> unlock.
//! So the store never lags the memory view, and two racing requests are serialised.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use vgpu_pool_wire::{
    Assignment, EnrollResponse, HeartbeatRequest, HeartbeatResponse, RegisterRequest,
    RegisterResponse, WorkerState,
};

use crate::auth::{Role, new_token, sha256_hex};
use crate::model::{
    Allocation, AllocationRequest, Gpu, Host, Project, Quota, Slice, SliceMode, now_ms,
    parse_profile, profile_label,
};
use crate::scheduler::{GpuSpec, Index, PlaceError, PlaceRequest, Shape, Want};
use crate::store::{Change, Leadership, Store, StoreError};
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Forbidden(String),
    /// `reason`: which quota, `allocations`, `memory` or `sm`.
    #[error("{message}")]
    QuotaExceeded {
        reason: &'static str,
        message: String,
    },
    /// `reason`: the constraint that refused the slice (`scheduler::PlaceError::NoCapacity`).
    #[error("{message}")]
    NoCapacity {
        reason: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("Store failed")]
    Store(#[from] StoreError),
}

#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// A host or allocation not renewed for this long is reclaimed.
    pub lease_ttl: Duration,
    /// Interval the agents are told to heartbeat at.
    pub heartbeat_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
        }
    }
}

struct AllocRt {
    a: Allocation,
    gpu: u32,
    lease_expires: Instant,
}

struct HostRt {
    info: Host,
    last_seen: Instant,
    alive: bool,
}

#[derive(Default, Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Usage {
    pub allocations: u64,
    pub memory_bytes: u64,
    pub sm: u64,
}

/// Counters for /metrics (since this controller process started).
#[derive(Default, Debug, Clone)]
pub struct Counters {
    pub allocations_ok: u64,
    pub allocations_remote: u64,
    pub refused_capacity: u64,
    pub refused_quota: u64,
    pub releases: BTreeMap<String, u64>,
    pub hosts_lost: u64,
    pub decision_seconds_sum: f64,
    pub decision_count: u64,
    /// Histogram buckets (seconds) of placement decision time.
    pub decision_buckets: [u64; DECISION_BUCKETS.len()],
}

pub const DECISION_BUCKETS: [f64; 8] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05];

struct Inner {
    store: Box<dyn Store>,
    index: Index,
    hosts: BTreeMap<String, HostRt>,
    gpus: BTreeMap<String, Gpu>,
    projects: BTreeMap<String, Project>,
    project_by_token: HashMap<String, String>,
    /// Host credential hash -> host, and host -> its credential hash.
    host_by_token: HashMap<String, String>,
    host_token: HashMap<String, String>,
    usage: HashMap<String, Usage>,
    allocs: BTreeMap<String, AllocRt>,
    by_vm_host: HashMap<String, BTreeSet<String>>,
    counters: Counters,
    id_nonce: u32,
    id_seq: u64,
    /// Lease time, for changes other replicas made (replicated stores).
    lease_ttl: Duration,
    /// Leadership epoch this pool last ran reclamation under (replicated stores).
    leader_epoch: Option<u64>,
}

pub struct Pool {
    inner: Mutex<Inner>,
    pub cfg: PoolConfig,
}

/// Host as listed by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostView {
    #[serde(flatten)]
    pub host: Host,
    pub alive: bool,
    pub last_seen_ms_ago: u64,
    pub gpus: usize,
    pub allocations: usize,
    /// Whether the host has its own agent credential.
    pub enrolled: bool,
}

/// GPU as listed by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GpuView {
    #[serde(flatten)]
    pub gpu: Gpu,
    pub sm_capacity: u64,
    pub sm_allocated: u64,
    pub memory_allocated_bytes: u64,
    pub memory_free_bytes: u64,
    pub slices: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectView {
    #[serde(flatten)]
    pub project: Project,
    pub usage: Usage,
}

/// Result of creating a project: the only time the token is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectCreated {
    pub name: String,
    pub quota: Quota,
    pub token: String,
}

/// Snapshot for /metrics.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub counters: Counters,
    pub gpus: Vec<GpuView>,
    pub hosts: Vec<HostView>,
    pub allocations: Vec<Allocation>,
    pub projects: Vec<ProjectView>,
}

/// Lock the pool and bring its view up to what other replicas committed (replicated stores).
fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    let changes = g.store.poll_changes();
    if !changes.is_empty() {
        g.apply_changes(changes);
    }
    g
}

fn shape_of(a: &Allocation) -> Shape {
    a.profile.map(Shape::Profile).unwrap_or(Shape::Custom)
}

fn valid_name(kind: &str, s: &str) -> Result<(), PoolError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(PoolError::BadRequest(format!(
            "{kind} {s:?} must be 1-128 characters of [A-Za-z0-9._:-]"
        )))
    }
}

/// The socket directory an agent reports: an absolute, plain path (it only shows in the
/// allocations' `socket_path`; the agent never takes a path from the controller).
fn valid_socket_dir(s: &str) -> Result<(), PoolError> {
    let ok = s.starts_with('/')
        && s.len() <= 1024
        && !s.chars().any(char::is_control)
        && s.split('/').all(|seg| seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(PoolError::BadRequest(format!(
            "socket_dir {s:?} must be an absolute path without . or .. components"
        )))
    }
}

impl Pool {
    /// Build the pool from what the store holds. Every known host gets a fresh lease.
    pub fn open(mut store: Box<dyn Store>, cfg: PoolConfig) -> Result<Self, PoolError> {
        let snap = store.load()?;
        let now = Instant::now();
        let nonce = u32::from_le_bytes(crate::auth::random_bytes());
        let mut inner = Inner {
            store,
            index: Index::default(),
            hosts: BTreeMap::new(),
            gpus: BTreeMap::new(),
            projects: BTreeMap::new(),
            project_by_token: HashMap::new(),
            host_by_token: HashMap::new(),
            host_token: HashMap::new(),
            usage: HashMap::new(),
            allocs: BTreeMap::new(),
            by_vm_host: HashMap::new(),
            counters: Counters::default(),
            id_nonce: nonce,
            id_seq: 0,
            lease_ttl: cfg.lease_ttl,
            leader_epoch: None,
        };
        let mut gpus_by_host: HashMap<String, Vec<Gpu>> = HashMap::new();
        for g in snap.gpus {
            gpus_by_host.entry(g.host.clone()).or_default().push(g);
        }
        for h in snap.hosts {
            let gs = gpus_by_host.remove(&h.name).unwrap_or_default();
            inner.index_host(&h, &gs);
            for g in gs {
                inner.gpus.insert(g.info.uuid.clone(), g);
            }
            inner.hosts.insert(
                h.name.clone(),
                HostRt {
                    info: h,
                    last_seen: now,
                    alive: true,
                },
            );
        }
        for (host, hash) in snap.host_credentials {
            inner.host_by_token.insert(hash.clone(), host.clone());
            inner.host_token.insert(host, hash);
        }
        for p in snap.projects {
            if let Some(t) = &p.token_sha256 {
                inner.project_by_token.insert(t.clone(), p.name.clone());
            }
            inner.projects.insert(p.name.clone(), p);
        }
        if !inner.projects.contains_key("default") {
            let p = Project {
                name: "default".into(),
                quota: Quota::default(),
                token_sha256: None,
                created_at: now_ms(),
            };
            inner.store.put_project(&p)?;
            inner.projects.insert(p.name.clone(), p);
        }
        let n = snap.allocations.len();
        for a in snap.allocations {
            let Some(&g) = inner.index.gpu_ix.get(&a.gpu_uuid) else {
                log::error!(
                    "allocation {} names unknown GPU {}; releasing it",
                    a.id,
                    a.gpu_uuid
                );
                inner.store.release_allocations(
                    std::slice::from_ref(&a.id),
                    "gpu_unknown_at_start",
                    now_ms(),
                )?;
                continue;
            };
            inner.add_alloc(a, g, now + cfg.lease_ttl);
        }
        log::info!(
            "pool loaded: {} hosts, {} GPUs, {} projects, {n} active allocations",
            inner.hosts.len(),
            inner.gpus.len(),
            inner.projects.len()
        );
        Ok(Pool {
            inner: Mutex::new(inner),
            cfg,
        })
    }

    /// Role of a token that is not a static (admin/agent) one: a project's or a host's.
    pub fn role_for_token_hash(&self, hash: &str) -> Option<Role> {
        let inner = lock(&self.inner);
        if let Some(p) = inner.project_by_token.get(hash) {
            return Some(Role::Project(p.clone()));
        }
        inner.host_by_token.get(hash).map(|h| Role::Host(h.clone()))
    }

    /// Issue host `name` its own credential. The enrolment token may do so only for a host that
    /// has none (first enrolment); the admin may always (a new credential replaces the old one,
    /// which stops working at once).
    pub fn enroll(&self, role: &Role, name: &str) -> Result<EnrollResponse, PoolError> {
        valid_name("host name", name)?;
        let mut inner = lock(&self.inner);
        match role {
            Role::Admin => {}
            Role::Agent if inner.host_token.contains_key(name) => {
                return Err(PoolError::Conflict(format!(
                    "host {name:?} is already enrolled; an operator can issue it a new credential (vgpuctl host-token {name})"
                )));
            }
            Role::Agent => {}
            Role::Host(_) | Role::Project(_) => {
                return Err(PoolError::Forbidden(
                    "enrolment needs the pool's agent token or the admin token".into(),
                ));
            }
        }
        let token = new_token();
        let hash = sha256_hex(&token);
        inner.store.put_host_credential(name, &hash, now_ms())?;
        if let Some(old) = inner.host_token.insert(name.to_string(), hash.clone()) {
            inner.host_by_token.remove(&old);
        }
        inner.host_by_token.insert(hash, name.to_string());
        log::info!(
            "host {name}: credential issued ({})",
            if *role == Role::Admin {
                "by the admin"
            } else {
                "first enrolment"
            }
        );
        Ok(EnrollResponse {
            host: name.to_string(),
            token,
        })
    }

    pub fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, PoolError> {
        valid_name("host name", &req.name)?;
        valid_socket_dir(&req.socket_dir)?;
        let mut seen = BTreeSet::new();
        for g in &req.gpus {
            valid_name("gpu uuid", &g.uuid)?;
            if !seen.insert(&g.uuid) {
                return Err(PoolError::BadRequest(format!(
                    "GPU {} listed twice",
                    g.uuid
                )));
            }
            if g.sm_count == 0 || g.memory_bytes == 0 {
                return Err(PoolError::BadRequest(format!(
                    "GPU {} reports no SMs or no memory",
                    g.uuid
                )));
            }
        }
        let mut inner = lock(&self.inner);
        for g in &req.gpus {
            if let Some(old) = inner.gpus.get(&g.uuid)
                && old.host != req.name
                && inner.hosts.get(&old.host).is_some_and(|h| h.alive)
            {
                return Err(PoolError::Conflict(format!(
                    "GPU {} is registered by live host {}",
                    g.uuid, old.host
                )));
            }
        }
        let prev = inner.hosts.get(&req.name).map(|h| h.info.clone());
        let host = Host {
            name: req.name.clone(),
            address: req.address,
            serve_port: req.serve_port,
            socket_dir: req.socket_dir,
            labels: req.labels,
            schedulable: prev.as_ref().is_none_or(|p| p.schedulable),
            gpu_source: req.gpu_source,
            registered_at: now_ms(),
        };
        let gpus: Vec<Gpu> = req
            .gpus
            .into_iter()
            .map(|info| {
                let old = inner.gpus.get(&info.uuid);
                Gpu {
                    host: host.name.clone(),
                    health: old
                        .map(|o| o.health.clone())
                        .unwrap_or_else(|| "healthy".into()),
                    slice_mode: old.map(|o| o.slice_mode).unwrap_or_default(),
                    oversubscription_ratio: old.map(|o| o.oversubscription_ratio).unwrap_or(1.0),
                    info,
                }
            })
            .collect();
        inner.store.upsert_host(&host, &gpus)?;
        let old_uuids: Vec<String> = match inner.index.host_ix.get(&host.name) {
            Some(&h) => inner.index.hosts[h as usize]
                .gpus
                .iter()
                .map(|&g| inner.index.gpus[g as usize].uuid.clone())
                .collect(),
            None => Vec::new(),
        };
        for u in old_uuids {
            inner.gpus.remove(&u);
        }
        inner.index_host(&host, &gpus);
        for g in gpus {
            inner.gpus.insert(g.info.uuid.clone(), g);
        }
        let now = Instant::now();
        let h = inner.index.host_ix[&host.name];
        inner.index.hosts[h as usize].alive = true;
        log::info!(
            "host {} registered ({} GPUs, {}){}",
            host.name,
            inner.index.hosts[h as usize].gpus.len(),
            host.gpu_source,
            if prev.is_some() { " again" } else { "" }
        );
        // A returning host's allocations get a fresh lease; its heartbeat then says what runs.
        let ids: Vec<String> = inner
            .by_vm_host
            .get(&host.name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            if let Some(a) = inner.allocs.get_mut(&id) {
                a.lease_expires = now + self.cfg.lease_ttl;
            }
        }
        inner.hosts.insert(
            host.name.clone(),
            HostRt {
                info: host.clone(),
                last_seen: now,
                alive: true,
            },
        );
        Ok(RegisterResponse {
            host: host.name,
            heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u64,
            lease_ttl_ms: self.cfg.lease_ttl.as_millis() as u64,
        })
    }

    pub fn heartbeat(
        &self,
        host: &str,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, PoolError> {
        let mut inner = lock(&self.inner);
        match inner.hosts.get_mut(host) {
            Some(h) if h.alive => h.last_seen = Instant::now(),
            _ => {
                return Err(PoolError::NotFound {
                    kind: "live host",
                    id: host.to_string(),
                });
            }
        }
        let now = Instant::now();
        let running: Vec<String> = req
            .workers
            .iter()
            .filter(|w| w.state == WorkerState::Running)
            .map(|w| w.allocation_id.clone())
            .collect();
        inner.store.record_heartbeat(host, &running)?;
        for w in req.workers {
            let Some(a) = inner.allocs.get(&w.allocation_id) else {
                continue;
            };
            if a.a.vm_host != host {
                continue;
            }
            match w.state {
                WorkerState::Running => {
                    let a = inner
                        .allocs
                        .get_mut(&w.allocation_id)
                        .expect("checked above");
                    a.lease_expires = now + self.cfg.lease_ttl;
                    a.a.memory_used_bytes = w.memory_used_bytes;
                    if a.a.state != "running" {
                        a.a.state = "running".into();
                        inner
                            .store
                            .set_allocation_state(&w.allocation_id, "running")?;
                    }
                }
                WorkerState::Exited => {
                    let reason = if w.exit_code == Some(0) {
                        "vm_stopped"
                    } else {
                        "worker_exited"
                    };
                    log::info!(
                        "allocation {} released: worker on {host} exited ({:?})",
                        w.allocation_id,
                        w.exit_code
                    );
                    inner.release(std::slice::from_ref(&w.allocation_id), reason)?;
                }
            }
        }
        let assignments = inner.assignments(host);
        Ok(HeartbeatResponse {
            assignments,
            heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u64,
            lease_ttl_ms: self.cfg.lease_ttl.as_millis() as u64,
        })
    }

    /// Reclaim what expired: dead hosts and allocations whose lease was not renewed.
    /// Returns the number of allocations released.
    pub fn reclaim(&self, now: Instant) -> Result<usize, PoolError> {
        let mut inner = lock(&self.inner);
        let ttl = self.cfg.lease_ttl;
        match inner.store.leadership() {
            Leadership::Sole => {}
            Leadership::Follower => return Ok(0),
            Leadership::Leader { epoch } if inner.leader_epoch != Some(epoch) => {
                // A new leader may not have heard the last heartbeats, and while etcd was
                // unavailable none got through: one lease of grace.
                log::info!("leader (epoch {epoch}): every host and allocation gets a fresh lease");
                inner.leader_epoch = Some(epoch);
                inner.refresh_leases(now + ttl);
                return Ok(0);
            }
            Leadership::Leader { .. } => {}
        }
        let mut lost = Vec::new();
        for (name, h) in inner.hosts.iter_mut() {
            if h.alive && h.last_seen + ttl < now {
                h.alive = false;
                lost.push(name.clone());
            }
        }
        let mut released = 0;
        for name in &lost {
            log::warn!(
                "host {name}: no heartbeat for {ttl:?}; marked lost, its slices return to the pool"
            );
            inner.counters.hosts_lost += 1;
            if let Some(&h) = inner.index.host_ix.get(name) {
                inner.index.hosts[h as usize].alive = false;
            }
            let ids: Vec<String> = inner
                .allocs
                .values()
                .filter(|a| &a.a.vm_host == name || &a.a.gpu_host == name)
                .map(|a| a.a.id.clone())
                .collect();
            released += ids.len();
            inner.release(&ids, "host_lost")?;
        }
        let expired: Vec<String> = inner
            .allocs
            .values()
            .filter(|a| a.lease_expires < now)
            .map(|a| a.a.id.clone())
            .collect();
        if !expired.is_empty() {
            log::warn!(
                "{} allocation lease(s) expired: {:?}",
                expired.len(),
                expired
            );
            released += expired.len();
            inner.release(&expired, "lease_expired")?;
        }
        Ok(released)
    }

    pub fn allocate(&self, role: &Role, req: AllocationRequest) -> Result<Allocation, PoolError> {
        self.allocate_on(role, req, None)
    }

    /// `allocate`, on the GPU `only_gpu` (by UUID) or nowhere: for a placement another
    /// scheduler already decided (OpenStack Placement, `placement.rs`).
    pub fn allocate_on(
        &self,
        role: &Role,
        req: AllocationRequest,
        only_gpu: Option<&str>,
    ) -> Result<Allocation, PoolError> {
        let project = match role {
            Role::Project(p) => {
                if req.project.as_ref().is_some_and(|x| x != p) {
                    return Err(PoolError::Forbidden(format!(
                        "a token of project {p:?} cannot allocate for another project"
                    )));
                }
                p.clone()
            }
            Role::Admin => req.project.clone().unwrap_or_else(|| "default".to_string()),
            Role::Agent | Role::Host(_) => {
                return Err(PoolError::Forbidden("agent tokens cannot allocate".into()));
            }
        };
        valid_name("vm", &req.vm)?;
        let want = match (
            &req.slice.profile,
            req.slice.sm_count,
            req.slice.memory_bytes,
        ) {
            (Some(p), None, None) => Want::Profile(parse_profile(p).ok_or_else(|| {
                PoolError::BadRequest(format!(
                    "profile {p:?} is not one of 1, 1/2, 1/4, 1/8, ... 1/128"
                ))
            })?),
            (None, Some(sm), Some(mem)) => {
                if sm == 0 || mem == 0 {
                    return Err(PoolError::BadRequest(
                        "sm_count and memory_bytes must be greater than zero".into(),
                    ));
                }
                Want::Custom { sm, mem }
            }
            _ => {
                return Err(PoolError::BadRequest(
                    "slice must give either `profile` or both `sm_count` and `memory_bytes`".into(),
                ));
            }
        };
        let started = Instant::now();
        let mut inner = lock(&self.inner);
        let mut attempts = 0;
        // Replicated stores: a commit another replica's change invalidated is decided again.
        let (a, gpu) = loop {
            let quota = inner
                .projects
                .get(&project)
                .ok_or_else(|| PoolError::NotFound {
                    kind: "project",
                    id: project.clone(),
                })?
                .quota
                .clone();
            match inner.hosts.get(&req.host) {
                None => {
                    return Err(PoolError::NotFound {
                        kind: "host",
                        id: req.host.clone(),
                    });
                }
                // Its agent would never start the worker; the lease would only expire.
                Some(h) if !h.alive => {
                    return Err(PoolError::Conflict(format!(
                        "host {:?} is lost (no heartbeat from its agent); cannot start a worker there",
                        req.host
                    )));
                }
                Some(_) => {}
            }
            // The count quota is known before placement; memory and SMs depend on the GPU chosen.
            let used = inner.usage.get(&project).copied().unwrap_or_default();
            if let Some(lim) = quota.max_allocations
                && used.allocations + 1 > lim
            {
                inner.counters.refused_quota += 1;
                return Err(PoolError::QuotaExceeded {
                    reason: "allocations",
                    message: format!(
                        "quota exceeded for project {project:?}: allocations would be {} (in use {}, limit {lim})",
                        used.allocations + 1,
                        used.allocations
                    ),
                });
            }
            let preq = PlaceRequest {
                vm_host: &req.host,
                want,
                allow_remote: req.policy.allow_remote,
                strategy: req.policy.strategy,
                numa: req.policy.numa_node,
                topology: &req.policy.topology_preference,
                only_gpu: match only_gpu {
                    None => None,
                    Some(u) => {
                        Some(
                            *inner
                                .index
                                .gpu_ix
                                .get(u)
                                .ok_or_else(|| PoolError::NotFound {
                                    kind: "gpu",
                                    id: u.to_string(),
                                })?,
                        )
                    }
                },
            };
            let decision = inner.index.place(&preq);
            let secs = started.elapsed().as_secs_f64();
            inner.counters.observe_decision(secs);
            let d = match decision {
                Ok(d) => d,
                Err(PlaceError::UnknownHost(h)) => {
                    return Err(PoolError::NotFound {
                        kind: "host",
                        id: h,
                    });
                }
                Err(PlaceError::NoCapacity { reason, message }) => {
                    inner.counters.refused_capacity += 1;
                    return Err(PoolError::NoCapacity { reason, message });
                }
            };
            let u = inner.usage.get(&project).copied().unwrap_or_default();
            let over = |name: &'static str,
                        used: u64,
                        add: u64,
                        lim: Option<u64>|
             -> Option<(&'static str, String)> {
                let lim = lim?;
                (used + add > lim).then(|| {
                    let reason = if name == "sm" { "sm" } else { "memory" };
                    (reason, format!("quota exceeded for project {project:?}: {name} would be {} (in use {used}, limit {lim})", used + add))
                })
            };
            if let Some((reason, message)) = over(
                "memory_bytes",
                u.memory_bytes,
                d.mem,
                quota.max_memory_bytes,
            )
            .or_else(|| over("sm", u.sm, u64::from(d.sm), quota.max_sm))
            {
                inner.counters.refused_quota += 1;
                return Err(PoolError::QuotaExceeded { reason, message });
            }
            inner.id_seq += 1;
            let id = format!("a-{:08x}-{:06x}", inner.id_nonce, inner.id_seq);
            let gpu_uuid = inner.index.gpus[d.gpu as usize].uuid.clone();
            let gpu_host_name = inner.index.hosts[d.host as usize].name.clone();
            let vm_host = &inner.hosts[&req.host].info;
            let gpu_host = &inner.hosts[&gpu_host_name].info;
            let a = Allocation {
                socket_path: format!("{}/{}.sock", vm_host.socket_dir.trim_end_matches('/'), id),
                id,
                project: project.clone(),
                vm: req.vm.clone(),
                vm_host: req.host.clone(),
                gpu_uuid,
                gpu_host: gpu_host_name.clone(),
                profile: match want {
                    Want::Profile(n) => Some(n),
                    Want::Custom { .. } => None,
                },
                sm_count: d.sm,
                memory_bytes: d.mem,
                remote: d.remote,
                endpoint: d
                    .remote
                    .then(|| format!("{}:{}", gpu_host.address, gpu_host.serve_port)),
                state: "pending".into(),
                created_at: now_ms(),
                memory_used_bytes: None,
            };
            match inner.store.insert_allocation(&a) {
                Ok(()) => break (a, d.gpu),
                Err(StoreError::Conflict) if attempts < 20 => {
                    attempts += 1;
                    inner.store.catch_up()?;
                    let changes = inner.store.poll_changes();
                    inner.apply_changes(changes);
                }
                Err(e) => return Err(e.into()),
            }
        };
        inner.counters.allocations_ok += 1;
        if a.remote {
            inner.counters.allocations_remote += 1;
        }
        inner.add_alloc(a.clone(), gpu, Instant::now() + self.cfg.lease_ttl);
        Ok(a)
    }

    pub fn release(&self, role: &Role, id: &str) -> Result<Allocation, PoolError> {
        let mut inner = lock(&self.inner);
        let a = inner.allocs.get(id).ok_or_else(|| PoolError::NotFound {
            kind: "allocation",
            id: id.to_string(),
        })?;
        if let Role::Project(p) = role
            && &a.a.project != p
        {
            return Err(PoolError::NotFound {
                kind: "allocation",
                id: id.to_string(),
            });
        }
        let a = a.a.clone();
        inner.release(&[id.to_string()], "released")?;
        Ok(a)
    }

    pub fn get_allocation(&self, role: &Role, id: &str) -> Result<Allocation, PoolError> {
        let inner = lock(&self.inner);
        match inner.allocs.get(id) {
            Some(a) if visible(role, &a.a.project) => Ok(a.a.clone()),
            _ => Err(PoolError::NotFound {
                kind: "allocation",
                id: id.to_string(),
            }),
        }
    }

    pub fn allocations(&self, role: &Role) -> Vec<Allocation> {
        let inner = lock(&self.inner);
        inner
            .allocs
            .values()
            .filter(|a| visible(role, &a.a.project))
            .map(|a| a.a.clone())
            .collect()
    }

    pub fn slices(&self, role: &Role) -> Vec<Slice> {
        self.allocations(role)
            .into_iter()
            .map(|a| Slice {
                id: format!("s-{}", a.id.trim_start_matches("a-")),
                gpu_uuid: a.gpu_uuid,
                gpu_host: a.gpu_host,
                profile: profile_label(a.profile),
                sm_count: a.sm_count,
                memory_bytes: a.memory_bytes,
                allocation_id: a.id,
                project: a.project,
                vm: a.vm,
            })
            .collect()
    }

    pub fn hosts(&self) -> Vec<HostView> {
        lock(&self.inner).host_views()
    }

    pub fn host(&self, name: &str) -> Result<HostView, PoolError> {
        self.hosts()
            .into_iter()
            .find(|h| h.host.name == name)
            .ok_or_else(|| PoolError::NotFound {
                kind: "host",
                id: name.to_string(),
            })
    }

    pub fn set_schedulable(&self, name: &str, schedulable: bool) -> Result<HostView, PoolError> {
        {
            let mut inner = lock(&self.inner);
            if !inner.hosts.contains_key(name) {
                return Err(PoolError::NotFound {
                    kind: "host",
                    id: name.to_string(),
                });
            }
            inner.store.set_schedulable(name, schedulable)?;
            inner.hosts.get_mut(name).expect("checked").info.schedulable = schedulable;
            let h = inner.index.host_ix[name];
            inner.index.hosts[h as usize].schedulable = schedulable;
        }
        self.host(name)
    }

    pub fn gpus(&self) -> Vec<GpuView> {
        lock(&self.inner).gpu_views()
    }

    pub fn gpu(&self, uuid: &str) -> Result<GpuView, PoolError> {
        self.gpus()
            .into_iter()
            .find(|g| g.gpu.info.uuid == uuid)
            .ok_or_else(|| PoolError::NotFound {
                kind: "gpu",
                id: uuid.to_string(),
            })
    }

    /// Operator policy of a GPU.
    pub fn update_gpu(
        &self,
        uuid: &str,
        mode: Option<SliceMode>,
        ratio: Option<f64>,
        health: Option<String>,
    ) -> Result<GpuView, PoolError> {
        if let Some(r) = ratio
            && !(1.0..=64.0).contains(&r)
        {
            return Err(PoolError::BadRequest(format!(
                "oversubscription_ratio {r} must be between 1.0 and 64.0"
            )));
        }
        if let Some(h) = &health
            && h != "healthy"
            && h != "unhealthy"
        {
            return Err(PoolError::BadRequest(format!(
                "health {h:?} must be \"healthy\" or \"unhealthy\""
            )));
        }
        {
            let mut inner = lock(&self.inner);
            let mut g = inner
                .gpus
                .get(uuid)
                .cloned()
                .ok_or_else(|| PoolError::NotFound {
                    kind: "gpu",
                    id: uuid.to_string(),
                })?;
            let gi = inner.index.gpu_ix[uuid];
            let slot = &inner.index.gpus[gi as usize];
            if let Some(r) = ratio {
                let cap = (f64::from(g.info.sm_count) * r).floor() as u64;
                if cap < slot.sm_used {
                    return Err(PoolError::Conflict(format!(
                        "GPU {uuid} has {} SMs allocated; ratio {r} would give only {cap}",
                        slot.sm_used
                    )));
                }
                g.oversubscription_ratio = r;
            }
            if let Some(m) = mode {
                if m == SliceMode::Homogeneous && slot.shapes.len() > 1 {
                    return Err(PoolError::Conflict(format!(
                        "GPU {uuid} holds slices of several shapes; release them before making it homogeneous"
                    )));
                }
                g.slice_mode = m;
            }
            if let Some(h) = health {
                g.health = h;
            }
            inner.store.update_gpu(&g)?;
            inner.index.set_gpu_policy(
                uuid,
                g.slice_mode,
                g.oversubscription_ratio,
                g.health == "healthy",
            );
            inner.gpus.insert(uuid.to_string(), g);
        }
        self.gpu(uuid)
    }

    pub fn projects(&self) -> Vec<ProjectView> {
        lock(&self.inner).project_views()
    }

    pub fn project(&self, name: &str) -> Result<ProjectView, PoolError> {
        self.projects()
            .into_iter()
            .find(|p| p.project.name == name)
            .ok_or_else(|| PoolError::NotFound {
                kind: "project",
                id: name.to_string(),
            })
    }

    /// Create a project; returns its token (shown once; only the hash is kept).
    pub fn create_project(&self, name: &str, quota: Quota) -> Result<ProjectCreated, PoolError> {
        valid_name("project", name)?;
        let mut inner = lock(&self.inner);
        if inner.projects.contains_key(name) {
            return Err(PoolError::Conflict(format!(
                "project {name:?} already exists"
            )));
        }
        let token = new_token();
        let hash = sha256_hex(&token);
        let p = Project {
            name: name.to_string(),
            quota: quota.clone(),
            token_sha256: Some(hash.clone()),
            created_at: now_ms(),
        };
        inner.store.put_project(&p)?;
        inner.project_by_token.insert(hash, name.to_string());
        inner.projects.insert(name.to_string(), p);
        Ok(ProjectCreated {
            name: name.to_string(),
            quota,
            token,
        })
    }

    pub fn set_quota(&self, name: &str, quota: Quota) -> Result<ProjectView, PoolError> {
        {
            let mut inner = lock(&self.inner);
            let mut p = inner
                .projects
                .get(name)
                .cloned()
                .ok_or_else(|| PoolError::NotFound {
                    kind: "project",
                    id: name.to_string(),
                })?;
            p.quota = quota;
            inner.store.put_project(&p)?;
            inner.projects.insert(name.to_string(), p);
        }
        self.project(name)
    }

    pub fn delete_project(&self, name: &str) -> Result<(), PoolError> {
        let mut inner = lock(&self.inner);
        let p = inner
            .projects
            .get(name)
            .ok_or_else(|| PoolError::NotFound {
                kind: "project",
                id: name.to_string(),
            })?;
        if inner.usage.get(name).is_some_and(|u| u.allocations > 0) {
            return Err(PoolError::Conflict(format!(
                "project {name:?} still holds allocations"
            )));
        }
        if name == "default" {
            return Err(PoolError::Conflict(
                "the default project cannot be deleted".into(),
            ));
        }
        let hash = p.token_sha256.clone();
        inner.store.delete_project(name)?;
        if let Some(h) = hash {
            inner.project_by_token.remove(&h);
        }
        inner.projects.remove(name);
        Ok(())
    }

    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let inner = lock(&self.inner);
        MetricsSnapshot {
            counters: inner.counters.clone(),
            gpus: inner.gpu_views(),
            hosts: inner.host_views(),
            allocations: inner.allocs.values().map(|a| a.a.clone()).collect(),
            projects: inner.project_views(),
        }
    }
}

fn visible(role: &Role, project: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::Project(p) => p == project,
        Role::Agent | Role::Host(_) => false,
    }
}

impl Counters {
    fn observe_decision(&mut self, secs: f64) {
        self.decision_count += 1;
        self.decision_seconds_sum += secs;
        for (i, b) in DECISION_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.decision_buckets[i] += 1;
            }
        }
    }
}

impl Inner {
    fn index_host(&mut self, h: &Host, gpus: &[Gpu]) {
        let gs: Vec<_> = gpus
            .iter()
            .map(|g| GpuSpec {
                uuid: g.info.uuid.clone(),
                numa: g.info.numa_node,
                sm: g.info.sm_count,
                mem: g.info.memory_bytes,
                mode: g.slice_mode,
                ratio: g.oversubscription_ratio,
                healthy: g.health == "healthy",
            })
            .collect();
        self.index
            .upsert_host(&h.name, &h.labels, h.schedulable, &gs);
    }

    fn add_alloc(&mut self, a: Allocation, gpu: u32, lease_expires: Instant) {
        self.index
            .apply(gpu, shape_of(&a), a.sm_count, a.memory_bytes);
        let u = self.usage.entry(a.project.clone()).or_default();
        u.allocations += 1;
        u.memory_bytes += a.memory_bytes;
        u.sm += u64::from(a.sm_count);
        self.by_vm_host
            .entry(a.vm_host.clone())
            .or_default()
            .insert(a.id.clone());
        self.allocs.insert(
            a.id.clone(),
            AllocRt {
                a,
                gpu,
                lease_expires,
            },
        );
    }

    /// Store first, then memory.
    fn release(&mut self, ids: &[String], reason: &str) -> Result<(), PoolError> {
        let ids: Vec<String> = ids
            .iter()
            .filter(|id| self.allocs.contains_key(*id))
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.store.release_allocations(&ids, reason, now_ms())?;
        for id in &ids {
            if self.forget(id) {
                *self
                    .counters
                    .releases
                    .entry(reason.to_string())
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    /// Drop a released allocation from memory; false if it was not there.
    fn forget(&mut self, id: &str) -> bool {
        {
            let Some(rt) = self.allocs.remove(id) else {
                return false;
            };
            self.index
                .unapply(rt.gpu, shape_of(&rt.a), rt.a.sm_count, rt.a.memory_bytes);
            if let Some(u) = self.usage.get_mut(&rt.a.project) {
                u.allocations = u.allocations.saturating_sub(1);
                u.memory_bytes = u.memory_bytes.saturating_sub(rt.a.memory_bytes);
                u.sm = u.sm.saturating_sub(u64::from(rt.a.sm_count));
            }
            if let Some(s) = self.by_vm_host.get_mut(&rt.a.vm_host) {
                s.remove(id);
            }
        }
        true
    }

    fn refresh_leases(&mut self, until: Instant) {
        let seen = until - self.lease_ttl;
        for h in self.hosts.values_mut() {
            h.last_seen = h.last_seen.max(seen);
        }
        for a in self.allocs.values_mut() {
            a.lease_expires = a.lease_expires.max(until);
        }
    }

    /// Index a host again from the GPUs known for it (after another replica changed them).
    fn reindex_host(&mut self, name: &str, extra: Option<&str>) {
        let Some(info) = self.hosts.get(name).map(|h| h.info.clone()) else {
            return;
        };
        let mut uuids: Vec<String> = match self.index.host_ix.get(name) {
            Some(&h) => self.index.hosts[h as usize]
                .gpus
                .iter()
                .map(|&g| self.index.gpus[g as usize].uuid.clone())
                .collect(),
            None => Vec::new(),
        };
        if let Some(u) = extra
            && !uuids.iter().any(|x| x == u)
        {
            uuids.push(u.to_string());
        }
        let mut gs: Vec<Gpu> = uuids
            .iter()
            .filter_map(|u| self.gpus.get(u))
            .filter(|g| g.host == name)
            .cloned()
            .collect();
        gs.sort_by_key(|g| g.info.index);
        self.index_host(&info, &gs);
        let alive = self.hosts.get(name).is_some_and(|h| h.alive);
        let h = self.index.host_ix[name];
        self.index.hosts[h as usize].alive = alive;
    }

    /// Apply what other replicas committed (in commit order). The store filters out this
    /// replica's own writes, so each change is news here; applying one twice is harmless anyway.
    fn apply_changes(&mut self, changes: Vec<Change>) {
        let now = Instant::now();
        let ttl = self.lease_ttl;
        for c in changes {
            match c {
                Change::Host(h) => {
                    let name = h.name.clone();
                    // Registered through another replica: its agent is alive now.
                    match self.hosts.get_mut(&name) {
                        Some(rt) => {
                            rt.info = h;
                            rt.last_seen = now;
                            rt.alive = true;
                        }
                        None => {
                            self.hosts.insert(
                                name.clone(),
                                HostRt {
                                    info: h,
                                    last_seen: now,
                                    alive: true,
                                },
                            );
                        }
                    }
                    self.reindex_host(&name, None);
                }
                Change::Gpu(g) => {
                    let (uuid, host) = (g.info.uuid.clone(), g.host.clone());
                    let old_host = self.gpus.insert(uuid.clone(), g).map(|o| o.host);
                    self.reindex_host(&host, Some(&uuid));
                    if let Some(o) = old_host.filter(|o| *o != host) {
                        self.reindex_host(&o, None);
                    }
                }
                Change::GpuGone(uuid) => {
                    if let Some(g) = self.gpus.remove(&uuid) {
                        self.reindex_host(&g.host, None);
                    }
                }
                Change::Project(p) => {
                    if let Some(old) = self.projects.get(&p.name)
                        && let Some(t) = &old.token_sha256
                    {
                        self.project_by_token.remove(t);
                    }
                    if let Some(t) = &p.token_sha256 {
                        self.project_by_token.insert(t.clone(), p.name.clone());
                    }
                    self.projects.insert(p.name.clone(), p);
                }
                Change::ProjectGone(name) => {
                    if let Some(p) = self.projects.remove(&name)
                        && let Some(t) = p.token_sha256
                    {
                        self.project_by_token.remove(&t);
                    }
                }
                Change::Allocation(a) => {
                    if let Some(rt) = self.allocs.get_mut(&a.id) {
                        rt.a.state = a.state;
                        continue;
                    }
                    match self.index.gpu_ix.get(&a.gpu_uuid) {
                        Some(&g) => self.add_alloc(a, g, now + ttl),
                        None => log::error!(
                            "allocation {} from another controller names unknown GPU {}",
                            a.id,
                            a.gpu_uuid
                        ),
                    }
                }
                Change::Released(id) => {
                    self.forget(&id);
                }
                Change::StoreStalled => self.refresh_leases(now + ttl),
                Change::HostCredential { host, token_sha256 } => {
                    if let Some(old) = self.host_token.insert(host.clone(), token_sha256.clone()) {
                        self.host_by_token.remove(&old);
                    }
                    self.host_by_token.insert(token_sha256, host);
                }
                Change::Heartbeat { host, running } => {
                    if let Some(h) = self.hosts.get_mut(&host) {
                        h.last_seen = now;
                        if !h.alive {
                            h.alive = true;
                            if let Some(&ix) = self.index.host_ix.get(&host) {
                                self.index.hosts[ix as usize].alive = true;
                            }
                        }
                    }
                    for id in running {
                        if let Some(a) = self.allocs.get_mut(&id)
                            && a.a.vm_host == host
                        {
                            a.lease_expires = now + ttl;
                        }
                    }
                }
            }
        }
    }

    fn assignments(&self, host: &str) -> Vec<Assignment> {
        let Some(ids) = self.by_vm_host.get(host) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| self.allocs.get(id))
            .map(|rt| {
                let a = &rt.a;
                let g = self.gpus.get(&a.gpu_uuid);
                Assignment {
                    allocation_id: a.id.clone(),
                    vm: a.vm.clone(),
                    project: a.project.clone(),
                    gpu_uuid: a.gpu_uuid.clone(),
                    gpu_arg: match g {
                        Some(g) if g.info.sim => "sim".to_string(),
                        Some(g) => g.info.index.to_string(),
                        None => "sim".to_string(),
                    },
                    memory_bytes: a.memory_bytes,
                    sm_count: a.sm_count,
                    remote_endpoint: a.endpoint.clone(),
                }
            })
            .collect()
    }

    fn host_views(&self) -> Vec<HostView> {
        let now = Instant::now();
        self.hosts
            .values()
            .map(|h| HostView {
                host: h.info.clone(),
                alive: h.alive,
                last_seen_ms_ago: now.saturating_duration_since(h.last_seen).as_millis() as u64,
                gpus: self.gpus.values().filter(|g| g.host == h.info.name).count(),
                enrolled: self.host_token.contains_key(&h.info.name),
                allocations: self.by_vm_host.get(&h.info.name).map_or(0, |s| s.len()),
            })
            .collect()
    }

    fn gpu_views(&self) -> Vec<GpuView> {
        self.gpus
            .values()
            .map(|g| {
                let s = &self.index.gpus[self.index.gpu_ix[&g.info.uuid] as usize];
                GpuView {
                    gpu: g.clone(),
                    sm_capacity: s.sm_cap,
                    sm_allocated: s.sm_used,
                    memory_allocated_bytes: s.mem_used,
                    memory_free_bytes: s.mem_total - s.mem_used,
                    slices: s.slices(),
                }
            })
            .collect()
    }

    fn project_views(&self) -> Vec<ProjectView> {
        self.projects
            .values()
            .map(|p| ProjectView {
                project: p.clone(),
                usage: self.usage.get(&p.name).copied().unwrap_or_default(),
            })
            .collect()
    }
}

//! Reclamation under a replicated store's leadership (no etcd needed): a follower never
//! reclaims, a new leader first gives every lease a fresh period, and after that period what is
//! not renewed is reclaimed (nothing is kept for ever because the old leader died).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vgpu_controller::auth::Role;
use vgpu_controller::model::{
    Allocation, AllocationRequest, Gpu, Host, Policy, Project, SliceSpec,
};
use vgpu_controller::pool::{Pool, PoolConfig};
use vgpu_controller::store::{Leadership, Result, Snapshot, SqliteStore, Store};
use vgpu_pool_wire::{GpuInfo, RegisterRequest};

/// SQLite underneath; leadership set by the test (0 = follower, n = leader in epoch n).
struct Elected {
    inner: SqliteStore,
    epoch: Arc<AtomicU64>,
}

impl Store for Elected {
    fn load(&mut self) -> Result<Snapshot> {
        self.inner.load()
    }
    fn upsert_host(&mut self, host: &Host, gpus: &[Gpu]) -> Result<()> {
        self.inner.upsert_host(host, gpus)
    }
    fn set_schedulable(&mut self, host: &str, schedulable: bool) -> Result<()> {
        self.inner.set_schedulable(host, schedulable)
    }
    fn update_gpu(&mut self, gpu: &Gpu) -> Result<()> {
        self.inner.update_gpu(gpu)
    }
    fn put_project(&mut self, p: &Project) -> Result<()> {
        self.inner.put_project(p)
    }
    fn delete_project(&mut self, name: &str) -> Result<()> {
        self.inner.delete_project(name)
    }
    fn insert_allocation(&mut self, a: &Allocation) -> Result<()> {
        self.inner.insert_allocation(a)
    }
    fn set_allocation_state(&mut self, id: &str, state: &str) -> Result<()> {
        self.inner.set_allocation_state(id, state)
    }
    fn release_allocations(&mut self, ids: &[String], reason: &str, at_ms: u64) -> Result<()> {
        self.inner.release_allocations(ids, reason, at_ms)
    }
    fn put_host_credential(&mut self, host: &str, token_sha256: &str, at_ms: u64) -> Result<()> {
        self.inner.put_host_credential(host, token_sha256, at_ms)
    }
    fn leadership(&self) -> Leadership {
        match self.epoch.load(Ordering::SeqCst) {
            0 => Leadership::Follower,
            epoch => Leadership::Leader { epoch },
        }
    }
}

#[test]
fn new_leader_grants_one_lease_of_grace_then_reclaims() {
    let epoch = Arc::new(AtomicU64::new(0));
    let ttl = Duration::from_secs(10);
    let pool = Pool::open(
        Box::new(Elected {
            inner: SqliteStore::open_in_memory().unwrap(),
            epoch: epoch.clone(),
        }),
        PoolConfig {
            lease_ttl: ttl,
            heartbeat_interval: Duration::from_secs(1),
        },
    )
    .unwrap();
    pool.register(RegisterRequest {
        name: "h1".into(),
        address: "127.0.0.1".into(),
        serve_port: 7470,
        socket_dir: "/run/vgpu".into(),
        labels: Default::default(),
        gpus: vec![GpuInfo {
            uuid: "GPU-1".into(),
            index: 0,
            model: "SIM".into(),
            pci_bus_id: "0000:01:00.0".into(),
            numa_node: None,
            sm_count: 132,
            memory_bytes: 64 << 30,
            sim: true,
        }],
        agent_version: String::new(),
        gpu_source: "sim".into(),
    })
    .unwrap();
    pool.allocate(
        &Role::Admin,
        AllocationRequest {
            vm: "vm1".into(),
            host: "h1".into(),
            project: None,
            slice: SliceSpec {
                profile: Some("1/2".into()),
                sm_count: None,
                memory_bytes: None,
            },
            policy: Policy::default(),
        },
    )
    .unwrap();
    let t0 = Instant::now();

    // Long after every lease ran out: a follower reclaims nothing.
    let late = t0 + ttl * 5;
    assert_eq!(pool.reclaim(late).unwrap(), 0);
    assert_eq!(pool.allocations(&Role::Admin).len(), 1);

    // This replica takes over at `late`: no heartbeat heard yet, so one lease of grace.
    epoch.store(1, Ordering::SeqCst);
    assert_eq!(pool.reclaim(late).unwrap(), 0);
    assert_eq!(pool.reclaim(late + ttl / 2).unwrap(), 0);
    assert_eq!(
        pool.allocations(&Role::Admin).len(),
        1,
        "reclaimed during the grace period"
    );

    // Nobody renewed it within that lease: the new leader reclaims it.
    assert_eq!(pool.reclaim(late + ttl * 2).unwrap(), 1);
    assert!(pool.allocations(&Role::Admin).is_empty());
    assert!(!pool.host("h1").unwrap().alive);
}

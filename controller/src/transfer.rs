//! Moving the pool's state between stores: `vgpu-controller export` writes what a store holds as
//! one JSON document, `vgpu-controller import` writes such a document into an empty store. Used
//! to go from the embedded SQLite store to etcd and back, and as a store-independent backup.
//! Released allocations (history) are not moved.

use serde::{Deserialize, Serialize};

use crate::model::{Allocation, Gpu, Host, Project};
use crate::store::{Snapshot, Store, StoreError};

pub const FORMAT: &str = "vgpu-pool-export/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectEntry {
    #[serde(flatten)]
    pub project: Project,
    /// SHA-256 of the project's token (the token itself is never stored).
    pub token_sha256: Option<String>,
}

/// Everything a controller needs to come back with the same pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dump {
    pub format: String,
    pub hosts: Vec<Host>,
    pub gpus: Vec<Gpu>,
    pub projects: Vec<ProjectEntry>,
    pub allocations: Vec<Allocation>,
    /// (host, SHA-256 of its own agent credential).
    #[serde(default)]
    pub host_credentials: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("Store failed")]
    Store(#[from] StoreError),
    #[error("Unknown export format {0:?} (expected {FORMAT:?})")]
    Format(String),
    #[error("The target store is not empty ({0}); import only into a new store")]
    NotEmpty(String),
}

/// Read everything `store` holds (active allocations only), sorted so equal pools give equal
/// documents.
pub fn export(store: &mut dyn Store) -> Result<Dump, TransferError> {
    Ok(dump_of(store.load()?))
}

fn dump_of(s: Snapshot) -> Dump {
    let mut d = Dump {
        format: FORMAT.to_string(),
        hosts: s.hosts,
        gpus: s.gpus,
        projects: s
            .projects
            .into_iter()
            .map(|p| ProjectEntry {
                token_sha256: p.token_sha256.clone(),
                project: p,
            })
            .collect(),
        allocations: s.allocations,
        host_credentials: s.host_credentials,
    };
    d.host_credentials.sort();
    d.hosts.sort_by(|a, b| a.name.cmp(&b.name));
    d.gpus.sort_by(|a, b| a.info.uuid.cmp(&b.info.uuid));
    d.projects
        .sort_by(|a, b| a.project.name.cmp(&b.project.name));
    d.allocations.sort_by(|a, b| a.id.cmp(&b.id));
    d
}

/// Write `dump` into `store`, which must hold no hosts, allocations or projects other than
/// `default`.
pub fn import(store: &mut dyn Store, dump: &Dump) -> Result<(), TransferError> {
    if dump.format != FORMAT {
        return Err(TransferError::Format(dump.format.clone()));
    }
    let have = store.load()?;
    let other_projects = have.projects.iter().filter(|p| p.name != "default").count();
    if !have.hosts.is_empty() || !have.allocations.is_empty() || other_projects > 0 {
        return Err(TransferError::NotEmpty(format!(
            "{} hosts, {} allocations, {} projects",
            have.hosts.len(),
            have.allocations.len(),
            other_projects
        )));
    }
    for h in &dump.hosts {
        let gpus: Vec<Gpu> = dump
            .gpus
            .iter()
            .filter(|g| g.host == h.name)
            .cloned()
            .collect();
        store.upsert_host(h, &gpus)?;
    }
    for p in &dump.projects {
        let mut project = p.project.clone();
        project.token_sha256 = p.token_sha256.clone();
        store.put_project(&project)?;
    }
    for (host, hash) in &dump.host_credentials {
        store.put_host_credential(host, hash, crate::model::now_ms())?;
    }
    for a in &dump.allocations {
        store.insert_allocation(a)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::model::{AllocationRequest, GpuInfo, Policy, Quota, SliceSpec};
    use crate::pool::{Pool, PoolConfig};
    use crate::store::SqliteStore;
    use vgpu_pool_wire::RegisterRequest;

    /// A pool with two hosts, a project with a quota and token, and two allocations.
    pub(crate) fn populated(path: &std::path::Path) {
        let pool = Pool::open(
            Box::new(SqliteStore::open(path).unwrap()),
            PoolConfig::default(),
        )
        .unwrap();
        for h in ["h1", "h2"] {
            pool.register(RegisterRequest {
                name: h.into(),
                address: "127.0.0.1".into(),
                serve_port: 7470,
                socket_dir: "/run/vgpu".into(),
                labels: [("rack".to_string(), "r1".to_string())].into(),
                gpus: (0..2)
                    .map(|i| GpuInfo {
                        uuid: format!("GPU-{h}-{i}"),
                        index: i,
                        model: "SIM".into(),
                        pci_bus_id: format!("0000:0{i}:00.0"),
                        numa_node: Some(0),
                        sm_count: 132,
                        memory_bytes: 64 << 30,
                        sim: true,
                    })
                    .collect(),
                agent_version: String::new(),
                gpu_source: "sim".into(),
            })
            .unwrap();
        }
        pool.create_project(
            "team-a",
            Quota {
                max_allocations: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        pool.set_schedulable("h2", false).unwrap();
        for (vm, p) in [("vm1", "1/2"), ("vm2", "1/4")] {
            pool.allocate(
                &Role::Project("team-a".into()),
                AllocationRequest {
                    vm: vm.into(),
                    host: "h1".into(),
                    project: None,
                    slice: SliceSpec {
                        profile: Some(p.into()),
                        sm_count: None,
                        memory_bytes: None,
                    },
                    policy: Policy::default(),
                },
            )
            .unwrap();
        }
    }

    #[test]
    fn export_import_round_trip() {
        let dir = std::env::temp_dir().join(format!("vgpu-transfer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        populated(&dir.join("a.db"));
        let mut a = SqliteStore::open(&dir.join("a.db")).unwrap();
        let first = export(&mut a).unwrap();
        assert_eq!(first.hosts.len(), 2);
        assert_eq!(first.gpus.len(), 4);
        assert_eq!(first.allocations.len(), 2);
        assert!(
            !first
                .hosts
                .iter()
                .find(|h| h.name == "h2")
                .unwrap()
                .schedulable
        );
        let team = first
            .projects
            .iter()
            .find(|p| p.project.name == "team-a")
            .unwrap();
        assert!(team.token_sha256.is_some(), "token hash travels");
        assert_eq!(team.project.quota.max_allocations, Some(5));

        let text = serde_json::to_string(&first).unwrap();
        let back: Dump = serde_json::from_str(&text).unwrap();
        let mut b = SqliteStore::open(&dir.join("b.db")).unwrap();
        import(&mut b, &back).unwrap();
        let second = export(&mut b).unwrap();
        assert_eq!(
            serde_json::to_value(&first).unwrap(),
            serde_json::to_value(&second).unwrap()
        );
        // A pool opened on the imported store sees the same usage.
        let pool = Pool::open(Box::new(b), PoolConfig::default()).unwrap();
        let used: u64 = pool
            .gpus()
            .iter()
            .filter(|g| g.gpu.host == "h1")
            .map(|g| g.memory_allocated_bytes)
            .sum();
        assert_eq!(used, (32 << 30) + (16 << 30));
        assert_eq!(pool.project("team-a").unwrap().usage.allocations, 2);

        // Not into a store that holds a pool already.
        let mut again = SqliteStore::open(&dir.join("a.db")).unwrap();
        assert!(matches!(
            import(&mut again, &back),
            Err(TransferError::NotEmpty(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

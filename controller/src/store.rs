//! Durable state behind a `Store` trait; `SqliteStore` is the embedded default.
//!
//! The trait is deliberately small and synchronous: the pool calls it while holding its lock, so a
//! write either lands before the in-memory index changes or the request fails. A replicated store
//! (Raft, etcd) can implement the same trait later.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{Allocation, Gpu, GpuInfo, Host, Project, Quota, SliceMode};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Database failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("Corrupt row: {0}")]
    Corrupt(String),
    #[error("Corrupt record {0}")]
    CorruptJson(String, #[source] serde_json::Error),
    #[error("Cannot encode a record")]
    Encode(#[source] serde_json::Error),
    #[error("Cannot start the etcd client's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("Database file {0}")]
    File(String, #[source] std::io::Error),
    /// A conditional commit found that another replica changed what the decision read.
    #[error("Another controller changed the state this decision read")]
    Conflict,
    #[error("etcd failed")]
    Etcd(#[source] etcd_client::Error),
    #[error("etcd did not answer in time ({0})")]
    Timeout(&'static str),
}

/// A change committed by another writer (a controller replica), as the store's watch saw it.
#[derive(Debug, Clone)]
pub enum Change {
    Host(Host),
    Gpu(Gpu),
    GpuGone(String),
    Project(Project),
    ProjectGone(String),
    /// A new allocation, or a change of its state.
    Allocation(Allocation),
    Released(String),
    /// A host's agent reported these workers running (to whichever replica it talks to).
    Heartbeat {
        host: String,
        running: Vec<String>,
    },
    /// A host's own agent credential was issued or replaced.
    HostCredential {
        host: String,
        token_sha256: String,
    },
    /// A replica's store requests stalled (a raft election, a dead member): heartbeats may have
    /// been held up, so leases get a fresh period.
    StoreStalled,
}

/// Who may run the pool-wide duties (reclamation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// The only writer (the embedded SQLite store).
    Sole,
    /// Elected; `epoch` changes every time this replica gains leadership anew.
    Leader {
        epoch: u64,
    },
    Follower,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Everything needed to rebuild the in-memory index at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub hosts: Vec<Host>,
    pub gpus: Vec<Gpu>,
    pub projects: Vec<Project>,
    /// Active allocations only.
    pub allocations: Vec<Allocation>,
    /// Host credentials: (host, SHA-256 of its token).
    pub host_credentials: Vec<(String, String)>,
}

pub trait Store: Send {
    fn load(&mut self) -> Result<Snapshot>;
    /// Insert or update a host and its GPUs (GPUs of the host not in `gpus` are removed).
    fn upsert_host(&mut self, host: &Host, gpus: &[Gpu]) -> Result<()>;
    fn set_schedulable(&mut self, host: &str, schedulable: bool) -> Result<()>;
    fn update_gpu(&mut self, gpu: &Gpu) -> Result<()>;
    fn put_project(&mut self, p: &Project) -> Result<()>;
    fn delete_project(&mut self, name: &str) -> Result<()>;
    fn insert_allocation(&mut self, a: &Allocation) -> Result<()>;
    fn set_allocation_state(&mut self, id: &str, state: &str) -> Result<()>;
    /// Mark allocations released (kept as history with the reason).
    fn release_allocations(&mut self, ids: &[String], reason: &str, at_ms: u64) -> Result<()>;
    /// Set (or replace) the credential hash of a host.
    fn put_host_credential(&mut self, host: &str, token_sha256: &str, at_ms: u64) -> Result<()>;

    // Replicated stores only; the defaults are right for a single writer.

    /// Changes committed by other writers since the last call, in commit order.
    fn poll_changes(&mut self) -> Vec<Change> {
        Vec::new()
    }
    /// After [`StoreError::Conflict`]: wait until `poll_changes` can return what the failed
    /// commit was compared against.
    fn catch_up(&mut self) -> Result<()> {
        Ok(())
    }
    /// Record which workers a host's agent reported running, so every replica renews them.
    fn record_heartbeat(&mut self, _host: &str, _running: &[String]) -> Result<()> {
        Ok(())
    }
    fn leadership(&self) -> Leadership {
        Leadership::Sole
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        serve_port INTEGER NOT NULL,
        socket_dir TEXT NOT NULL,
        labels TEXT NOT NULL,
        schedulable INTEGER NOT NULL,
        gpu_source TEXT NOT NULL,
        registered_at INTEGER NOT NULL
    );
    CREATE TABLE gpus (
        uuid TEXT PRIMARY KEY,
        host TEXT NOT NULL REFERENCES hosts(name),
        idx INTEGER NOT NULL,
        model TEXT NOT NULL,
        pci_bus_id TEXT NOT NULL,
        numa_node INTEGER,
        sm_count INTEGER NOT NULL,
        memory_bytes INTEGER NOT NULL,
        sim INTEGER NOT NULL,
        health TEXT NOT NULL,
        slice_mode TEXT NOT NULL,
        oversubscription_ratio REAL NOT NULL
    );
    CREATE TABLE projects (
        name TEXT PRIMARY KEY,
        token_sha256 TEXT,
        max_allocations INTEGER,
        max_memory_bytes INTEGER,
        max_sm INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE allocations (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        vm TEXT NOT NULL,
        vm_host TEXT NOT NULL,
        gpu_uuid TEXT NOT NULL,
        gpu_host TEXT NOT NULL,
        profile INTEGER,
        sm_count INTEGER NOT NULL,
        memory_bytes INTEGER NOT NULL,
        remote INTEGER NOT NULL,
        endpoint TEXT,
        socket_path TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        released_at INTEGER,
        release_reason TEXT
    );
    CREATE INDEX allocations_active ON allocations(released_at) WHERE released_at IS NULL;",
    // 2: GPUs are looked up by host on every registration
    "CREATE INDEX gpus_by_host ON gpus(host);",
    // 3: per-host agent credentials (issued at enrolment)
    "CREATE TABLE host_credentials (
        host TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );",
];

/// Files SQLite keeps next to the database (they get the database file's mode when created).
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Open (creating if needed) the database file; WAL mode; migrations applied. The file is
    /// created with mode 0600 (SQLite gives its WAL and shared-memory files the same mode), and
    /// an existing database and its side files are made 0600.
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::File(path.display().to_string(), e))?;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(path, private.clone())
            .map_err(|e| StoreError::File(path.display().to_string(), e))?;
        for side in SIDE_FILES {
            let mut p = path.as_os_str().to_owned();
            p.push(side);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                std::fs::set_permissions(&p, private.clone())
                    .map_err(|e| StoreError::File(p.display().to_string(), e))?;
            }
        }
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        // WAL + synchronous=NORMAL: a committed transaction survives a crash or SIGKILL of the
        // controller (it is in the WAL); only an OS crash or power loss can lose the last commits.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
        )?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
        )?;
        let mut s = SqliteStore { conn };
        s.migrate()?;
        Ok(s)
    }

    fn migrate(&mut self) -> Result<()> {
        let current: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let v = i as i64 + 1;
            if v <= current {
                continue;
            }
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations(version, applied_at) VALUES (?1, ?2)",
                params![v, crate::model::now_ms() as i64],
            )?;
            tx.commit()?;
            log::info!("store: applied schema migration {v}");
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?)
    }
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|x| x.max(0) as u64)
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Snapshot> {
        let mut snap = Snapshot::default();
        let mut st = self.conn.prepare(
            "SELECT name, address, serve_port, socket_dir, labels, schedulable, gpu_source, registered_at FROM hosts",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        for row in rows {
            let (name, address, port, socket_dir, labels, schedulable, gpu_source, at) = row?;
            let labels: BTreeMap<String, String> = serde_json::from_str(&labels)
                .map_err(|e| StoreError::CorruptJson(format!("host {name} labels"), e))?;
            snap.hosts.push(Host {
                name,
                address,
                serve_port: port as u16,
                socket_dir,
                labels,
                schedulable,
                gpu_source,
                registered_at: at as u64,
            });
        }
        drop(st);
        let mut st = self.conn.prepare(
            "SELECT uuid, host, idx, model, pci_bus_id, numa_node, sm_count, memory_bytes, sim, health, slice_mode, oversubscription_ratio FROM gpus ORDER BY host, idx",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                GpuInfo {
                    uuid: r.get(0)?,
                    index: r.get::<_, i64>(2)? as u32,
                    model: r.get(3)?,
                    pci_bus_id: r.get(4)?,
                    numa_node: r.get::<_, Option<i64>>(5)?.map(|x| x as i32),
                    sm_count: r.get::<_, i64>(6)? as u32,
                    memory_bytes: r.get::<_, i64>(7)? as u64,
                    sim: r.get(8)?,
                },
                r.get::<_, String>(1)?,
                r.get::<_, String>(9)?,
                r.get::<_, String>(10)?,
                r.get::<_, f64>(11)?,
            ))
        })?;
        for row in rows {
            let (info, host, health, mode, ratio) = row?;
            let slice_mode = SliceMode::parse(&mode).ok_or_else(|| {
                StoreError::Corrupt(format!("gpu {} slice_mode {mode}", info.uuid))
            })?;
            snap.gpus.push(Gpu {
                info,
                host,
                health,
                slice_mode,
                oversubscription_ratio: ratio,
            });
        }
        drop(st);
        let mut st = self.conn.prepare(
            "SELECT name, token_sha256, max_allocations, max_memory_bytes, max_sm, created_at FROM projects",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Project {
                name: r.get(0)?,
                token_sha256: r.get(1)?,
                quota: Quota {
                    max_allocations: opt_u64(r.get(2)?),
                    max_memory_bytes: opt_u64(r.get(3)?),
                    max_sm: opt_u64(r.get(4)?),
                },
                created_at: r.get::<_, i64>(5)? as u64,
            })
        })?;
        for row in rows {
            snap.projects.push(row?);
        }
        drop(st);
        let mut st = self.conn.prepare(
            "SELECT id, project, vm, vm_host, gpu_uuid, gpu_host, profile, sm_count, memory_bytes, remote, endpoint, socket_path, state, created_at
             FROM allocations WHERE released_at IS NULL ORDER BY created_at, id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Allocation {
                id: r.get(0)?,
                project: r.get(1)?,
                vm: r.get(2)?,
                vm_host: r.get(3)?,
                gpu_uuid: r.get(4)?,
                gpu_host: r.get(5)?,
                profile: r.get::<_, Option<i64>>(6)?.map(|x| x as u32),
                sm_count: r.get::<_, i64>(7)? as u32,
                memory_bytes: r.get::<_, i64>(8)? as u64,
                remote: r.get(9)?,
                endpoint: r.get(10)?,
                socket_path: r.get(11)?,
                state: r.get(12)?,
                created_at: r.get::<_, i64>(13)? as u64,
                memory_used_bytes: None,
            })
        })?;
        for row in rows {
            snap.allocations.push(row?);
        }
        drop(st);
        let mut st = self
            .conn
            .prepare("SELECT host, token_sha256 FROM host_credentials")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for row in rows {
            snap.host_credentials.push(row?);
        }
        Ok(snap)
    }

    fn upsert_host(&mut self, host: &Host, gpus: &[Gpu]) -> Result<()> {
        let tx = self.conn.transaction()?;
        let labels = serde_json::to_string(&host.labels).map_err(StoreError::Encode)?;
        tx.execute(
            "INSERT INTO hosts(name, address, serve_port, socket_dir, labels, schedulable, gpu_source, registered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(name) DO UPDATE SET address=excluded.address, serve_port=excluded.serve_port,
               socket_dir=excluded.socket_dir, labels=excluded.labels, gpu_source=excluded.gpu_source,
               registered_at=excluded.registered_at",
            params![
                host.name,
                host.address,
                i64::from(host.serve_port),
                host.socket_dir,
                labels,
                host.schedulable,
                host.gpu_source,
                host.registered_at as i64
            ],
        )?;
        {
            let mut keep = Vec::new();
            let mut st = tx.prepare(
                "INSERT INTO gpus(uuid, host, idx, model, pci_bus_id, numa_node, sm_count, memory_bytes, sim, health, slice_mode, oversubscription_ratio)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(uuid) DO UPDATE SET host=excluded.host, idx=excluded.idx, model=excluded.model,
                   pci_bus_id=excluded.pci_bus_id, numa_node=excluded.numa_node, sm_count=excluded.sm_count,
                   memory_bytes=excluded.memory_bytes, sim=excluded.sim, health=excluded.health,
                   slice_mode=excluded.slice_mode, oversubscription_ratio=excluded.oversubscription_ratio",
            )?;
            for g in gpus {
                st.execute(params![
                    g.info.uuid,
                    g.host,
                    i64::from(g.info.index),
                    g.info.model,
                    g.info.pci_bus_id,
                    g.info.numa_node.map(i64::from),
                    i64::from(g.info.sm_count),
                    g.info.memory_bytes as i64,
                    g.info.sim,
                    g.health,
                    g.slice_mode.as_str(),
                    g.oversubscription_ratio
                ])?;
                keep.push(g.info.uuid.clone());
            }
            let existing: Vec<String> = {
                let mut q = tx.prepare("SELECT uuid FROM gpus WHERE host = ?1")?;
                q.query_map([&host.name], |r| r.get(0))?
                    .collect::<std::result::Result<_, _>>()?
            };
            for u in existing.iter().filter(|u| !keep.contains(u)) {
                tx.execute("DELETE FROM gpus WHERE uuid = ?1", [u])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn set_schedulable(&mut self, host: &str, schedulable: bool) -> Result<()> {
        self.conn.execute(
            "UPDATE hosts SET schedulable = ?1 WHERE name = ?2",
            params![schedulable, host],
        )?;
        Ok(())
    }

    fn update_gpu(&mut self, g: &Gpu) -> Result<()> {
        self.conn.execute(
            "UPDATE gpus SET health = ?1, slice_mode = ?2, oversubscription_ratio = ?3 WHERE uuid = ?4",
            params![g.health, g.slice_mode.as_str(), g.oversubscription_ratio, g.info.uuid],
        )?;
        Ok(())
    }

    fn put_project(&mut self, p: &Project) -> Result<()> {
        self.conn.execute(
            "INSERT INTO projects(name, token_sha256, max_allocations, max_memory_bytes, max_sm, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET token_sha256=excluded.token_sha256, max_allocations=excluded.max_allocations,
               max_memory_bytes=excluded.max_memory_bytes, max_sm=excluded.max_sm",
            params![
                p.name,
                p.token_sha256,
                p.quota.max_allocations.map(|x| x as i64),
                p.quota.max_memory_bytes.map(|x| x as i64),
                p.quota.max_sm.map(|x| x as i64),
                p.created_at as i64
            ],
        )?;
        Ok(())
    }

    fn delete_project(&mut self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM projects WHERE name = ?1", [name])?;
        Ok(())
    }

    fn insert_allocation(&mut self, a: &Allocation) -> Result<()> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO allocations(id, project, vm, vm_host, gpu_uuid, gpu_host, profile, sm_count, memory_bytes, remote, endpoint, socket_path, state, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        st.execute(params![
            a.id,
            a.project,
            a.vm,
            a.vm_host,
            a.gpu_uuid,
            a.gpu_host,
            a.profile.map(i64::from),
            i64::from(a.sm_count),
            a.memory_bytes as i64,
            a.remote,
            a.endpoint,
            a.socket_path,
            a.state,
            a.created_at as i64
        ])?;
        Ok(())
    }

    fn set_allocation_state(&mut self, id: &str, state: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE allocations SET state = ?1 WHERE id = ?2",
            params![state, id],
        )?;
        Ok(())
    }

    fn release_allocations(&mut self, ids: &[String], reason: &str, at_ms: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE allocations SET released_at = ?1, release_reason = ?2, state = 'released' WHERE id = ?3 AND released_at IS NULL",
            )?;
            for id in ids {
                st.execute(params![at_ms as i64, reason, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn put_host_credential(&mut self, host: &str, token_sha256: &str, at_ms: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO host_credentials(host, token_sha256, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(host) DO UPDATE SET token_sha256=excluded.token_sha256, created_at=excluded.created_at",
            params![host, token_sha256, at_ms as i64],
        )?;
        Ok(())
    }
}

impl SqliteStore {
    /// Release reason of an allocation (history), for tests and diagnostics.
    pub fn release_reason(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT release_reason FROM allocations WHERE id = ?1",
                [id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(id: &str) -> Allocation {
        Allocation {
            id: id.into(),
            project: "p".into(),
            vm: "vm".into(),
            vm_host: "h".into(),
            gpu_uuid: "g".into(),
            gpu_host: "h".into(),
            profile: Some(2),
            sm_count: 66,
            memory_bytes: 1 << 30,
            remote: false,
            endpoint: None,
            socket_path: "/tmp/x.sock".into(),
            state: "pending".into(),
            created_at: 1,
            memory_used_bytes: None,
        }
    }

    #[test]
    fn roundtrip_and_release() {
        let dir = std::env::temp_dir().join(format!("vgpu-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
            s.insert_allocation(&alloc("a1")).unwrap();
            s.insert_allocation(&alloc("a2")).unwrap();
            s.release_allocations(&["a1".into()], "test", 5).unwrap();
            assert!(
                s.insert_allocation(&alloc("a2")).is_err(),
                "duplicate id must fail"
            );
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.allocations, vec![alloc("a2")]);
        assert_eq!(s.release_reason("a1").unwrap().as_deref(), Some("test"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Controller start-up shared by `vgpu-controller serve` and `vgpu-controller up`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use vgpu_pool_wire::FileError;

use crate::api::{AppState, ServeError, router, serve, spawn_reclaimer};
use crate::auth::{Auth, AuthFile};
use crate::etcd_store::{EtcdConfig, EtcdStore};
use crate::limits::ConnLimits;
use crate::pool::{Pool, PoolConfig, PoolError};
use crate::store::{SqliteStore, Store, StoreError};

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("Cannot open {}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("--store {0:?}: expected `sqlite` or `etcd://host:port[,host:port...][/prefix]`")]
    StoreSpec(String),
    #[error("Cannot connect to etcd at {endpoints}")]
    Etcd {
        endpoints: String,
        #[source]
        source: StoreError,
    },
    #[error("Cannot load the pool")]
    Pool(#[source] PoolError),
    #[error("Cannot parse {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("No admin token: pass --admin-token (or VGPU_ADMIN_TOKEN) or --auth-config")]
    NoAdminToken,
    #[error("Cannot bind {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8470")]
    pub listen: String,
    /// State directory (SQLite database `pool.db` lives here). Default: $XDG_STATE_HOME/vgpu-pool
    /// when XDG_STATE_HOME is set, else ./.vgpu-pool
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Admin bearer token (repeatable).
    #[arg(
        long = "admin-token",
        env = "VGPU_ADMIN_TOKEN",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub admin_tokens: Vec<String>,
    /// Bearer token for host agents (repeatable).
    #[arg(
        long = "agent-token",
        env = "VGPU_AGENT_TOKEN",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub agent_tokens: Vec<String>,
    /// JSON file with token hashes: {"admin_token_sha256": [...], "agent_token_sha256": [...]}
    #[arg(long)]
    pub auth_config: Option<PathBuf>,
    /// Lease time: a host or allocation not renewed by heartbeats for this long is reclaimed.
    #[arg(long, default_value_t = 30_000)]
    pub lease_ttl_ms: u64,
    /// Heartbeat interval the agents are told to use.
    #[arg(long, default_value_t = 5_000)]
    pub heartbeat_ms: u64,
    /// TLS certificate (PEM); with --tls-key, serve HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also export HAMi's pre-2.9 metric names (for HAMi-WebUI and old dashboards).
    #[arg(long)]
    pub legacy_metrics: bool,
    /// Where the pool's state lives: `sqlite` (`pool.db` in the state directory), or
    /// `etcd://host:port[,host:port...][/prefix]`, shared by several controller replicas
    /// (docs/ha.md).
    #[arg(long, env = "VGPU_STORE", default_value = "sqlite")]
    pub store: String,
    /// Close a REST connection on which nothing moved for this long (also the bound for
    /// receiving a request's headers and for answering it).
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,
    /// Most REST connections open at once; more are closed when accepted.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Write the bound address (host:port) to this file once listening.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// OpenStack Placement sync (off unless --placement-url is given).
    #[command(flatten)]
    pub placement: crate::placement::PlacementArgs,
}

impl ControllerArgs {
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        match std::env::var_os("XDG_STATE_HOME") {
            Some(x) if !x.is_empty() => PathBuf::from(x).join("vgpu-pool"),
            _ => PathBuf::from("./.vgpu-pool"),
        }
    }
}

/// A started controller.
pub struct Running {
    pub addr: SocketAddr,
    pub tls: bool,
    pub pool: Arc<Pool>,
    pub task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// Open the store, build the pool, bind, and serve in a background task.
pub async fn start(
    args: &ControllerArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, ServerError> {
    let dir = args.state_dir();
    std::fs::create_dir_all(&dir).map_err(FileError::on("create", &dir))?;
    let db = dir.join("pool.db");
    let store = open_store(&args.store, &db)?;
    let cfg = PoolConfig {
        lease_ttl: Duration::from_millis(args.lease_ttl_ms.max(100)),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(20)),
    };
    if cfg.heartbeat_interval * 2 > cfg.lease_ttl {
        log::warn!(
            "heartbeat interval {:?} is more than half the lease time {:?}: leases may expire between heartbeats",
            cfg.heartbeat_interval,
            cfg.lease_ttl
        );
    }
    let pool = Arc::new(Pool::open(store, cfg).map_err(ServerError::Pool)?);
    let file = match &args.auth_config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(FileError::on("read", p))?;
            let file =
                serde_json::from_str::<AuthFile>(&text).map_err(|source| ServerError::Parse {
                    path: p.clone(),
                    source,
                })?;
            Some(file)
        }
        None => None,
    };
    let auth = Auth::new(&args.admin_tokens, &args.agent_tokens, file.as_ref());
    if auth.is_empty() {
        return Err(ServerError::NoAdminToken);
    }
    let st = AppState {
        pool: pool.clone(),
        auth: Arc::new(auth),
        legacy_metrics: args.legacy_metrics,
    };
    let app = router(st);
    let bind_error = |source| ServerError::Bind {
        addr: args.listen.clone(),
        source,
    };
    let listener = std::net::TcpListener::bind(&args.listen).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        _ => None,
    };
    let is_tls = tls.is_some();
    spawn_reclaimer(pool.clone());
    crate::placement::spawn(pool.clone(), &args.placement);
    let limits = ConnLimits {
        idle_timeout: Duration::from_millis(args.idle_timeout_ms.max(50)),
        max_connections: args.max_connections.max(1),
    };
    let task = tokio::spawn(serve(listener, app, tls, limits, shutdown));
    log::info!(
        "controller listening on {}://{addr} (state {}, lease {:?}, heartbeat {:?})",
        if is_tls { "https" } else { "http" },
        if args.store == "sqlite" {
            db.display().to_string()
        } else {
            args.store.clone()
        },
        cfg.lease_ttl,
        cfg.heartbeat_interval
    );
    if let Some(f) = &args.addr_file {
        std::fs::write(f, addr.to_string()).map_err(FileError::on("write", f))?;
    }
    Ok(Running {
        addr,
        tls: is_tls,
        pool,
        task,
    })
}

/// The store named by `--store`: `sqlite` (the file `db`) or `etcd://...`.
pub fn open_store(spec: &str, db: &std::path::Path) -> Result<Box<dyn Store>, ServerError> {
    if spec == "sqlite" {
        let s = SqliteStore::open(db).map_err(|source| ServerError::Sqlite {
            path: db.to_path_buf(),
            source,
        })?;
        return Ok(Box::new(s));
    }
    let cfg = EtcdConfig::parse(spec).ok_or_else(|| ServerError::StoreSpec(spec.to_string()))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "controller".into());
    let node = format!("{host}:{}", std::process::id());
    let s = EtcdStore::connect(cfg.clone(), &node).map_err(|source| ServerError::Etcd {
        endpoints: cfg.endpoints.join(","),
        source,
    })?;
    Ok(Box::new(s))
}

//! `EtcdStore`: the pool's state in etcd, so that several controller replicas share one pool
//! (`docs/ha.md`).
//!
//! Keys, under `/<prefix>/` (default prefix `vgpu-pool`), values JSON:
//!
//! | key | value |
//! |---|---|
//! | `hosts/<name>` | host |
//! | `gpus/<uuid>` | GPU with its policy |
//! | `projects/<name>` | project and the SHA-256 of its token |
//! | `tokens/<sha256>` | project name |
//! | `allocs/<id>` | active allocation |
//! | `released/<id>` | released allocation with reason and time (history) |
//! | `seq/gpu/<uuid>`, `seq/project/<name>` | guards: rewritten by every allocation on that GPU / in that quota-limited project |
//! | `hostcreds/<host>` | SHA-256 of the host's own agent credential |
//! | `heartbeats/<host>` | workers the host's agent last reported running (leases) |
//! | `election/...` | leader election (etcd's election API, one etcd lease per replica) |
//!
//! Every allocation is one transaction conditioned on the guards it read: the GPU's (and, for a
//! project with a quota, the project's) `seq` key must still have the revision this replica's
//! view was built from. Another replica's allocation on that GPU changes the revision, the
//! compare fails, and the pool waits for its watch to deliver that change and decides again.
//! Releases and state changes are conditioned on the allocation key still existing, so a stale
//! replica can never bring a released allocation back.
//!
//! etcd's client is async; the pool calls the store synchronously under its lock, from tokio
//! worker threads as well as from plain threads. The store therefore owns a small runtime of its
//! own and waits for each request on a channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use serde::{Deserialize, Serialize};

use crate::model::{Allocation, Gpu, Host, Project};
use crate::store::{Change, Leadership, Result, Snapshot, Store, StoreError};

/// One request's time limit; a dead etcd member makes requests to it fail or hang.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request is retried (other members, a new raft leader) before it fails.
const RETRY_FOR: Duration = Duration::from_secs(8);
/// TTL (seconds) of the etcd lease behind a replica's leadership.
pub const ELECTION_TTL_S: i64 = 2;
const PAGE: i64 = 2000;
/// A request that took longer than this (retries included) may have held up heartbeats: it is
/// announced under `stalls/`, and every replica gives the leases a fresh period.
const STALL: Duration = Duration::from_millis(300);

/// Where the store lives: `etcd://host:port[,host:port...][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
}

impl EtcdConfig {
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("etcd://")?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) if !p.trim_matches('/').is_empty() => (h, p.trim_matches('/')),
            Some((h, _)) => (h, "vgpu-pool"),
            None => (rest, "vgpu-pool"),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        (!endpoints.is_empty()).then(|| EtcdConfig {
            endpoints,
            prefix: prefix.to_string(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct ProjectRec {
    project: Project,
    token_sha256: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ReleasedRec {
    allocation: Allocation,
    reason: String,
    released_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct HostCredRec {
    token_sha256: String,
    created_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct HeartbeatRec {
    running: Vec<String>,
}

struct Raw {
    rev: i64,
    key: String,
    /// `None`: deleted.
    value: Option<Vec<u8>>,
}

#[derive(Default)]
struct WatchState {
    events: VecDeque<Raw>,
    /// Highest revision the watch has delivered.
    rev: i64,
}

#[derive(Default)]
struct Shared {
    watch: Mutex<WatchState>,
    cv: Condvar,
    leader: AtomicBool,
    epoch: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    /// etcd failed a request, a renewal or the watch. Heartbeats may not have got through
    /// either, so the leader must not count the time against leases: a new epoch makes the pool
    /// give every lease a fresh period (as after a leader change).
    fn disrupted(&self, why: &str) {
        log::debug!("etcd disruption ({why}): leases get a fresh period");
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn watch(&self) -> MutexGuard<'_, WatchState> {
        self.watch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    cfg: EtcdConfig,
    /// Name of this replica in the election.
    node: String,
    shared: Arc<Shared>,
    /// Guard key -> mod revision the pool's view was built from.
    guards: HashMap<String, i64>,
    /// Keys this replica wrote, with the revision, until the watch has passed it (its own writes
    /// are in the view already; older events for these keys must not undo them).
    ahead: HashMap<String, i64>,
    /// Projects with a quota: their allocations are also conditioned on the project's guard.
    quota: HashSet<String>,
    /// Host records (drain changes rewrite them) and GPUs per host.
    hosts: HashMap<String, Host>,
    host_gpus: HashMap<String, Vec<String>>,
    /// After a conflict: the revision the watch must reach.
    need: i64,
}

fn etcd(e: etcd_client::Error) -> StoreError {
    StoreError::Etcd(e)
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(StoreError::Encode)
}

fn prefix_end(p: &str) -> Vec<u8> {
    let mut v = p.as_bytes().to_vec();
    if let Some(last) = v.last_mut() {
        *last += 1;
    }
    v
}

impl EtcdStore {
    /// Connect; `node` names this replica in the election (e.g. its listen address).
    pub fn connect(cfg: EtcdConfig, node: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let endpoints = cfg.endpoints.clone();
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
        let client = block_on(&rt, async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                Client::connect(endpoints, Some(opts)),
            )
            .await
        })
        .ok_or(StoreError::Timeout("connecting"))?
        .map_err(|_| StoreError::Timeout("connecting"))?
        .map_err(etcd)?;
        Ok(EtcdStore {
            rt: Some(rt),
            client,
            cfg,
            node: node.to_string(),
            shared: Arc::default(),
            guards: HashMap::new(),
            ahead: HashMap::new(),
            quota: HashSet::new(),
            hosts: HashMap::new(),
            host_gpus: HashMap::new(),
            need: 0,
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime lives until drop")
    }

    fn k(&self, kind: &str, name: &str) -> String {
        format!("/{}/{kind}/{name}", self.cfg.prefix)
    }

    fn root(&self) -> String {
        format!("/{}/", self.cfg.prefix)
    }

    /// Run one request on the store's runtime, retrying failures (a dead member, a raft
    /// election) for up to `RETRY_FOR`.
    fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let started = Instant::now();
        let deadline = started + RETRY_FOR;
        for attempt in 0u32.. {
            let fut = f(self.client.clone());
            let r = block_on(self.rt(), async move {
                tokio::time::timeout(OP_TIMEOUT, fut).await
            });
            let err = match r {
                Some(Ok(Ok(v))) => {
                    if started.elapsed() > STALL {
                        self.report_stall(what, started.elapsed());
                    }
                    return Ok(v);
                }
                Some(Ok(Err(e))) => Some(e),
                Some(Err(_)) | None => None,
            };
            if Instant::now() >= deadline {
                self.shared.disrupted(what);
                return Err(match err {
                    Some(e) => etcd(e),
                    None => StoreError::Timeout(what),
                });
            }
            // A refused connection to a dead member is retried at once on another one.
            log::debug!("etcd {what}: {err:?}; retrying");
            std::thread::sleep(Duration::from_millis((5u64 << attempt.min(5)).min(100)));
        }
        unreachable!("the retry loop returns")
    }

    /// Tell every replica (this one too, through the watch) that etcd stalled here.
    fn report_stall(&self, what: &'static str, took: Duration) {
        log::warn!("etcd {what} took {took:?}: leases get a fresh period on every controller");
        let key = self.k("stalls", &self.node);
        let mut c = self.client.clone();
        let ms = took.as_millis().to_string();
        self.rt().spawn(async move {
            let _ = tokio::time::timeout(OP_TIMEOUT, c.put(key, ms, None)).await;
        });
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> Result<()> {
        let k = key.clone();
        let r = self.run("put", move |mut c| {
            let (k, v) = (k.clone(), value.clone());
            async move { c.put(k, v, None).await }
        })?;
        self.wrote(&key, r.header().map_or(0, |h| h.revision()));
        Ok(())
    }

    fn txn(&self, what: &'static str, t: Txn) -> Result<etcd_client::TxnResponse> {
        self.run(what, move |mut c| {
            let t = t.clone();
            async move { c.txn(t).await }
        })
    }

    /// Runs `ops` if `key` is still at mod revision `rev`; true when it ran (the write to `key`
    /// is then remembered as ours).
    fn txn_if_unchanged(
        &mut self,
        what: &'static str,
        key: &str,
        rev: i64,
        ops: Vec<TxnOp>,
    ) -> Result<bool> {
        let t = Txn::new()
            .when(vec![Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then(ops);
        let r = self.txn(what, t)?;
        if r.succeeded() {
            self.wrote(key, r.header().map_or(0, |h| h.revision()));
        }
        Ok(r.succeeded())
    }

    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let k = key.to_string();
        let r = self.run("get", move |mut c| {
            let k = k.clone();
            async move { c.get(k, None).await }
        })?;
        Ok(r.kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    fn wrote(&mut self, key: &str, rev: i64) {
        if rev > 0 {
            self.ahead.insert(key.to_string(), rev);
        }
    }

    fn guard(&self, key: &str) -> i64 {
        self.guards.get(key).copied().unwrap_or(0)
    }

    fn start_background(&self, from_rev: i64) {
        let root = self.root();
        let shared = self.shared.clone();
        let client = self.client.clone();
        self.rt().spawn(watch_loop(
            client.clone(),
            root.clone(),
            from_rev,
            shared.clone(),
        ));
        self.rt().spawn(election_loop(
            client,
            format!("{root}election"),
            self.node.clone(),
            shared,
        ));
    }

    /// Turn one watched key into a change of the view (and keep the store's own mirrors).
    fn decode(&mut self, r: Raw) -> Option<Change> {
        let rel = r.key.strip_prefix(&self.root())?.to_string();
        let (kind, name) = rel.split_once('/')?;
        let parse_err = |e: serde_json::Error| log::error!("etcd key {}: {e}", r.key);
        match (kind, r.value) {
            ("seq", _) => {
                let g = self.guards.entry(r.key.clone()).or_default();
                *g = (*g).max(r.rev);
                None
            }
            ("hosts", Some(v)) => {
                let h: Host = serde_json::from_slice(&v).map_err(parse_err).ok()?;
                self.hosts.insert(h.name.clone(), h.clone());
                Some(Change::Host(h))
            }
            ("gpus", Some(v)) => {
                let g: Gpu = serde_json::from_slice(&v).map_err(parse_err).ok()?;
                let list = self.host_gpus.entry(g.host.clone()).or_default();
                if !list.contains(&g.info.uuid) {
                    list.push(g.info.uuid.clone());
                }
                Some(Change::Gpu(g))
            }
            ("gpus", None) => {
                for l in self.host_gpus.values_mut() {
                    l.retain(|u| u != name);
                }
                Some(Change::GpuGone(name.to_string()))
            }
            ("projects", Some(v)) => {
                let p: ProjectRec = serde_json::from_slice(&v).map_err(parse_err).ok()?;
                let mut project = p.project;
                project.token_sha256 = p.token_sha256;
                self.note_quota(&project);
                Some(Change::Project(project))
            }
            ("projects", None) => {
                self.quota.remove(name);
                Some(Change::ProjectGone(name.to_string()))
            }
            ("allocs", Some(v)) => serde_json::from_slice(&v)
                .map_err(parse_err)
                .ok()
                .map(Change::Allocation),
            ("allocs", None) => Some(Change::Released(name.to_string())),
            ("stalls", Some(_)) => Some(Change::StoreStalled),
            ("hostcreds", Some(v)) => {
                let c: HostCredRec = serde_json::from_slice(&v).map_err(parse_err).ok()?;
                Some(Change::HostCredential {
                    host: name.to_string(),
                    token_sha256: c.token_sha256,
                })
            }
            ("heartbeats", Some(v)) => {
                let hb: HeartbeatRec = serde_json::from_slice(&v).map_err(parse_err).ok()?;
                Some(Change::Heartbeat {
                    host: name.to_string(),
                    running: hb.running,
                })
            }
            _ => None,
        }
    }

    fn note_quota(&mut self, p: &Project) {
        let q = &p.quota;
        if q.max_allocations.is_some() || q.max_memory_bytes.is_some() || q.max_sm.is_some() {
            self.quota.insert(p.name.clone());
        } else {
            self.quota.remove(&p.name);
        }
    }

    /// Every key of the pool, for export (`vgpu-controller export`).
    pub fn released(&self) -> Result<Vec<(Allocation, String, u64)>> {
        let mut out = Vec::new();
        for (_, v, _) in self.range(&self.k("released", ""), 0)?.1 {
            if let Ok(r) = serde_json::from_slice::<ReleasedRec>(&v) {
                out.push((r.allocation, r.reason, r.released_at_ms));
            }
        }
        Ok(out)
    }

    /// All keys under `prefix` at one revision (paged); returns the revision.
    #[allow(clippy::type_complexity)]
    fn range(&self, prefix: &str, at: i64) -> Result<(i64, Vec<(String, Vec<u8>, i64)>)> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut rev = at;
        let mut out = Vec::new();
        loop {
            let (f, e) = (from.clone(), end.clone());
            let r = self.run("range", move |mut c| {
                let mut o = GetOptions::new().with_range(e.clone()).with_limit(PAGE);
                if rev > 0 {
                    o = o.with_revision(rev);
                }
                let f = f.clone();
                async move { c.get(f, Some(o)).await }
            })?;
            if rev == 0 {
                rev = r.header().map_or(0, |h| h.revision());
            }
            for kv in r.kvs() {
                out.push((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                ));
            }
            match (r.more(), r.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((rev, out)),
            }
        }
    }
}

fn block_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn watch_loop(mut client: Client, root: String, mut next: i64, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let opts = WatchOptions::new().with_prefix().with_start_revision(next);
        match client.watch(root.clone(), Some(opts)).await {
            Ok((_watcher, mut stream)) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            log::error!(
                                "etcd watch cancelled ({}; compacted at {}): this controller's view is stale, restart it",
                                resp.cancel_reason(),
                                resp.compact_revision()
                            );
                            break;
                        }
                        let mut st = shared.watch();
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let rev = kv.mod_revision();
                            st.events.push_back(Raw {
                                rev,
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                value: match ev.event_type() {
                                    EventType::Put => Some(kv.value().to_vec()),
                                    EventType::Delete => None,
                                },
                            });
                            st.rev = st.rev.max(rev);
                            next = next.max(rev + 1);
                        }
                        drop(st);
                        shared.cv.notify_all();
                    }
                    Ok(None) => {
                        shared.disrupted("watch ended");
                        break;
                    }
                    Err(e) => {
                        shared.disrupted("watch error");
                        log::warn!("etcd watch: {e}; watching again from revision {next}");
                        break;
                    }
                }
            },
            Err(e) => {
                shared.disrupted("watch start");
                log::warn!("etcd watch: {e}; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Campaign for leadership with an etcd lease kept alive; leadership ends when the lease can no
/// longer be renewed (then campaign again).
async fn election_loop(mut client: Client, name: String, node: String, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let lease = match tokio::time::timeout(OP_TIMEOUT, client.lease_grant(ELECTION_TTL_S, None))
            .await
        {
            Ok(Ok(r)) => r.id(),
            other => {
                log::debug!("election: lease grant failed: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut ka = tokio::spawn(keep_alive(client.clone(), lease, shared.clone()));
        let elected = loop {
            tokio::select! {
                _ = &mut ka => break false,
                r = client.campaign(name.clone(), node.clone(), lease) => match r {
                    Ok(_) => break true,
                    Err(e) => {
                        log::debug!("election: campaign: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        };
        if elected {
            let epoch = shared.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            shared.leader.store(true, Ordering::SeqCst);
            log::warn!("leader: this controller ({node}) is now the leader (epoch {epoch})");
            let _ = (&mut ka).await;
            shared.leader.store(false, Ordering::SeqCst);
            log::warn!("leader: this controller ({node}) lost its election lease; following");
        } else {
            ka.abort();
        }
    }
}

/// Renew `lease` until a renewal cannot be confirmed within the lease's time (minus a margin, so
/// that leadership ends here before etcd lets another replica take it).
async fn keep_alive(mut client: Client, lease: i64, shared: Arc<Shared>) {
    let ttl = Duration::from_secs(ELECTION_TTL_S as u64);
    let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
        return;
    };
    let mut confirmed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 5).await;
        let sent = Instant::now();
        let ok = keeper.keep_alive().await.is_ok()
            && matches!(
                tokio::time::timeout(ttl / 4, stream.message()).await,
                Ok(Ok(Some(r))) if r.ttl() > 0
            );
        if ok {
            confirmed = sent;
            continue;
        }
        shared.disrupted("keepalive");
        if confirmed.elapsed() > ttl * 3 / 4 {
            return;
        } else if let Ok((k, s)) = client.lease_keep_alive(lease).await {
            // The stream's member may be gone: a new stream goes to another one.
            keeper = k;
            stream = s;
        }
    }
}

impl Store for EtcdStore {
    fn load(&mut self) -> Result<Snapshot> {
        let (rev, kvs) = self.range(&self.root(), 0)?;
        let mut snap = Snapshot::default();
        let root = self.root();
        for (key, v, mrev) in kvs {
            let Some((kind, _)) = key.strip_prefix(&root).and_then(|r| r.split_once('/')) else {
                continue;
            };
            let bad = |e: serde_json::Error| StoreError::CorruptJson(key.clone(), e);
            match kind {
                "hosts" => {
                    let h: Host = serde_json::from_slice(&v).map_err(bad)?;
                    self.hosts.insert(h.name.clone(), h.clone());
                    snap.hosts.push(h);
                }
                "gpus" => {
                    let g: Gpu = serde_json::from_slice(&v).map_err(bad)?;
                    self.host_gpus
                        .entry(g.host.clone())
                        .or_default()
                        .push(g.info.uuid.clone());
                    snap.gpus.push(g);
                }
                "projects" => {
                    let p: ProjectRec = serde_json::from_slice(&v).map_err(bad)?;
                    let mut project = p.project;
                    project.token_sha256 = p.token_sha256;
                    self.note_quota(&project);
                    snap.projects.push(project);
                }
                "allocs" => snap
                    .allocations
                    .push(serde_json::from_slice(&v).map_err(bad)?),
                "seq" => {
                    self.guards.insert(key.clone(), mrev);
                }
                "hostcreds" => {
                    let c: HostCredRec = serde_json::from_slice(&v).map_err(bad)?;
                    let host = key.rsplit('/').next().unwrap_or_default().to_string();
                    snap.host_credentials.push((host, c.token_sha256));
                }
                _ => {}
            }
        }
        snap.gpus
            .sort_by(|a, b| (&a.host, a.info.index).cmp(&(&b.host, b.info.index)));
        snap.allocations
            .sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        self.shared.watch().rev = rev;
        self.start_background(rev + 1);
        Ok(snap)
    }

    fn upsert_host(&mut self, host: &Host, gpus: &[Gpu]) -> Result<()> {
        let hk = self.k("hosts", &host.name);
        let mut ops = vec![TxnOp::put(hk.clone(), json(host)?, None)];
        let mut keys = vec![hk];
        for g in gpus {
            let k = self.k("gpus", &g.info.uuid);
            ops.push(TxnOp::put(k.clone(), json(g)?, None));
            keys.push(k);
        }
        let keep: Vec<&String> = gpus.iter().map(|g| &g.info.uuid).collect();
        let old = self.host_gpus.get(&host.name).cloned().unwrap_or_default();
        for u in old.iter().filter(|u| !keep.contains(u)) {
            let k = self.k("gpus", u);
            ops.push(TxnOp::delete(k.clone(), None));
            keys.push(k);
        }
        let r = self.txn("register", Txn::new().and_then(ops))?;
        let rev = r.header().map_or(0, |h| h.revision());
        for k in keys {
            self.wrote(&k, rev);
        }
        self.hosts.insert(host.name.clone(), host.clone());
        self.host_gpus.insert(
            host.name.clone(),
            gpus.iter().map(|g| g.info.uuid.clone()).collect(),
        );
        Ok(())
    }

    fn set_schedulable(&mut self, host: &str, schedulable: bool) -> Result<()> {
        let Some(mut h) = self.hosts.get(host).cloned() else {
            return Ok(());
        };
        h.schedulable = schedulable;
        self.put(self.k("hosts", host), json(&h)?)?;
        self.hosts.insert(host.to_string(), h);
        Ok(())
    }

    fn update_gpu(&mut self, gpu: &Gpu) -> Result<()> {
        self.put(self.k("gpus", &gpu.info.uuid), json(gpu)?)
    }

    fn put_project(&mut self, p: &Project) -> Result<()> {
        let pk = self.k("projects", &p.name);
        let rec = ProjectRec {
            project: p.clone(),
            token_sha256: p.token_sha256.clone(),
        };
        let mut ops = vec![TxnOp::put(pk.clone(), json(&rec)?, None)];
        let mut keys = vec![pk];
        if let Some(t) = &p.token_sha256 {
            let tk = self.k("tokens", t);
            ops.push(TxnOp::put(tk.clone(), p.name.clone(), None));
            keys.push(tk);
        }
        let r = self.txn("put project", Txn::new().and_then(ops))?;
        let rev = r.header().map_or(0, |h| h.revision());
        for k in keys {
            self.wrote(&k, rev);
        }
        self.note_quota(p);
        Ok(())
    }

    fn delete_project(&mut self, name: &str) -> Result<()> {
        let pk = self.k("projects", name);
        let mut ops = vec![TxnOp::delete(pk.clone(), None)];
        if let Some((v, _)) = self.get(&pk)?
            && let Ok(rec) = serde_json::from_slice::<ProjectRec>(&v)
            && let Some(t) = rec.token_sha256
        {
            ops.push(TxnOp::delete(self.k("tokens", &t), None));
        }
        let r = self.txn("delete project", Txn::new().and_then(ops))?;
        self.wrote(&pk, r.header().map_or(0, |h| h.revision()));
        self.quota.remove(name);
        Ok(())
    }

    fn insert_allocation(&mut self, a: &Allocation) -> Result<()> {
        let key = self.k("allocs", &a.id);
        let value = json(a)?;
        let mut guards = vec![self.k("seq/gpu", &a.gpu_uuid)];
        if self.quota.contains(&a.project) {
            guards.push(self.k("seq/project", &a.project));
        }
        let mut when = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
        let mut then = vec![TxnOp::put(key.clone(), value.clone(), None)];
        let mut other = vec![TxnOp::get(key.clone(), None)];
        for g in &guards {
            when.push(Compare::mod_revision(
                g.clone(),
                CompareOp::Equal,
                self.guard(g),
            ));
            then.push(TxnOp::put(g.clone(), "", None));
            other.push(TxnOp::get(g.clone(), None));
        }
        let r = self.txn(
            "allocate",
            Txn::new().when(when).and_then(then).or_else(other),
        )?;
        if r.succeeded() {
            let rev = r.header().map_or(0, |h| h.revision());
            self.wrote(&key, rev);
            for g in guards {
                self.wrote(&g, rev);
                self.guards.insert(g, rev);
            }
            return Ok(());
        }
        let mut need = 0;
        for (i, op) in r.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(g) = op else { continue };
            let Some(kv) = g.kvs().first() else { continue };
            if i == 0 {
                if kv.value() == value.as_slice() {
                    // An earlier attempt of this very request committed (its answer was lost).
                    self.wrote(&key, kv.mod_revision());
                    return Ok(());
                }
                return Err(StoreError::Corrupt(format!(
                    "allocation id {} exists already",
                    a.id
                )));
            }
            need = need.max(kv.mod_revision());
        }
        self.need = need;
        Err(StoreError::Conflict)
    }

    fn set_allocation_state(&mut self, id: &str, state: &str) -> Result<()> {
        let key = self.k("allocs", id);
        for _ in 0..5 {
            let Some((v, rev)) = self.get(&key)? else {
                return Ok(()); // released meanwhile: nothing to bring back
            };
            let mut a: Allocation =
                serde_json::from_slice(&v).map_err(|e| StoreError::CorruptJson(key.clone(), e))?;
            if a.state == state {
                return Ok(());
            }
            a.state = state.to_string();
            let put = vec![TxnOp::put(key.clone(), json(&a)?, None)];
            if self.txn_if_unchanged("set state", &key, rev, put)? {
                return Ok(());
            }
        }
        Err(StoreError::Conflict)
    }

    fn release_allocations(&mut self, ids: &[String], reason: &str, at_ms: u64) -> Result<()> {
        for id in ids {
            let key = self.k("allocs", id);
            let mut done = false;
            for _ in 0..5 {
                let Some((v, rev)) = self.get(&key)? else {
                    done = true; // released by another replica (or an earlier attempt)
                    break;
                };
                let allocation: Allocation = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::CorruptJson(key.clone(), e))?;
                let rec = ReleasedRec {
                    allocation,
                    reason: reason.to_string(),
                    released_at_ms: at_ms,
                };
                let ops = vec![
                    TxnOp::delete(key.clone(), None),
                    TxnOp::put(self.k("released", id), json(&rec)?, None),
                ];
                if self.txn_if_unchanged("release", &key, rev, ops)? {
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(StoreError::Conflict);
            }
        }
        Ok(())
    }

    fn poll_changes(&mut self) -> Vec<Change> {
        let (raws, watched): (Vec<Raw>, i64) = {
            let mut st = self.shared.watch();
            (st.events.drain(..).collect(), st.rev)
        };
        let mut out = Vec::new();
        for r in raws {
            if self.ahead.get(&r.key).is_some_and(|&a| a >= r.rev) {
                continue;
            }
            if let Some(c) = self.decode(r) {
                out.push(c);
            }
        }
        self.ahead.retain(|_, rev| *rev > watched);
        out
    }

    fn catch_up(&mut self) -> Result<()> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut st = self.shared.watch();
        while st.rev < self.need {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Timeout(
                    "catching up with the other controllers",
                ));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    fn put_host_credential(&mut self, host: &str, token_sha256: &str, at_ms: u64) -> Result<()> {
        self.put(
            self.k("hostcreds", host),
            json(&HostCredRec {
                token_sha256: token_sha256.to_string(),
                created_at_ms: at_ms,
            })?,
        )
    }

    fn record_heartbeat(&mut self, host: &str, running: &[String]) -> Result<()> {
        self.put(
            self.k("heartbeats", host),
            json(&HeartbeatRec {
                running: running.to_vec(),
            })?,
        )
    }

    fn leadership(&self) -> Leadership {
        if self.shared.leader.load(Ordering::SeqCst) {
            Leadership::Leader {
                epoch: self.shared.epoch.load(Ordering::SeqCst),
            }
        } else {
            Leadership::Follower
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        let c = EtcdConfig::parse("etcd://127.0.0.1:2379,127.0.0.1:22379/pool-a").unwrap();
        assert_eq!(
            c.endpoints,
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        );
        assert_eq!(c.prefix, "pool-a");
        assert_eq!(EtcdConfig::parse("etcd://h:1").unwrap().prefix, "vgpu-pool");
        assert_eq!(
            EtcdConfig::parse("etcd://h:1/").unwrap().prefix,
            "vgpu-pool"
        );
        assert!(EtcdConfig::parse("etcd://").is_none());
        assert!(EtcdConfig::parse("sqlite:///x").is_none());
    }
}

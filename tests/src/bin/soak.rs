//! `vgpu-soak --duration SECS [--seed N] [--dir DIR]`: a bounded soak of the pool on loopback.
//!
//! Starts a controller and three sim hosts (two GPU hosts with slice servers, one VM host with
//! no GPU), runs a seeded random mix of allocate / run the driver-API program / release from
//! three client threads, and injects faults every few seconds (kill -9 of an agent, a worker,
//! the controller, a slice server or a remote-forwarding worker). Every 30 s it pauses, lets the
//! pool settle and checks that the controller's allocations, its per-GPU ledger and what the
//! agents run agree to the byte; at the end it releases everything and checks that nothing is
//! left: allocations, usage, files, processes, controller descriptors. See `docs/soak.md`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::OpenOptions,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const ADMIN: &str = "soak-admin";
const HEARTBEAT_MS: u64 = 200;
const LEASE_MS: u64 = 2000;
/// A program still running after this long has hung.
const PROGRAM_BOUND: Duration = Duration::from_secs(60);
/// A fault this long before a run still explains its failure (the pool is recovering).
const RECOVERY: Duration = Duration::from_secs(10);
/// Between checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// How long the pool may take to agree after faults stop.
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// Controller descriptors may grow this much between its first and last measurement.
const FD_SLACK: i64 = 16;
/// The agent keeps the logs of at most this many failed workers (`KEEP_EXITED_LOGS`).
const AGENT_LOG_CAP: usize = 16;
/// The watchdog kills everything this long after the soak's duration.
const WATCHDOG_GRACE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Small pieces: random numbers, arguments, counters, /proc.

/// SplitMix64: enough randomness for a reproducible mix, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

struct Args {
    duration: Duration,
    seed: u64,
    dir: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!("usage: vgpu-soak --duration SECS [--seed N] [--dir DIR]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut duration = None;
    let mut seed = None;
    let mut dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--duration" => duration = val().parse::<u64>().ok().or_else(|| usage()),
            "--seed" => seed = val().parse::<u64>().ok().or_else(|| usage()),
            "--dir" => dir = Some(PathBuf::from(val())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    Args {
        duration: Duration::from_secs(duration.unwrap_or_else(|| usage())),
        seed,
        dir,
    }
}

#[derive(Default)]
struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    fn add(&self, what: &str) {
        *lock(&self.0).entry(what.to_string()).or_default() += 1;
    }
    fn get(&self, what: &str) -> u64 {
        lock(&self.0).get(what).copied().unwrap_or(0)
    }
    fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.0).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// (state, parent pid) from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != 'Z' && s != 'X')
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn environ_has(pid: u32, kv: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| b.split(|c| *c == 0).any(|x| x == kv.as_bytes()))
        .unwrap_or(false)
}

fn arg_after(cmd: &[String], flag: &str) -> Option<String> {
    let i = cmd.iter().position(|a| a == flag)?;
    cmd.get(i + 1).cloned()
}

fn fd_count(pid: u32) -> Option<i64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as i64)
}

/// Pids and parents of every live process, once.
fn process_table() -> Vec<(u32, u32)> {
    pids()
        .into_iter()
        .filter_map(|p| stat(p).filter(|(s, _)| *s != 'Z').map(|(_, pp)| (p, pp)))
        .collect()
}

/// Every live descendant of `root` with its depth (1 = child).
fn descendants(table: &[(u32, u32)], root: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut frontier = vec![(root, 0)];
    while let Some((p, d)) = frontier.pop() {
        for &(c, pp) in table {
            if pp == p {
                out.push((c, d + 1));
                frontier.push((c, d + 1));
            }
        }
    }
    out
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on a pid this soak started or read from its own pool's pid files; no
    // memory is involved.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Children of the soak die with the thread that started them (the main thread or a client
/// thread, both of which outlive them), so a killed soak leaves no pool behind.
fn die_with_us(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits for `child` at most `bound`; kills it after that. `None`: it ran past the bound.
fn wait_bounded(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if start.elapsed() >= bound => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(25)),
            Err(_) => return None,
        }
    }
}

fn wait_until(bound: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ok() {
            return true;
        }
        if start.elapsed() >= bound {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

// ---------------------------------------------------------------------------------------------
// Binaries.

/// The directory of this build's binaries; builds what the soak runs when started by cargo.
fn binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("the soak's own path");
    let mut dir = exe.parent().expect("binary dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "vhost-gpu",
            "-p",
            "vgpu-libcuda",
            "-p",
            "vgpu-controller",
            "-p",
            "vgpu-agent",
        ])
        .current_dir(vgpu_tests::repo());
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "building the pool's binaries failed");
    }
    for b in ["vgpu-controller", "vgpu-agent", "vhost-gpu", "libcuda.so"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the workspace first",
            dir.join(b).display()
        );
    }
    vgpu_tests::link_shim(&dir);
    dir
}

fn compile_program(bins: &Path, out_dir: &Path) -> PathBuf {
    let out = out_dir.join("driver_api_e2e");
    let programs = vgpu_tests::repo().join("tests/programs");
    let ok = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O1", "-Wall", "-o"])
        .arg(&out)
        .arg(programs.join("driver_api_e2e.c"))
        .arg(format!("-I{}", programs.display()))
        .arg(format!("-L{}", bins.join("shim").display()))
        .arg("-l:libcuda.so.1")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "compiling driver_api_e2e.c failed");
    out
}

// ---------------------------------------------------------------------------------------------
// The controller's REST API.

enum Answer {
    Ok(Value),
    Status(u16, String),
    Unreachable(String),
}

struct Api {
    http: ureq::Agent,
    url: String,
}

impl Api {
    fn new(url: String) -> Self {
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Api { http, url }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {ADMIN}");
        let resp = match method {
            "GET" => self.http.get(&url).header("authorization", &auth).call(),
            "DELETE" => self.http.delete(&url).header("authorization", &auth).call(),
            "PATCH" => self
                .http
                .patch(&url)
                .header("authorization", &auth)
                .send_json(body.unwrap_or(json!({}))),
            _ => self
                .http
                .post(&url)
                .header("authorization", &auth)
                .send_json(body.unwrap_or(json!({}))),
        };
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => return Answer::Unreachable(e.to_string()),
        };
        let status = resp.status().as_u16();
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => return Answer::Unreachable(e.to_string()),
        };
        if status >= 300 {
            return Answer::Status(status, text);
        }
        match serde_json::from_str(&text) {
            Ok(v) => Answer::Ok(v),
            Err(e) => Answer::Unreachable(format!("not JSON ({e}): {text}")),
        }
    }

    fn list(&self, what: &str) -> Result<Vec<Value>, String> {
        match self.call("GET", &format!("/v1/{what}"), None) {
            Answer::Ok(Value::Array(v)) => Ok(v),
            Answer::Ok(v) => Err(format!("{what}: not a list: {v}")),
            Answer::Status(s, t) => Err(format!("{what}: HTTP {s}: {t}")),
            Answer::Unreachable(e) => Err(format!("{what}: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pool: a controller and three agents, restartable.

struct HostSpec {
    name: &'static str,
    gpus: u32,
    /// 0: no slice server (a VM host only).
    serve_port: u16,
}

struct Pool {
    dir: PathBuf,
    bins: PathBuf,
    ctl_port: u16,
    api: Api,
    /// The pool's agent token, unique to this run: the agents hand it to their workers and
    /// slice servers as `VGPU_REMOTE_TOKEN`, which is how the leak check knows them.
    agent_token: String,
    hosts: Vec<HostSpec>,
    /// Only the main thread starts and stops these (their death signal follows it).
    controller: Mutex<Option<Child>>,
    agents: Vec<Mutex<Option<Child>>>,
    /// Every pid the soak started that is still running, for the watchdog.
    live: Mutex<BTreeSet<u32>>,
    /// Processes of a killed agent still running after it (they should die with it).
    outlived: Mutex<Vec<String>>,
}

impl Pool {
    fn state(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn log(&self, name: &str) -> std::fs::File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file")
    }

    fn spawn(&self, bin: &str, log: &str, args: &[String]) -> Child {
        let mut cmd = Command::new(self.bins.join(bin));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env_remove("VGPU_REMOTE_TOKEN")
            .env_remove("VGPU_AGENT_TOKEN")
            .env_remove("VGPU_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(log));
        die_with_us(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}"));
        lock(&self.live).insert(child.id());
        child
    }

    fn start_controller(&self) -> bool {
        let args: Vec<String> = [
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.ctl_port),
            "--state-dir",
            &self.state("controller").display().to_string(),
            "--admin-token",
            ADMIN,
            "--agent-token",
            &self.agent_token,
            "--heartbeat-ms",
            &HEARTBEAT_MS.to_string(),
            "--lease-ttl-ms",
            &LEASE_MS.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let child = self.spawn("vgpu-controller", "controller", &args);
        *lock(&self.controller) = Some(child);
        wait_until(Duration::from_secs(20), || {
            matches!(self.api.call("GET", "/healthz", None), Answer::Ok(_))
        })
    }

    fn start_agent(&self, i: usize) {
        let h = &self.hosts[i];
        let args: Vec<String> = [
            "--controller",
            &self.api.url,
            "--token",
            &self.agent_token,
            "--name",
            h.name,
            "--sim-gpus",
            &h.gpus.to_string(),
            "--serve-port",
            &h.serve_port.to_string(),
            "--advertise-addr",
            "127.0.0.1",
            "--state-dir",
            &self.state(h.name).display().to_string(),
            "--metrics-addr",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec();
        let child = self.spawn("vgpu-agent", h.name, &args);
        *lock(&self.agents[i]) = Some(child);
    }

    fn stop(&self, slot: &Mutex<Option<Child>>) {
        if let Some(mut c) = lock(slot).take() {
            let _ = c.kill();
            let _ = c.wait();
            lock(&self.live).remove(&c.id());
        }
    }

    fn pid_of(slot: &Mutex<Option<Child>>) -> Option<u32> {
        lock(slot).as_ref().map(Child::id)
    }

    fn controller_pid(&self) -> Option<u32> {
        Self::pid_of(&self.controller)
    }

    fn agent_pid(&self, i: usize) -> Option<u32> {
        Self::pid_of(&self.agents[i])
    }

    /// Workers the agent of host `i` records (pid files) that run for their allocation.
    fn workers(&self, i: usize) -> BTreeMap<String, u32> {
        let dir = self.state(self.hosts[i].name).join("workers");
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "pid") {
                continue;
            }
            let Some(id) = p.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let pid = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            if let Some(pid) = pid
                && alive(pid)
                && environ_has(pid, &format!("VGPU_AGENT_ALLOCATION={id}"))
            {
                out.insert(id.to_string(), pid);
            }
        }
        out
    }

    /// The slice server of host `i`: the agent's child started with `--listen`.
    fn slice_server(&self, i: usize) -> Option<u32> {
        let agent = self.agent_pid(i)?;
        process_table()
            .into_iter()
            .find(|&(p, pp)| pp == agent && cmdline(p).iter().any(|a| a == "--listen"))
            .map(|(p, _)| p)
    }

    fn all_up(&self) -> bool {
        let ctl = lock(&self.controller).as_mut().is_some_and(running);
        ctl && self
            .agents
            .iter()
            .all(|a| lock(a).as_mut().is_some_and(running))
    }

    fn kill_everything(&self) {
        for pid in lock(&self.live).iter() {
            kill9(*pid);
        }
    }
}

fn running(c: &mut Child) -> bool {
    matches!(c.try_wait(), Ok(None))
}

// ---------------------------------------------------------------------------------------------
// Faults.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Fault {
    Agent,
    Worker,
    Controller,
    SliceServer,
    RemoteWorker,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Agent => "kill -9 agent (restarted)",
            Fault::Worker => "kill -9 worker",
            Fault::Controller => "kill -9 controller (restarted)",
            Fault::SliceServer => "link drop: kill -9 slice server",
            Fault::RemoteWorker => "link drop: kill -9 remote-forwarding worker",
        }
    }
    const ALL: [Fault; 5] = [
        Fault::Agent,
        Fault::Worker,
        Fault::Controller,
        Fault::SliceServer,
        Fault::RemoteWorker,
    ];
}

/// When each fault hit which host (None: the controller).
#[derive(Default)]
struct FaultLog(Mutex<Vec<(Instant, Fault, Option<String>)>>);

impl FaultLog {
    fn record(&self, f: Fault, host: Option<&str>) {
        lock(&self.0).push((Instant::now(), f, host.map(str::to_string)));
    }
    /// Whether a fault touched one of `hosts` (or their slice servers) since `since`.
    fn hit(&self, hosts: &[&str], since: Instant) -> bool {
        lock(&self.0)
            .iter()
            .any(|(t, _, h)| *t >= since && h.as_deref().is_some_and(|h| hosts.contains(&h)))
    }
    /// Whether the controller was killed since `since`.
    fn controller_since(&self, since: Instant) -> bool {
        lock(&self.0)
            .iter()
            .any(|(t, f, _)| *t >= since && *f == Fault::Controller)
    }
    fn counts(&self) -> BTreeMap<Fault, u64> {
        let mut m = BTreeMap::new();
        for (_, f, _) in lock(&self.0).iter() {
            *m.entry(*f).or_default() += 1;
        }
        m
    }
}

/// Injects one fault; returns what it did (None: nothing to hit for that kind).
fn inject(pool: &Pool, faults: &FaultLog, rng: &mut Rng, kind: Fault) -> Option<String> {
    match kind {
        Fault::Agent => {
            let i = rng.below(pool.hosts.len() as u64) as usize;
            let name = pool.hosts[i].name;
            faults.record(kind, Some(name));
            let before: Vec<u32> = pool
                .agent_pid(i)
                .map(|a| descendants(&process_table(), a))
                .unwrap_or_default()
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            pool.stop(&pool.agents[i]);
            let down = rng.ms(200, 3000);
            std::thread::sleep(down);
            // Its workers and slice server die with it (they could not serve without it).
            let mut left = Vec::new();
            wait_until(Duration::from_secs(2), || {
                left = before.iter().copied().filter(|p| alive(*p)).collect();
                left.is_empty()
            });
            for p in &left {
                lock(&pool.outlived).push(format!(
                    "{p} {:?} outlived its agent on {name}",
                    cmdline(*p)
                ));
            }
            pool.start_agent(i);
            Some(format!(
                "agent {name} down {} ms ({} processes went with it)",
                down.as_millis(),
                before.len() - left.len()
            ))
        }
        Fault::Controller => {
            faults.record(kind, None);
            pool.stop(&pool.controller);
            let down = rng.ms(200, 2000);
            std::thread::sleep(down);
            let up = pool.start_controller();
            Some(format!(
                "controller down {} ms{}",
                down.as_millis(),
                if up { "" } else { ", NOT back within 20 s" }
            ))
        }
        Fault::Worker | Fault::RemoteWorker => {
            let mut all: Vec<(usize, String, u32)> = Vec::new();
            for i in 0..pool.hosts.len() {
                for (id, pid) in pool.workers(i) {
                    let remote = cmdline(pid).iter().any(|a| a == "--remote");
                    if remote == (kind == Fault::RemoteWorker) {
                        all.push((i, id, pid));
                    }
                }
            }
            if all.is_empty() {
                return None;
            }
            let (i, id, pid) = all.swap_remove(rng.below(all.len() as u64) as usize);
            let name = pool.hosts[i].name;
            faults.record(kind, Some(name));
            kill9(pid);
            Some(format!("worker {id} on {name} (pid {pid})"))
        }
        Fault::SliceServer => {
            let servers: Vec<usize> = (0..pool.hosts.len())
                .filter(|&i| pool.hosts[i].serve_port != 0)
                .collect();
            let i = servers[rng.below(servers.len() as u64) as usize];
            let pid = pool.slice_server(i)?;
            let name = pool.hosts[i].name;
            faults.record(kind, Some(name));
            kill9(pid);
            Some(format!("slice server of {name} (pid {pid})"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

struct Held {
    id: String,
    vm_host: String,
    gpu_host: String,
    socket: PathBuf,
    since: Instant,
}

/// Pauses the clients between operations (checkpoints) and stops them.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>, // (paused, clients waiting at the gate)
    cv: Condvar,
    stop: AtomicBool,
}

impl Gate {
    fn pass(&self) {
        let mut g = lock(&self.state);
        if !g.0 {
            return;
        }
        g.1 += 1;
        self.cv.notify_all();
        while g.0 && !self.stop.load(Ordering::Relaxed) {
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        g.1 -= 1;
    }
    /// Pauses; true when all `n` clients are waiting within `bound`.
    fn pause(&self, n: usize, bound: Duration) -> bool {
        let start = Instant::now();
        let mut g = lock(&self.state);
        g.0 = true;
        while g.1 < n {
            if start.elapsed() >= bound {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
    fn resume(&self) {
        lock(&self.state).0 = false;
        self.cv.notify_all();
    }
}

struct Shared {
    pool: Arc<Pool>,
    program: PathBuf,
    ops: Counts,
    runs: Counts,
    faults: FaultLog,
    gate: Gate,
    /// Failures no fault explains (one line each).
    unexplained: Mutex<Vec<String>>,
}

const PROFILES: [&str; 5] = ["1/2", "1/4", "1/4", "1/8", "1/16"];

fn client(sh: Arc<Shared>, n: usize, seed: u64) {
    let mut rng = Rng(seed);
    let mut held: Vec<Held> = Vec::new();
    // VMs whose allocation may have been made although its answer was lost.
    let mut uncertain: Vec<String> = Vec::new();
    let mut vm_seq = 0u64;
    let hosts: Vec<&'static str> = sh.pool.hosts.iter().map(|h| h.name).collect();
    while !sh.gate.stop.load(Ordering::Relaxed) {
        sh.gate.pass();
        if sh.gate.stop.load(Ordering::Relaxed) {
            break;
        }
        let r = rng.below(100);
        if held.is_empty() || (r < 30 && held.len() < 3) {
            vm_seq += 1;
            let vm = format!("soak-c{n}-vm{vm_seq}");
            allocate(&sh, &mut rng, &hosts, &vm, &mut held, &mut uncertain);
        } else if r < 80 {
            let i = rng.below(held.len() as u64) as usize;
            if !run_program(&sh, &held[i], n) {
                held.swap_remove(i);
            }
        } else {
            let i = rng.below(held.len() as u64) as usize;
            let h = held.swap_remove(i);
            if !release(&sh, &h) {
                held.push(h);
            }
        }
        std::thread::sleep(rng.ms(50, 400));
    }
    // Release what this client holds (retrying while the controller is down).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !held.is_empty() && Instant::now() < deadline {
        let h = held.swap_remove(0);
        if !release(&sh, &h) {
            held.push(h);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    for h in held {
        lock(&sh.unexplained).push(format!("could not release {} at the end", h.id));
    }
    // Allocations made for requests whose answer was lost: found by their VM name.
    if !uncertain.is_empty() {
        let found = wait_until(Duration::from_secs(30), || {
            match sh.pool.api.list("allocations") {
                Ok(list) => {
                    for a in list {
                        let vm = a["vm"].as_str().unwrap_or_default();
                        if uncertain.iter().any(|u| u == vm)
                            && let Some(id) = a["id"].as_str()
                        {
                            sh.ops.add("release of an allocation whose answer was lost");
                            let _ =
                                sh.pool
                                    .api
                                    .call("DELETE", &format!("/v1/allocations/{id}"), None);
                        }
                    }
                    true
                }
                Err(_) => false,
            }
        });
        if !found {
            lock(&sh.unexplained).push("could not list allocations at the end".into());
        }
    }
}

fn allocate(
    sh: &Shared,
    rng: &mut Rng,
    hosts: &[&str],
    vm: &str,
    held: &mut Vec<Held>,
    uncertain: &mut Vec<String>,
) {
    let host = hosts[rng.below(hosts.len() as u64) as usize];
    let slice = if rng.chance(0.2) {
        json!({"sm_count": 8 + rng.below(25), "memory_bytes": (2u64 + rng.below(8)) << 30})
    } else {
        json!({"profile": PROFILES[rng.below(PROFILES.len() as u64) as usize]})
    };
    let allow_remote = rng.chance(if host == "vm-c" { 0.85 } else { 0.5 });
    let body = json!({"vm": vm, "host": host, "slice": slice,
                      "policy": {"allow_remote": allow_remote}});
    let since = Instant::now();
    match sh.pool.api.call("POST", "/v1/allocations", Some(body)) {
        Answer::Ok(a) => {
            let remote = a["remote"].as_bool().unwrap_or(false);
            sh.ops.add(if remote {
                "allocate: ok, remote"
            } else {
                "allocate: ok, local"
            });
            held.push(Held {
                id: a["id"].as_str().unwrap_or_default().to_string(),
                vm_host: host.to_string(),
                gpu_host: a["gpu_host"].as_str().unwrap_or_default().to_string(),
                socket: PathBuf::from(a["socket_path"].as_str().unwrap_or_default()),
                since,
            });
        }
        Answer::Status(409, t) if t.contains("no_capacity") => sh.ops.add("allocate: no capacity"),
        Answer::Status(409, _) => sh.ops.add("allocate: conflict (host lost after a fault)"),
        Answer::Status(s, t) => {
            sh.ops.add("allocate: other error");
            lock(&sh.unexplained).push(format!("allocate on {host}: HTTP {s}: {t}"));
        }
        Answer::Unreachable(_) => {
            sh.ops.add("allocate: controller unreachable");
            if !sh.faults.controller_since(since - Duration::from_secs(30)) {
                lock(&sh.unexplained).push(format!(
                    "allocate on {host}: controller unreachable with no fault"
                ));
            }
            uncertain.push(vm.to_string());
        }
    }
}

/// Releases; false when it should be retried (controller unreachable).
fn release(sh: &Shared, h: &Held) -> bool {
    match sh
        .pool
        .api
        .call("DELETE", &format!("/v1/allocations/{}", h.id), None)
    {
        Answer::Ok(_) => {
            sh.ops.add("release: ok");
            true
        }
        Answer::Status(404, _) => {
            count_reclaimed(
                sh,
                h,
                "release: already reclaimed after a fault",
                "release: reclaimed with no fault",
            );
            true
        }
        Answer::Status(s, t) => {
            sh.ops.add("release: other error");
            lock(&sh.unexplained).push(format!("release {}: HTTP {s}: {t}", h.id));
            true
        }
        Answer::Unreachable(_) => {
            sh.ops.add("release: controller unreachable (retried)");
            false
        }
    }
}

/// Whether the controller no longer has allocation `h` (reclaimed); counts it.
fn reclaimed(sh: &Shared, h: &Held) -> bool {
    let gone = matches!(
        sh.pool
            .api
            .call("GET", &format!("/v1/allocations/{}", h.id), None),
        Answer::Status(404, _)
    );
    if gone {
        count_reclaimed(
            sh,
            h,
            "held allocation reclaimed after a fault",
            "held allocation reclaimed with no fault",
        );
    }
    gone
}

/// Counts allocation `h`, found reclaimed, as `after_fault` when a fault hit its hosts, else as
/// `no_fault` and unexplained.
fn count_reclaimed(sh: &Shared, h: &Held, after_fault: &str, no_fault: &str) {
    // (A fault just before the allocation counts: a host that had just died.)
    let since = h.since.checked_sub(RECOVERY).unwrap_or(h.since);
    if sh.faults.hit(&[&h.vm_host, &h.gpu_host], since) {
        sh.ops.add(after_fault);
    } else {
        sh.ops.add(no_fault);
        lock(&sh.unexplained).push(format!(
            "{} (vm on {}, gpu on {}) was reclaimed although no fault hit its hosts",
            h.id, h.vm_host, h.gpu_host
        ));
    }
}

/// Runs the driver-API program on a held slice; false when the slice is gone (reclaimed).
fn run_program(sh: &Shared, h: &Held, n: usize) -> bool {
    let hosts = [h.vm_host.as_str(), h.gpu_host.as_str()];
    // A fault explains a failure when it hit the slice's hosts during the run or shortly
    // before (while the pool recovers: an agent back, a worker or slice server restarted).
    let since = Instant::now().checked_sub(RECOVERY).unwrap_or(h.since);
    let fault_hit = |sh: &Shared| sh.faults.hit(&hosts, since);
    if reclaimed(sh, h) {
        return false;
    }
    // The worker starts at the agent's next heartbeat.
    if !wait_until(Duration::from_secs(20), || h.socket.exists()) {
        if reclaimed(sh, h) {
            return false;
        }
        if fault_hit(sh) {
            sh.runs.add("no socket (fault hit the slice)");
        } else {
            sh.runs.add("no socket (no fault)");
            lock(&sh.unexplained).push(format!("{}: worker socket never appeared", h.id));
        }
        return true;
    }
    let out_path = sh.pool.dir.join(format!("client{n}.out"));
    let Ok(out) = std::fs::File::create(&out_path) else {
        return true;
    };
    let Ok(err) = out.try_clone() else {
        return true;
    };
    let mut cmd = Command::new(&sh.program);
    cmd.arg(vgpu_tests::fixture("kernels.cubin"))
        .arg("--no-kernel-check")
        .env("LD_LIBRARY_PATH", sh.pool.bins.join("shim"))
        .env("VGPU_DEVICE", format!("vhost-user:{}", h.socket.display()))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    die_with_us(&mut cmd);
    let Ok(mut child) = cmd.spawn() else {
        sh.runs.add("could not start");
        return true;
    };
    lock(&sh.pool.live).insert(child.id());
    let st = wait_bounded(&mut child, PROGRAM_BOUND);
    lock(&sh.pool.live).remove(&child.id());
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    match st {
        None => {
            sh.runs.add("hung");
            lock(&sh.unexplained).push(format!(
                "{}: the program hung past {:?} (vm on {}, gpu on {})",
                h.id, PROGRAM_BOUND, h.vm_host, h.gpu_host
            ));
            let _ = std::fs::copy(&out_path, sh.pool.dir.join(format!("hung-{}.out", h.id)));
        }
        Some(s) if s.success() && text.contains("E2E PASS") => sh.runs.add("passed"),
        Some(_) if reclaimed(sh, h) => {
            sh.runs
                .add("failed (the slice was reclaimed after a fault)");
            return false;
        }
        Some(_) if fault_hit(sh) => sh.runs.add("failed (fault hit the slice)"),
        Some(s) => {
            sh.runs.add("failed (no fault)");
            let tail: String = text.lines().rev().take(4).collect::<Vec<_>>().join(" | ");
            lock(&sh.unexplained).push(format!(
                "{}: the program failed ({s}) with no fault on {} or {}: {tail}",
                h.id, h.vm_host, h.gpu_host
            ));
            let _ = std::fs::copy(&out_path, sh.pool.dir.join(format!("failed-{}.out", h.id)));
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Compares the controller's allocations and ledger with what the agents run and the files
/// they keep. Empty when they agree.
fn disagreements(pool: &Pool) -> Vec<String> {
    let mut bad = Vec::new();
    let allocs = match pool.api.list("allocations") {
        Ok(a) => a,
        Err(e) => return vec![e],
    };
    let gpus = match pool.api.list("gpus") {
        Ok(g) => g,
        Err(e) => return vec![e],
    };
    // The ledger: each GPU's usage is the sum of its allocations, to the byte.
    for g in &gpus {
        let uuid = g["uuid"].as_str().unwrap_or_default();
        let on: Vec<&Value> = allocs
            .iter()
            .filter(|a| a["gpu_uuid"].as_str() == Some(uuid))
            .collect();
        let mem: u64 = on.iter().filter_map(|a| a["memory_bytes"].as_u64()).sum();
        let sm: u64 = on.iter().filter_map(|a| a["sm_count"].as_u64()).sum();
        let ledger = (
            g["memory_allocated_bytes"].as_u64(),
            g["sm_allocated"].as_u64(),
        );
        if ledger != (Some(mem), Some(sm)) {
            bad.push(format!(
                "GPU {uuid}: ledger {ledger:?} but its allocations hold {mem} bytes, {sm} SMs"
            ));
        }
    }
    let table = process_table();
    let mut status_bytes = 0u64;
    for (i, h) in pool.hosts.iter().enumerate() {
        let want: BTreeMap<String, &Value> = allocs
            .iter()
            .filter(|a| a["vm_host"].as_str() == Some(h.name))
            .map(|a| (a["id"].as_str().unwrap_or_default().to_string(), a))
            .collect();
        let runs = pool.workers(i);
        let want_ids: BTreeSet<&String> = want.keys().collect();
        let run_ids: BTreeSet<&String> = runs.keys().collect();
        if want_ids != run_ids {
            bad.push(format!(
                "{}: the controller places {want_ids:?}, the agent runs {run_ids:?}",
                h.name
            ));
        }
        for (id, a) in &want {
            if a["state"].as_str() != Some("running") {
                bad.push(format!("{id}: state {}", a["state"]));
            }
            let Some(&pid) = runs.get(id) else { continue };
            let cmd = cmdline(pid);
            let mem = arg_after(&cmd, "--mem-limit").and_then(|m| m.parse::<u64>().ok());
            let sm = arg_after(&cmd, "--sm-count").and_then(|m| m.parse::<u64>().ok());
            if mem != a["memory_bytes"].as_u64() || sm != a["sm_count"].as_u64() {
                bad.push(format!(
                    "{id}: worker runs with {mem:?} bytes, {sm:?} SMs; allocated {} bytes, {} SMs",
                    a["memory_bytes"], a["sm_count"]
                ));
            }
            if arg_after(&cmd, "--remote").as_deref() != a["endpoint"].as_str() {
                bad.push(format!(
                    "{id}: worker's --remote {:?}, allocation's endpoint {}",
                    arg_after(&cmd, "--remote"),
                    a["endpoint"]
                ));
            }
        }
        // Processes: the agent's children are its workers and its slice server, nothing more.
        if let Some(agent) = pool.agent_pid(i) {
            let mut expect: BTreeSet<u32> = runs.values().copied().collect();
            let server = pool.slice_server(i);
            match server {
                Some(p) => {
                    expect.insert(p);
                }
                None if h.serve_port != 0 => bad.push(format!("{}: no slice server", h.name)),
                None => {}
            }
            // The agent's own children (depth 1): a worker's spawner and per-client worker
            // processes, and the slice server's session processes, are theirs.
            let found: BTreeSet<u32> = descendants(&table, agent)
                .into_iter()
                .filter(|&(_, depth)| depth == 1)
                .map(|(p, _)| p)
                .collect();
            let extra: Vec<String> = found
                .difference(&expect)
                .map(|p| format!("{p} {:?}", cmdline(*p)))
                .collect();
            if !extra.is_empty() {
                bad.push(format!(
                    "{}: processes no allocation explains: {extra:?}",
                    h.name
                ));
            }
            let strays: Vec<&u32> = expect.difference(&found).collect();
            if !strays.is_empty() {
                bad.push(format!(
                    "{}: workers {strays:?} are not the agent's",
                    h.name
                ));
            }
        }
        // Files: a socket and a status file per running worker, a pid file per worker, logs.
        let state = pool.state(h.name);
        let mut want_files: BTreeSet<String> = BTreeSet::new();
        // (A remote slice's worker keeps no status file: its ledger is on the GPU host.)
        let local = |a: &Value| a["remote"].as_bool() == Some(false);
        for (id, a) in &want {
            want_files.insert(format!("{id}.sock"));
            if local(a) {
                want_files.insert(format!("{id}.sock.status"));
            }
        }
        let files: BTreeSet<String> = std::fs::read_dir(state.join("sockets"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        if files != want_files {
            bad.push(format!(
                "{}: sockets/ holds {files:?}, expected {want_files:?}",
                h.name
            ));
        }
        let mut logs = 0;
        for e in std::fs::read_dir(state.join("workers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".pid") {
                if !want.contains_key(id) {
                    bad.push(format!("{}: stale pid file {name}", h.name));
                }
            } else if let Some(id) = name.strip_suffix(".log") {
                if id != "slice-server" && !want.contains_key(id) {
                    logs += 1;
                }
            } else {
                bad.push(format!("{}: unexpected file workers/{name}", h.name));
            }
        }
        if logs > AGENT_LOG_CAP {
            bad.push(format!(
                "{}: {logs} logs of stopped workers (cap {AGENT_LOG_CAP})",
                h.name
            ));
        }
        // Bytes: what the slices' own ledgers say they hold.
        for id in want.iter().filter(|(_, a)| local(a)).map(|(id, _)| id) {
            let p = state.join("sockets").join(format!("{id}.sock.status"));
            let v: Option<Value> = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            match v.and_then(|v| v["memory_used_bytes"].as_u64()) {
                Some(b) => status_bytes += b,
                None => bad.push(format!("{id}: no status file with memory_used_bytes")),
            }
        }
    }
    // No program runs at a checkpoint, so the slices hold no device memory.
    if status_bytes != 0 {
        bad.push(format!(
            "the slices' status files say {status_bytes} bytes in use with no program running"
        ));
    }
    bad
}

struct Checks(Vec<(bool, String)>);

impl Checks {
    fn add(&mut self, ok: bool, what: String) {
        println!("soak: check {}: {what}", if ok { "ok" } else { "FAILED" });
        self.0.push((ok, what));
    }
    /// A check that holds when nothing was `found`; what was is named after `what`.
    fn none(&mut self, what: &str, found: &[String]) {
        if found.is_empty() {
            self.add(true, what.to_string());
        } else {
            self.add(false, format!("{what}: {}", found.join("; ")));
        }
    }
}

/// Waits (bounded) for the pool to agree; returns what still disagrees.
fn settle(pool: &Pool) -> Vec<String> {
    let start = Instant::now();
    loop {
        let bad = if pool.all_up() {
            disagreements(pool)
        } else {
            vec!["a pool process is not running".to_string()]
        };
        if bad.is_empty() || start.elapsed() >= SETTLE_BOUND {
            return bad;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn main() {
    let args = parse_args();
    let started = Instant::now();
    let bins = binaries();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("vgpu-soak-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("soak dir");
    let dir = std::fs::canonicalize(&dir).expect("soak dir");
    let program = compile_program(&bins, &dir);
    let ctl_port = free_port();
    let hosts = vec![
        HostSpec {
            name: "gpu-a",
            gpus: 2,
            serve_port: free_port(),
        },
        HostSpec {
            name: "gpu-b",
            gpus: 1,
            serve_port: free_port(),
        },
        HostSpec {
            name: "vm-c",
            gpus: 0,
            serve_port: 0,
        },
    ];
    println!(
        "soak: seed {}, {} s, in {} (controller 127.0.0.1:{ctl_port}, heartbeat {HEARTBEAT_MS} ms, lease {LEASE_MS} ms)",
        args.seed,
        args.duration.as_secs(),
        dir.display()
    );
    let pool = Arc::new(Pool {
        dir: dir.clone(),
        bins,
        ctl_port,
        api: Api::new(format!("http://127.0.0.1:{ctl_port}")),
        agent_token: format!("soak-agent-{}-{}", std::process::id(), args.seed),
        agents: hosts.iter().map(|_| Mutex::new(None)).collect(),
        hosts,
        controller: Mutex::new(None),
        live: Mutex::new(BTreeSet::new()),
        outlived: Mutex::new(Vec::new()),
    });
    {
        let pool = pool.clone();
        let at = args.duration + WATCHDOG_GRACE;
        std::thread::spawn(move || {
            std::thread::sleep(at);
            println!("soak: WATCHDOG: still running {at:?} after the start; killing the pool");
            pool.kill_everything();
            println!("soak: 0 passed, 1 failed");
            std::process::exit(1);
        });
    }
    let mut checks = Checks(Vec::new());
    let up = pool.start_controller();
    for i in 0..pool.hosts.len() {
        pool.start_agent(i);
    }
    let ready = up
        && wait_until(Duration::from_secs(30), || {
            pool.api.list("hosts").is_ok_and(|h| h.len() == 3)
                && (0..pool.hosts.len())
                    .all(|i| pool.hosts[i].serve_port == 0 || pool.slice_server(i).is_some())
        });
    checks.add(
        ready,
        "the pool started (controller, 3 agents, 2 slice servers)".into(),
    );
    if !ready {
        finish(&pool, checks, &dir);
    }
    // One GPU takes any mix of shapes; the others one shape at a time.
    let _ = pool.api.call(
        "PATCH",
        "/v1/gpus/SIM-GPU-gpu-a-1",
        Some(json!({"slice_mode": "mixed"})),
    );

    let shared = Arc::new(Shared {
        pool: pool.clone(),
        program,
        ops: Counts::default(),
        runs: Counts::default(),
        faults: FaultLog::default(),
        gate: Gate::default(),
        unexplained: Mutex::new(Vec::new()),
    });
    let mut rng = Rng(args.seed);
    let clients: Vec<_> = (0..3)
        .map(|n| {
            let sh = shared.clone();
            let seed = rng.next();
            std::thread::spawn(move || client(sh, n, seed))
        })
        .collect();

    let t0 = Instant::now();
    let end = t0 + args.duration;
    let mut next_checkpoint = t0 + CHECKPOINT_EVERY;
    let mut fds: Vec<(u32, i64)> = Vec::new(); // (controller pid, descriptors)
    let mut checkpoint = 0;
    let mut bag: Vec<Fault> = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(
            rng.ms(1500, 4500)
                .min(end.saturating_duration_since(Instant::now())),
        );
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_checkpoint {
            checkpoint += 1;
            let at = (now - t0).as_secs();
            let paused = shared
                .gate
                .pause(3, PROGRAM_BOUND + Duration::from_secs(30));
            let bad = if paused {
                settle(&pool)
            } else {
                vec!["the clients did not pause".to_string()]
            };
            if let Some(pid) = pool.controller_pid()
                && let Some(n) = fd_count(pid)
            {
                fds.push((pid, n));
            }
            checks.add(
                bad.is_empty(),
                format!(
                    "checkpoint {checkpoint} at {at} s: controller ledger, allocations, agents' workers, files and status bytes agree{}",
                    if bad.is_empty() { String::new() } else { format!(": {}", bad.join("; ")) }
                ),
            );
            shared.gate.resume();
            next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
            continue;
        }
        // The controller is only killed in the first 60% of the run, so the last controller's
        // descriptors are measured over at least the rest.
        let late = now - t0 > args.duration.mul_f64(0.6);
        if bag.is_empty() {
            // Every kind once per round, in a random order (workers twice: the commonest).
            bag = vec![
                Fault::Agent,
                Fault::Worker,
                Fault::Worker,
                Fault::Controller,
                Fault::SliceServer,
                Fault::RemoteWorker,
            ];
            if late {
                bag.retain(|k| *k != Fault::Controller);
            }
        }
        let kind = bag.swap_remove(rng.below(bag.len() as u64) as usize);
        if late && kind == Fault::Controller {
            continue;
        }
        let what = inject(&pool, &shared.faults, &mut rng, kind)
            .unwrap_or_else(|| format!("{}: nothing to hit", kind.name()));
        println!(
            "soak: {:>5} s fault: {what}",
            (Instant::now() - t0).as_secs()
        );
    }

    // The end: no more faults; clients release what they hold.
    shared.gate.stop.store(true, Ordering::Relaxed);
    shared.gate.resume();
    for c in clients {
        let _ = c.join();
    }
    let bad = settle(&pool);
    let allocs = pool.api.list("allocations").unwrap_or_default();
    let gpus = pool.api.list("gpus").unwrap_or_default();
    let used: Vec<String> = gpus
        .iter()
        .filter(|g| {
            g["sm_allocated"].as_u64() != Some(0) || g["memory_allocated_bytes"].as_u64() != Some(0)
        })
        .map(|g| g.to_string())
        .collect();
    checks.add(
        allocs.is_empty() && used.is_empty() && !gpus.is_empty(),
        format!(
            "after releasing everything: {} live allocations, {} GPUs with SMs or bytes in use (of {})",
            allocs.len(),
            used.len(),
            gpus.len()
        ),
    );
    checks.add(
        bad.is_empty(),
        format!(
            "after releasing everything: agents run no worker, sockets/ and workers/ hold no socket, status or pid file{}",
            if bad.is_empty() { String::new() } else { format!(": {}", bad.join("; ")) }
        ),
    );
    if let Some(pid) = pool.controller_pid()
        && let Some(n) = fd_count(pid)
    {
        fds.push((pid, n));
    }
    let last = fds.last().copied();
    let first = last.and_then(|(pid, _)| fds.iter().find(|(p, _)| *p == pid).copied());
    let grown = match (first, last) {
        (Some(f), Some(l)) if fds.iter().filter(|(p, _)| *p == l.0).count() >= 2 => Some(l.1 - f.1),
        _ => None,
    };
    checks.add(
        grown.is_some_and(|g| g <= FD_SLACK),
        format!(
            "controller descriptors: {first:?} at its first checkpoint, {last:?} at the end (at most +{FD_SLACK})"
        ),
    );
    let unexplained = lock(&shared.unexplained).clone();
    checks.add(
        shared.runs.get("hung") == 0,
        format!("no program hung past {PROGRAM_BOUND:?}"),
    );
    checks.none(
        "every failed run, lost socket or reclaimed allocation is explained by a fault",
        &unexplained,
    );
    let outlived = lock(&pool.outlived).clone();
    checks.none(
        "a killed agent's workers and slice server died with it",
        &outlived,
    );
    let passed = shared.runs.get("passed");
    checks.add(passed > 0, format!("programs passed on the pool: {passed}"));
    let fault_counts = shared.faults.counts();
    let missing: Vec<&str> = Fault::ALL
        .iter()
        .filter(|f| !fault_counts.contains_key(f))
        .map(|f| f.name())
        .collect();
    checks.add(
        missing.is_empty() || args.duration < Duration::from_secs(60),
        format!("every kind of fault was injected (missing: {missing:?})"),
    );

    println!("soak: operations");
    for (k, v) in shared.ops.snapshot() {
        println!("soak:   {k:<48} {v:>6}");
    }
    println!("soak: faults");
    for f in Fault::ALL {
        println!(
            "soak:   {:<48} {:>6}",
            f.name(),
            fault_counts.get(&f).copied().unwrap_or(0)
        );
    }
    println!("soak: program runs");
    for (k, v) in shared.runs.snapshot() {
        println!("soak:   {k:<48} {v:>6}");
    }
    println!(
        "soak: {} s of load, {} s in all",
        args.duration.as_secs(),
        started.elapsed().as_secs()
    );
    finish(&pool, checks, &dir);
}

/// Stops the pool, checks that none of its processes is left, prints the verdict and exits.
fn finish(pool: &Pool, mut checks: Checks, dir: &Path) -> ! {
    for a in &pool.agents {
        pool.stop(a);
    }
    pool.stop(&pool.controller);
    let me = std::process::id();
    let needle = dir.display().to_string();
    let token = format!("VGPU_REMOTE_TOKEN={}", pool.agent_token);
    let mut left = Vec::new();
    let gone = wait_until(Duration::from_secs(10), || {
        left = pids()
            .into_iter()
            .filter(|&p| p != me && alive(p))
            .filter(|&p| cmdline(p).iter().any(|a| a.contains(&needle)) || environ_has(p, &token))
            .map(|p| format!("{p} {:?}", cmdline(p)))
            .collect();
        left.is_empty()
    });
    checks.add(
        gone,
        format!("after stopping the pool no process of it is left: {left:?}"),
    );
    let failed = checks.0.iter().filter(|c| !c.0).count();
    let passed = checks.0.len() - failed;
    if failed == 0 {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        println!("soak: logs kept in {}", dir.display());
    }
    println!("soak: {passed} passed, {failed} failed");
    std::process::exit(i32::from(failed > 0));
}

#[cfg(test)]
mod tests {
    use super::Checks;

    /// Breaks if `none` passes with something found, or drops what was found from its line.
    #[test]
    fn a_none_check_fails_naming_what_was_found() {
        let mut c = Checks(Vec::new());
        c.none("nothing left", &[]);
        c.none("nothing left", &["a".to_string(), "b".to_string()]);
        assert_eq!(
            c.0,
            [
                (true, "nothing left".to_string()),
                (false, "nothing left: a; b".to_string())
            ]
        );
    }
}

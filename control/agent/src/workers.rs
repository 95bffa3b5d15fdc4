//! Per-VM worker processes: start, watch, stop, adopt leftovers after an agent restart.
//!
//! Every path comes from the agent's own state directory: `sockets/<allocation>.sock` (and the
//! worker's `<socket>.status`), `workers/<allocation>.pid` and `workers/<allocation>.log`. The
//! allocation id from the controller is checked to be a plain name before it names a file.
//! Workers die with the agent (`PR_SET_PDEATHSIG`), carry their allocation id in their
//! environment (`VGPU_AGENT_ALLOCATION`) so that a pid file is only trusted for the process it
//! was written for, and their files are removed when they stop.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vgpu_pool_wire::{Assignment, WorkerReport, WorkerState};

enum Proc {
    /// Started by this agent process.
    Child(Child),
    /// Found running at start-up (pid file); we cannot wait() on it, only watch /proc.
    Adopted(u32),
}

pub(crate) struct Worker {
    proc: Proc,
    pub(crate) assignment: Option<Assignment>,
}

/// Environment variable naming the allocation a worker serves (checked before adopting it).
const ALLOCATION_ENV: &str = "VGPU_AGENT_ALLOCATION";

/// Logs of workers that exited on their own are kept for diagnosis, at most this many.
pub(crate) const KEEP_EXITED_LOGS: usize = 16;

/// Sends a child's stdout and stderr to `path`, created 0600 (nowhere if it cannot be created).
fn log_to(cmd: &mut Command, path: &Path) {
    match vgpu_pool_wire::create_private(path).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((o, e)) => cmd.stdout(o).stderr(e),
        Err(_) => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
    };
}

/// Device memory the slice holds, as its worker last reported it in its status file (`None`:
/// not reported, e.g. a remote slice or a worker without `--status-file`).
pub(crate) fn slice_memory_used(status_file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status_file).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("memory_used_bytes")?.as_u64()
}

/// An allocation id names files in the state directory: 1-128 characters of
/// `[A-Za-z0-9._-]`, starting with a letter or digit (so never `..`, a path or a flag).
pub(crate) fn valid_allocation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// What the agent accepts from the controller before it starts a process for it.
pub(crate) fn check_assignment(a: &Assignment) -> Result<(), String> {
    if !valid_allocation_id(&a.allocation_id) {
        return Err(format!(
            "allocation id {:?} is not a plain name",
            a.allocation_id
        ));
    }
    if a.gpu_arg != "sim" && a.gpu_arg.parse::<u32>().is_err() {
        return Err(format!(
            "GPU {:?} is neither `sim` nor a CUDA ordinal",
            a.gpu_arg
        ));
    }
    if a.memory_bytes == 0 {
        return Err("the slice has no memory".into());
    }
    if let Some(ep) = &a.remote_endpoint {
        let ok = ep.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.starts_with('-')
                && host.bytes().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']')
                })
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !ok {
            return Err(format!("remote endpoint {ep:?} is not host:port"));
        }
    }
    Ok(())
}

/// Makes a child die when the agent (the thread that spawns it) dies, and refuses to start it
/// when the agent is already gone (the child would have been reparented before `prctl`).
fn die_with_agent(cmd: &mut Command) {
    let agent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec; it only calls prctl(2) and
    // getppid(2), which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != agent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// True when process `pid` was started for allocation `id` (its environment says so), so a pid
/// file left behind is never taken for an unrelated process that got the same pid.
fn runs_for(pid: u32, id: &str) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{ALLOCATION_ENV}={id}");
    env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

/// This host's remote-slice server; stopped on drop.
pub(crate) struct SliceServer(std::process::Child);

impl SliceServer {
    /// True once the server process has ended (killed, crashed).
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for SliceServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct Workers {
    /// `<state-dir>/workers`: pid files and logs (mode 0700).
    dir: PathBuf,
    /// `<state-dir>/sockets`: the workers' vhost-user sockets and status files.
    sockets: PathBuf,
    bin: PathBuf,
    prefix_args: Vec<String>,
    /// The worker's `--help` text, to pass only flags it knows (None: not probed).
    help: Option<String>,
    pub(crate) running: HashMap<String, Worker>,
    /// Workers that exited on their own, kept (and reported) while the controller still assigns them.
    pub(crate) exited: HashMap<String, Option<i32>>,
    pub(crate) starts: u64,
    pub(crate) exits: u64,
    pub(crate) start_failures: u64,
    /// The pool's shared secret for remote slices, given to the slice server and the workers
    /// (as `VGPU_REMOTE_TOKEN`, never on a command line).
    remote_token: Option<String>,
    /// Assignments refused by `check_assignment` (logged once each).
    refused: HashSet<String>,
    /// `--socket-mode` and the id of `--socket-group`, passed to each worker.
    socket_mode: Option<u32>,
    socket_gid: Option<u32>,
}

fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; a zombie ("Z") has exited.
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we started or adopted from our own pid file; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// `--help` of the worker binary, when it can be asked safely (no prefix arguments: with a
/// stand-in such as `sh -c '...'` the extra argument would not mean help).
fn probe_help(bin: &std::path::Path, prefix: &[String]) -> Option<String> {
    if !prefix.is_empty() {
        return None;
    }
    let out = Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Workers {
    fn supports(&self, flag: &str) -> bool {
        self.help.as_ref().is_none_or(|h| h.contains(flag))
    }

    /// Who may connect to the workers' sockets (`vhost-gpu --socket-mode/--socket-group`).
    pub(crate) fn set_socket_access(&mut self, mode: Option<u32>, gid: Option<u32>) {
        self.socket_mode = mode;
        self.socket_gid = gid;
    }

    /// Remote slices between this pool's hosts prove `token` (see `docs/remote.md`).
    pub(crate) fn set_remote_token(&mut self, token: &str) {
        self.remote_token = Some(token.to_string());
    }

    /// Starts this host's `vhost-gpu --listen ADDR`, which serves its GPUs to other hosts'
    /// VMs (remote slices), when the worker program is one that can (its help names
    /// `--listen`). Stopped when the returned value is dropped.
    pub(crate) fn start_slice_server(&self, addr: &str, sim: bool) -> Option<SliceServer> {
        if !self.help.as_ref().is_some_and(|h| h.contains("--listen")) {
            log::warn!(
                "worker {} cannot serve remote slices (no --listen); this host's GPUs serve local VMs only",
                self.bin.display()
            );
            return None;
        }
        let mut c = Command::new(&self.bin);
        c.args(&self.prefix_args)
            .arg("--listen")
            .arg(addr)
            .arg("--gpu")
            .arg(if sim { "sim" } else { "0" })
            .stdin(Stdio::null());
        if let Some(t) = &self.remote_token {
            c.env("VGPU_REMOTE_TOKEN", t);
        }
        // The server belongs to this agent: it must not outlive it (a new agent starts its own).
        die_with_agent(&mut c);
        log_to(&mut c, &self.dir.join("slice-server.log"));
        match c.spawn() {
            Ok(child) => {
                log::info!("serving remote slices on {addr} (pid {})", child.id());
                Some(SliceServer(child))
            }
            Err(e) => {
                log::error!("cannot start the remote-slice server on {addr}: {e}");
                None
            }
        }
    }

    pub(crate) fn new(
        dir: PathBuf,
        sockets: PathBuf,
        bin: PathBuf,
        prefix_args: Vec<String>,
    ) -> Self {
        let help = probe_help(&bin, &prefix_args);
        Workers {
            dir,
            sockets,
            bin,
            prefix_args,
            help,
            running: HashMap::new(),
            exited: HashMap::new(),
            starts: 0,
            exits: 0,
            start_failures: 0,
            remote_token: None,
            refused: HashSet::new(),
            socket_mode: None,
            socket_gid: None,
        }
    }

    fn pid_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pid"))
    }

    fn log_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// The worker's vhost-user socket: always under this agent's own socket directory.
    pub(crate) fn socket_path(&self, id: &str) -> PathBuf {
        self.sockets.join(format!("{id}.sock"))
    }

    /// Where the worker reports its state (`vhost-gpu --status-file`), next to its socket.
    pub(crate) fn status_path(&self, id: &str) -> PathBuf {
        self.sockets.join(format!("{id}.sock.status"))
    }

    /// Removes what a stopped worker leaves behind: its socket, status file and pid file, and
    /// its log unless `keep_log` (a worker that failed keeps it; see `prune_logs`).
    fn remove_files(&self, id: &str, keep_log: bool) {
        let _ = std::fs::remove_file(self.socket_path(id));
        let _ = std::fs::remove_file(self.status_path(id));
        let _ = std::fs::remove_file(self.pid_file(id));
        if !keep_log {
            let _ = std::fs::remove_file(self.log_file(id));
        }
    }

    /// Keeps the logs of at most `KEEP_EXITED_LOGS` workers that are not running (newest first).
    pub(crate) fn prune_logs(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<(std::time::SystemTime, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let id = p.file_stem()?.to_str()?;
                let keep = p.extension()? != "log"
                    || id == "slice-server"
                    || self.running.contains_key(id);
                if keep {
                    return None;
                }
                Some((e.metadata().ok()?.modified().ok()?, p))
            })
            .collect();
        logs.sort_by_key(|l| std::cmp::Reverse(l.0));
        for (_, p) in logs.into_iter().skip(KEEP_EXITED_LOGS) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Removes sockets and status files of workers that do not run (left by a killed agent or a
    /// killed worker).
    fn remove_stale_sockets(&self) {
        let Ok(rd) = std::fs::read_dir(&self.sockets) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let id = name
                .strip_suffix(".sock.status")
                .or_else(|| name.strip_suffix(".sock"));
            if let Some(id) = id
                && !self.running.contains_key(id)
            {
                log::info!("removing stale {name}");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Adopt the workers recorded in pid files that still run and were started for that
    /// allocation (a previous agent's leftovers, when they did not die with it). They are kept
    /// only if the controller's first answer still assigns them (`reconcile`). Stale sockets,
    /// status files and old logs are removed.
    pub(crate) fn adopt(&mut self) {
        self.adopt_pid_files();
        self.remove_stale_sockets();
        self.prune_logs();
    }

    fn adopt_pid_files(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("pid") {
                continue;
            }
            let Some(id) = p.file_stem().and_then(|x| x.to_str()).map(str::to_string) else {
                continue;
            };
            let pid = std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            match pid {
                Some(pid) if pid_alive(pid) && valid_allocation_id(&id) && runs_for(pid, &id) => {
                    log::info!("found leftover worker for {id} (pid {pid})");
                    self.running.insert(
                        id,
                        Worker {
                            proc: Proc::Adopted(pid),
                            assignment: None,
                        },
                    );
                }
                Some(pid) if pid_alive(pid) => {
                    log::warn!(
                        "pid {pid} in {} is not a worker for {id}; leaving that process alone",
                        p.display()
                    );
                    let _ = std::fs::remove_file(&p);
                }
                _ => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }

    /// Collect workers that exited.
    pub(crate) fn reap(&mut self) {
        let mut gone = Vec::new();
        for (id, w) in self.running.iter_mut() {
            match &mut w.proc {
                Proc::Child(c) => match c.try_wait() {
                    Ok(Some(st)) => gone.push((id.clone(), st.code())),
                    Ok(None) => {}
                    Err(_) => gone.push((id.clone(), None)),
                },
                Proc::Adopted(pid) => {
                    if !pid_alive(*pid) {
                        gone.push((id.clone(), None));
                    }
                }
            }
        }
        let any = !gone.is_empty();
        for (id, code) in gone {
            log::warn!("worker for {id} exited (code {code:?})");
            self.running.remove(&id);
            self.remove_files(&id, code != Some(0));
            self.exited.insert(id, code);
            self.exits += 1;
        }
        if any {
            self.prune_logs();
        }
    }

    pub(crate) fn report(&self) -> Vec<WorkerReport> {
        let mut v: Vec<WorkerReport> = self
            .running
            .iter()
            .map(|(id, w)| {
                let pid = match &w.proc {
                    Proc::Child(c) => c.id(),
                    Proc::Adopted(p) => *p,
                };
                WorkerReport {
                    allocation_id: id.clone(),
                    state: WorkerState::Running,
                    pid: Some(pid),
                    exit_code: None,
                    rss_bytes: rss_bytes(pid),
                    memory_used_bytes: slice_memory_used(&self.status_path(id)),
                }
            })
            .collect();
        v.extend(self.exited.iter().map(|(id, code)| WorkerReport {
            allocation_id: id.clone(),
            state: WorkerState::Exited,
            pid: None,
            exit_code: *code,
            rss_bytes: None,
            memory_used_bytes: None,
        }));
        v
    }

    /// Make what runs match what the controller wants.
    pub(crate) fn reconcile(&mut self, want: &[Assignment]) {
        let mut ok = Vec::with_capacity(want.len());
        for a in want {
            match check_assignment(a) {
                Ok(()) => ok.push(a),
                Err(e) => {
                    if self.refused.insert(a.allocation_id.clone()) {
                        log::error!("refusing an assignment from the controller: {e}");
                    }
                }
            }
        }
        let want = ok;
        self.refused
            .retain(|id| want.iter().all(|a| &a.allocation_id != id));
        let wanted: HashMap<&str, &Assignment> = want
            .iter()
            .map(|a| (a.allocation_id.as_str(), *a))
            .collect();
        // Exited workers are forgotten once the controller no longer assigns them.
        self.exited.retain(|id, _| wanted.contains_key(id.as_str()));
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            log::info!("stopping worker for {id}: no longer allocated to this host");
            self.stop(&id);
        }
        for a in want {
            if let Some(w) = self.running.get_mut(&a.allocation_id) {
                w.assignment = Some(a.clone());
                continue;
            }
            if self.exited.contains_key(&a.allocation_id) {
                continue; // reported; the controller releases it
            }
            self.start(a);
        }
    }

    fn command(&self, a: &Assignment) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(&self.prefix_args);
        if let Some(t) = &self.remote_token {
            c.env("VGPU_REMOTE_TOKEN", t);
        }
        c.env(ALLOCATION_ENV, &a.allocation_id);
        c.arg("--socket").arg(self.socket_path(&a.allocation_id));
        if let Some(m) = self.socket_mode.filter(|_| self.supports("--socket-mode")) {
            c.arg("--socket-mode").arg(format!("{m:04o}"));
        }
        if let Some(g) = self.socket_gid.filter(|_| self.supports("--socket-group")) {
            c.arg("--socket-group").arg(g.to_string());
        }
        if let Some(ep) = &a.remote_endpoint {
            c.arg("--remote").arg(ep);
        }
        c.arg("--gpu").arg(&a.gpu_arg);
        c.arg("--mem-limit").arg(a.memory_bytes.to_string());
        if self.supports("--status-file") {
            c.arg("--status-file")
                .arg(self.status_path(&a.allocation_id));
        }
        if self.supports("--sm-count") {
            c.arg("--sm-count").arg(a.sm_count.to_string());
        } else {
            log::warn!(
                "worker {} has no --sm-count: the {} SM limit of {} is not enforced",
                self.bin.display(),
                a.sm_count,
                a.allocation_id
            );
        }
        if a.gpu_arg == "sim"
            && self
                .help
                .as_ref()
                .is_some_and(|h| h.contains("--sim-memory"))
        {
            // The simulated device is as large as the slice.
            c.arg("--sim-memory").arg(a.memory_bytes.to_string());
        }
        c
    }

    /// Counts a worker that could not start, and reports it as exited with `code` so the
    /// controller returns the slice to the pool.
    fn start_failed(&mut self, allocation_id: &str, code: i32) {
        self.start_failures += 1;
        self.exited.insert(allocation_id.to_string(), Some(code));
    }

    fn start(&mut self, a: &Assignment) {
        if a.remote_endpoint.is_some() && !self.supports("--remote") {
            log::error!(
                "worker {} has no --remote: cannot serve remote slice {}; reporting it exited",
                self.bin.display(),
                a.allocation_id
            );
            self.start_failed(&a.allocation_id, 2);
            return;
        }
        let mut cmd = self.command(a);
        cmd.stdin(Stdio::null());
        log_to(&mut cmd, &self.log_file(&a.allocation_id));
        die_with_agent(&mut cmd);
        // A socket left by an earlier worker for this allocation would make the new one fail.
        let _ = std::fs::remove_file(self.socket_path(&a.allocation_id));
        let _ = std::fs::remove_file(self.status_path(&a.allocation_id));
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                log::info!(
                    "started worker for {} (vm {}, gpu {}, {} bytes, {} SMs{}) pid {pid}",
                    a.allocation_id,
                    a.vm,
                    a.gpu_arg,
                    a.memory_bytes,
                    a.sm_count,
                    a.remote_endpoint
                        .as_deref()
                        .map(|e| format!(", remote {e}"))
                        .unwrap_or_default()
                );
                let _ = vgpu_pool_wire::write_private(
                    &self.pid_file(&a.allocation_id),
                    &pid.to_string(),
                );
                self.running.insert(
                    a.allocation_id.clone(),
                    Worker {
                        proc: Proc::Child(child),
                        assignment: Some(a.clone()),
                    },
                );
                self.starts += 1;
            }
            Err(e) => {
                log::error!(
                    "cannot start worker {} for {}: {e}",
                    self.bin.display(),
                    a.allocation_id
                );
                self.start_failed(&a.allocation_id, 127);
            }
        }
    }

    fn stop(&mut self, id: &str) {
        let Some(w) = self.running.remove(id) else {
            return;
        };
        match w.proc {
            Proc::Child(mut c) => {
                signal(c.id(), libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(2);
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
            Proc::Adopted(pid) => {
                signal(pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(2);
                while pid_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if pid_alive(pid) {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
        self.remove_files(id, false);
    }

    pub(crate) fn stop_all(&mut self) {
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            self.stop(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(id: &str) -> Assignment {
        Assignment {
            allocation_id: id.into(),
            vm: "vm".into(),
            project: "p".into(),
            gpu_uuid: "GPU-1".into(),
            gpu_arg: "0".into(),
            memory_bytes: 1 << 30,
            sm_count: 8,
            remote_endpoint: None,
        }
    }

    #[test]
    fn assignments_from_the_controller_are_checked_before_they_name_files() {
        assert!(check_assignment(&assignment("a-0123abcd-000001")).is_ok());
        for bad in [
            "",
            "../../etc/x",
            "/abs",
            "a/b",
            "-flag",
            ".hidden",
            "a b",
            "a\0b",
        ] {
            assert!(
                check_assignment(&assignment(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
        let mut a = assignment("a1");
        a.gpu_arg = "--listen=0.0.0.0:1".into();
        assert!(check_assignment(&a).is_err());
        a.gpu_arg = "sim".into();
        assert!(check_assignment(&a).is_ok());
        for ep in ["-oProxy:1", "host", "host:0", "ho st:1", "host:99999"] {
            a.remote_endpoint = Some(ep.into());
            assert!(check_assignment(&a).is_err(), "{ep:?} accepted");
        }
        a.remote_endpoint = Some("10.0.0.5:7470".into());
        assert!(check_assignment(&a).is_ok());
    }

    #[test]
    fn a_worker_gets_its_socket_and_status_file_under_the_agents_own_directory() {
        let w = Workers::new(
            PathBuf::from("/state/workers"),
            PathBuf::from("/state/sockets"),
            PathBuf::from("/nonexistent/vhost-gpu"),
            Vec::new(),
        );
        let c = w.command(&assignment("a-1"));
        let args = args_of(&c);
        let after = |flag: &str| value_after(&args, flag);
        assert_eq!(after("--socket"), "/state/sockets/a-1.sock");
        assert_eq!(after("--status-file"), "/state/sockets/a-1.sock.status");
        let env: Vec<_> = c.get_envs().collect();
        assert!(
            env.iter()
                .any(|(k, v)| *k == ALLOCATION_ENV && v.is_some_and(|v| v == "a-1")),
            "{env:?}"
        );
        assert!(!args.iter().any(|a| a.starts_with("--socket-")), "{args:?}");
    }

    fn args_of(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The argument that follows `flag`.
    fn value_after(args: &[String], flag: &str) -> String {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1].clone()
    }

    // Mutation: not passing the agent's socket mode or group to the worker fails this.
    #[test]
    fn a_worker_gets_the_agents_socket_mode_and_group() {
        let mut w = Workers::new(
            PathBuf::from("/state/workers"),
            PathBuf::from("/state/sockets"),
            PathBuf::from("/nonexistent/vhost-gpu"),
            Vec::new(),
        );
        w.set_socket_access(Some(0o660), Some(994));
        let args = args_of(&w.command(&assignment("a-1")));
        let after = |flag: &str| value_after(&args, flag);
        assert_eq!(after("--socket-mode"), "0660");
        assert_eq!(after("--socket-group"), "994");
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn only_the_newest_logs_of_stopped_workers_are_kept() {
        let dir = std::env::temp_dir().join(format!("vgpu-agent-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = std::time::SystemTime::now() - Duration::from_secs(1000);
        let n = KEEP_EXITED_LOGS + 5;
        for i in 0..n {
            let f = std::fs::File::create(dir.join(format!("a-{i:03}.log"))).unwrap();
            f.set_modified(t0 + Duration::from_secs(i as u64)).unwrap();
        }
        std::fs::write(dir.join("slice-server.log"), "").unwrap();
        let w = Workers::new(
            dir.clone(),
            dir.join("sockets"),
            PathBuf::from("/nonexistent"),
            Vec::new(),
        );
        w.prune_logs();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<String> = (n - KEEP_EXITED_LOGS..n)
            .map(|i| format!("a-{i:03}.log"))
            .collect();
        want.push("slice-server.log".into());
        assert_eq!(left, want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

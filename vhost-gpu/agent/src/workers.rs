//! Per-VM worker processes: start, watch, stop, adopt after an agent restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::wire::{Assignment, WorkerReport, WorkerState};

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

/// Sends a child's stdout and stderr to `path` (nowhere if it cannot be created).
fn log_to(cmd: &mut Command, path: &std::path::Path) {
    match std::fs::File::create(path).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((o, e)) => cmd.stdout(o).stderr(e),
        Err(_) => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
    };
}

/// Where a slice's worker reports its state (next to its socket).
fn status_file(a: &Assignment) -> String {
    format!("{}.status", a.socket_path)
}

/// Device memory the slice holds, as its worker last reported it (`None`: not reported, e.g. a
/// remote slice or a worker without `--status-file`).
pub(crate) fn slice_memory_used(a: &Assignment) -> Option<u64> {
    let text = std::fs::read_to_string(status_file(a)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("memory_used_bytes")?.as_u64()
}

/// This host's remote-slice server; stopped on drop.
pub(crate) struct SliceServer(std::process::Child);

impl Drop for SliceServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct Workers {
    dir: PathBuf,
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
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
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

    pub(crate) fn new(dir: PathBuf, bin: PathBuf, prefix_args: Vec<String>) -> Self {
        let help = probe_help(&bin, &prefix_args);
        Workers {
            dir,
            bin,
            prefix_args,
            help,
            running: HashMap::new(),
            exited: HashMap::new(),
            starts: 0,
            exits: 0,
            start_failures: 0,
            remote_token: None,
        }
    }

    fn pid_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pid"))
    }

    /// Adopt workers recorded in pid files that still run.
    pub(crate) fn adopt(&mut self) {
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
                Some(pid) if pid_alive(pid) => {
                    log::info!("adopting running worker for {id} (pid {pid})");
                    self.running.insert(
                        id,
                        Worker {
                            proc: Proc::Adopted(pid),
                            assignment: None,
                        },
                    );
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
        for (id, code) in gone {
            log::warn!("worker for {id} exited (code {code:?})");
            self.running.remove(&id);
            let _ = std::fs::remove_file(self.pid_file(&id));
            self.exited.insert(id, code);
            self.exits += 1;
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
                }
            })
            .collect();
        v.extend(self.exited.iter().map(|(id, code)| WorkerReport {
            allocation_id: id.clone(),
            state: WorkerState::Exited,
            pid: None,
            exit_code: *code,
            rss_bytes: None,
        }));
        v
    }

    /// Make what runs match what the controller wants.
    pub(crate) fn reconcile(&mut self, want: &[Assignment]) {
        let wanted: HashMap<&str, &Assignment> =
            want.iter().map(|a| (a.allocation_id.as_str(), a)).collect();
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
        c.arg("--socket").arg(&a.socket_path);
        if let Some(ep) = &a.remote_endpoint {
            c.arg("--remote").arg(ep);
        }
        c.arg("--gpu").arg(&a.gpu_arg);
        c.arg("--mem-limit").arg(a.memory_bytes.to_string());
        if self.supports("--status-file") {
            c.arg("--status-file").arg(status_file(a));
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

    fn start(&mut self, a: &Assignment) {
        if a.remote_endpoint.is_some() && !self.supports("--remote") {
            log::error!(
                "worker {} has no --remote: cannot serve remote slice {}; reporting it exited",
                self.bin.display(),
                a.allocation_id
            );
            self.start_failures += 1;
            self.exited.insert(a.allocation_id.clone(), Some(2));
            return;
        }
        let log_path = self.dir.join(format!("{}.log", a.allocation_id));
        let mut cmd = self.command(a);
        cmd.stdin(Stdio::null());
        log_to(&mut cmd, &log_path);
        if let Some(parent) = std::path::Path::new(&a.socket_path).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
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
                let _ = std::fs::write(self.pid_file(&a.allocation_id), pid.to_string());
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
                self.start_failures += 1;
                // Report it as exited so the controller returns the slice to the pool.
                self.exited.insert(a.allocation_id.clone(), Some(127));
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
        let _ = std::fs::remove_file(self.pid_file(id));
    }

    pub(crate) fn stop_all(&mut self) {
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            self.stop(&id);
        }
    }
}

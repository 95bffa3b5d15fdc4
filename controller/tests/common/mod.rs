//! Harness: a real controller process and real agent processes (the `vgpu-agent` binary,
//! built by the harness) with simulated GPUs, on loopback with
//! random ports, each test in its own temporary state directory.
//!
//! Workers: the real `vhost-gpu` daemon is not used here. The agents run a stand-in worker,
//! `/bin/sh -c 'exec sleep 60' <standard worker args>`, so the tests see real processes being
//! started, killed and reaped without needing the daemon or a GPU.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ADMIN: &str = "test-admin-token";
pub const AGENT: &str = "test-agent-token";
pub const BIN: &str = env!("CARGO_BIN_EXE_vgpu-controller");

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "vgpu-ctl-{name}-{}-{}",
            std::process::id(),
            rand_u32()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ (t.as_secs() as u32)
}

pub struct Controller {
    pub child: Option<Child>,
    pub url: String,
    pub addr: String,
    pub state: PathBuf,
    pub lease_ms: u64,
    pub hb_ms: u64,
}

impl Controller {
    pub fn start(dir: &Path, lease_ms: u64, hb_ms: u64) -> Self {
        Self::start_on(dir, "127.0.0.1:0", lease_ms, hb_ms)
    }

    pub fn start_on(dir: &Path, listen: &str, lease_ms: u64, hb_ms: u64) -> Self {
        Self::start_with(dir, listen, lease_ms, hb_ms, &[])
    }

    /// Like `start_on`, with extra `serve` arguments.
    pub fn start_with(dir: &Path, listen: &str, lease_ms: u64, hb_ms: u64, extra: &[&str]) -> Self {
        let state = dir.join("controller");
        let addr_file = dir.join("controller.addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = serve_command(listen, &state, &addr_file)
            .args([
                "--lease-ttl-ms",
                &lease_ms.to_string(),
                "--heartbeat-ms",
                &hb_ms.to_string(),
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("controller.log")).unwrap(),
            ))
            .spawn()
            .expect("spawn controller");
        let addr = wait_file(&addr_file, Duration::from_secs(20));
        let c = Controller {
            child: Some(child),
            url: format!("http://{addr}"),
            addr,
            state,
            lease_ms,
            hb_ms,
        };
        wait_until(Duration::from_secs(10), || c.get("/healthz", None).0 == 200);
        c
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill sends SIGKILL.
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        http(&self.url, "GET", path, token, None)
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(
            &self.url,
            method,
            path,
            Some(ADMIN),
            body.map(|b| b.to_string()),
        )
    }

    /// `POST /v1/allocations` with `body` (JSON text) as `token`'s holder.
    pub fn allocate_as(&self, token: &str, body: String) -> (u16, Value) {
        http(
            &self.url,
            "POST",
            "/v1/allocations",
            Some(token),
            Some(body),
        )
    }

    /// Creates project `name` with `quota` (JSON) and returns its token.
    pub fn create_project(&self, name: &str, quota: Value) -> String {
        let (st, p) = self.admin(
            "POST",
            "/v1/projects",
            Some(json!({"name": name, "quota": quota})),
        );
        assert_eq!(st, 201, "{p}");
        p["token"]
            .as_str()
            .expect("the project's token")
            .to_string()
    }

    pub fn metrics(&self) -> String {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        agent
            .get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// Allocate as admin; returns (status, body).
    pub fn allocate(&self, vm: &str, host: &str, slice: Value, policy: Value) -> (u16, Value) {
        self.admin(
            "POST",
            "/v1/allocations",
            Some(json!({"vm": vm, "host": host, "slice": slice, "policy": policy})),
        )
    }

    pub fn wait_hosts(&self, n: usize) {
        wait_until(Duration::from_secs(20), || {
            let (s, v) = self.admin("GET", "/v1/hosts", None);
            s == 200
                && v.as_array()
                    .unwrap()
                    .iter()
                    .filter(|h| h["alive"] == json!(true))
                    .count()
                    == n
        });
    }

    pub fn wait_state(&self, id: &str, state: &str) {
        wait_until(Duration::from_secs(20), || {
            self.admin("GET", &format!("/v1/allocations/{id}"), None).1["state"] == json!(state)
        });
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `vgpu-controller serve` on `listen` with the test tokens, its state in `state`, writing its
/// address to `addr_file`.
pub fn serve_command(listen: &str, state: &Path, addr_file: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", listen])
        .args(["--admin-token", ADMIN, "--agent-token", AGENT])
        .arg("--state-dir")
        .arg(state)
        .arg("--addr-file")
        .arg(addr_file);
    cmd
}

/// Runs `cmd` to its end and fails the test unless it exits 0 (showing its status and
/// stderr); returns its output.
pub fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Agent {
    pub child: Option<Child>,
    pub name: String,
    pub state: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

/// The arguments every test agent gets: enrolment with the test token, `gpus` simulated GPUs,
/// its state in `DIR/agent-NAME`, metrics on a free port.
fn agent_args(dir: &Path, url: &str, name: &str, gpus: u32, serve_port: u16) -> Vec<String> {
    [
        "--controller",
        url,
        "--token",
        AGENT,
        "--name",
        name,
        "--sim-gpus",
        &gpus.to_string(),
        "--serve-port",
        &serve_port.to_string(),
        "--state-dir",
        &dir.join(format!("agent-{name}")).display().to_string(),
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec()
}

impl Agent {
    pub fn start(
        dir: &Path,
        url: &str,
        name: &str,
        gpus: u32,
        labels: &[&str],
        serve_port: u16,
    ) -> Self {
        Self::start_with_worker(dir, url, name, gpus, labels, serve_port, "exec sleep 60")
    }

    /// Like `start`, with the stand-in worker running `sh -c <script>`.
    pub fn start_with_worker(
        dir: &Path,
        url: &str,
        name: &str,
        gpus: u32,
        labels: &[&str],
        serve_port: u16,
        script: &str,
    ) -> Self {
        let mut args = agent_args(dir, url, name, gpus, serve_port);
        args.extend([
            "--metrics-addr-file".into(),
            dir.join(format!("agent-{name}.metrics"))
                .display()
                .to_string(),
            "--worker-bin".into(),
            "/bin/sh".into(),
            "--worker-arg=-c".into(),
            format!("--worker-arg={script}"),
        ]);
        for l in labels {
            args.push("--label".into());
            args.push((*l).into());
        }
        Self::launch(dir, name, args)
    }

    /// An agent whose workers are the real `vhost-gpu` daemon on a simulated GPU (no slice
    /// server: `--serve-port 0`).
    pub fn start_daemon(dir: &Path, url: &str, name: &str, gpus: u32) -> Self {
        let mut args = agent_args(dir, url, name, gpus, 0);
        args.extend(["--worker-bin".into(), daemon_bin().display().to_string()]);
        Self::launch(dir, name, args)
    }

    /// Starts agent `name` with `args`, its log in `DIR/agent-NAME.log`.
    fn launch(dir: &Path, name: &str, args: Vec<String>) -> Self {
        let mut a = Agent {
            child: None,
            name: name.into(),
            state: dir.join(format!("agent-{name}")),
            args,
            log: dir.join(format!("agent-{name}.log")),
        };
        a.spawn();
        a
    }

    /// This host's agent credential (written at enrolment).
    pub fn credential(&self) -> String {
        wait_file(&self.state.join("host.token"), Duration::from_secs(20))
    }

    pub fn spawn(&mut self) {
        let child = Command::new(agent_bin())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            ))
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Arguments for the next `spawn`.
    pub fn add_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|s| s.to_string()));
    }

    /// Pid of the worker the agent runs for an allocation (from its pid file).
    pub fn worker_pid(&self, alloc: &str) -> Option<u32> {
        std::fs::read_to_string(self.state.join("workers").join(format!("{alloc}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Kill leftover stand-in workers (after the agent was SIGKILLed they are orphans).
    pub fn kill_workers(&self) {
        if let Ok(rd) = std::fs::read_dir(self.state.join("workers")) {
            for e in rd.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        self.kill_workers();
    }
}

/// The `vhost-gpu` daemon next to the controller binary (built first if it is not there).
pub fn daemon_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    workspace_bin(&BUILT, "vhost-gpu")
}

/// The host agent, `vgpu-agent` (its own package: the controller does not link it).
pub fn agent_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    workspace_bin(&BUILT, "vgpu-agent")
}

/// Binary `name` of the workspace package of the same name, next to the controller's, built
/// once per test process (cargo builds only this package's binaries for its tests).
fn workspace_bin(built: &std::sync::Once, name: &str) -> PathBuf {
    let bin = Path::new(BIN).parent().unwrap().join(name);
    built.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", name])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if Path::new(BIN).parent().unwrap().ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building {name} failed");
    });
    bin
}

/// Permission bits of a file.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

pub fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent();
    let url = format!("{base}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let res = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(&url)
            } else {
                agent.delete(&url)
            };
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "POST" => agent.post(&url),
                "PATCH" => agent.patch(&url),
                _ => agent.put(&url),
            };
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.header("content-type", "application/json")
                .send(body.unwrap_or_default().as_bytes())
        }
    };
    let mut resp = match res {
        Ok(r) => r,
        Err(_) => return (0, Value::Null),
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn wait_file(p: &Path, within: Duration) -> String {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(p)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        assert!(
            t.elapsed() < within,
            "timed out waiting for {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "condition not met within {within:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// An error answer must be JSON with a code and a message.
pub fn assert_error(resp: &(u16, Value), status: u16, code: &str) {
    assert_eq!(resp.0, status, "unexpected status, body: {}", resp.1);
    assert_eq!(resp.1["error"]["code"], json!(code), "body: {}", resp.1);
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {}",
        resp.1
    );
}

/// Like `assert_error`, and the error's message contains `text`.
pub fn assert_error_says(resp: &(u16, Value), status: u16, code: &str, text: &str) {
    assert_error(resp, status, code);
    let message = resp.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(text), "body: {}", resp.1);
}

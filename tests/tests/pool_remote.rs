//! The pool's network fallback end to end, on simulated GPUs: a controller, a VM host with no
//! GPU (h1) and a GPU host (h2). A slice for a VM on h1 is placed on h2; h1's agent starts the
//! VM's `vhost-gpu --remote` pointing at h2's slice server (started by h2's agent), and a CUDA
//! program on h1's socket runs on h2.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use vgpu_tests::{bin_dir, built, compile_c, e2e_command, output_ok, repo, scratch};

/// Children killed when the test ends, however it ends, and the workers the agents started
/// (they die with their agent; stopping them here too means a failed run leaves none).
struct Procs(Vec<Child>, Vec<std::path::PathBuf>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for dir in &self.1 {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let pid = std::fs::read_to_string(entry.path())
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok());
                if entry.path().extension().is_some_and(|e| e == "pid")
                    && let Some(pid) = pid
                {
                    // SAFETY: kill(2) with a pid the agent recorded for its worker.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn controller_bins() -> std::path::PathBuf {
    built();
    let dir = bin_dir();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "vgpu-controller", "-p", "vgpu-agent"])
        .current_dir(repo());
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("cargo build").success(),
        "building the controller and the agent failed"
    );
    dir
}

fn spawn(dir: &Path, log: &str, bin: &Path, args: &[&str]) -> Child {
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).expect("log"))
        .spawn()
        .expect("spawn")
}

fn vgpuctl(bins: &Path, url: &str, args: &[&str]) -> serde_json::Value {
    let out = output_ok(
        Command::new(bins.join("vgpuctl"))
            .args(["--url", url, "--token", "admin", "--json"])
            .args(args),
    );
    serde_json::from_slice(&out.stdout).expect("vgpuctl JSON")
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A controller, h1 (a VM host with no GPU) and h2 (one GPU and a slice server), registered.
struct Pool {
    dir: std::path::PathBuf,
    bins: std::path::PathBuf,
    url: String,
    serve_port: u16,
    program: std::path::PathBuf,
    procs: Procs,
}

fn start_pool(name: &str) -> Pool {
    let dir = scratch(name);
    let bins = controller_bins();
    let program = compile_c("driver_api_e2e.c", &dir);
    let ctl_port = free_port();
    let serve_port = free_port();
    let url = format!("http://127.0.0.1:{ctl_port}");
    let ctl = bins.join("vgpu-controller");
    let agent_bin = bins.join("vgpu-agent");
    let state = |n: &str| dir.join(n).display().to_string();
    let mut procs = Procs(
        Vec::new(),
        vec![dir.join("h1/workers"), dir.join("h2/workers")],
    );
    procs.0.push(spawn(
        &dir,
        "controller.log",
        &ctl,
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{ctl_port}"),
            "--state-dir",
            &state("ctl"),
            "--admin-token",
            "admin",
            "--agent-token",
            "agent",
            "--heartbeat-ms",
            "200",
        ],
    ));
    let agent = |name: &str, gpus: &str, port: u16| {
        vec![
            "--controller".to_string(),
            url.clone(),
            "--token".into(),
            "agent".into(),
            "--name".into(),
            name.into(),
            "--sim-gpus".into(),
            gpus.into(),
            "--serve-port".into(),
            port.to_string(),
            "--state-dir".into(),
            state(name),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ]
    };
    for (name, gpus, port) in [("h1", "0", 0), ("h2", "1", serve_port)] {
        let a = agent(name, gpus, port);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        procs
            .0
            .push(spawn(&dir, &format!("{name}.log"), &agent_bin, &a));
    }
    wait_until("both hosts registered", Duration::from_secs(30), || {
        Command::new(bins.join("vgpuctl"))
            .args(["--url", &url, "--token", "admin", "--json", "hosts"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v.as_array().map(Vec::len))
            == Some(2)
    });
    Pool {
        dir,
        bins,
        url,
        serve_port,
        program,
        procs,
    }
}

/// Allocates a slice for a VM on h1, which lands on h2; returns h1's worker socket.
fn allocate_remote(p: &Pool, vm: &str) -> std::path::PathBuf {
    let (bins, url, serve_port) = (&p.bins, &p.url, p.serve_port);
    let a = vgpuctl(
        bins,
        url,
        &[
            "allocate",
            "--vm",
            vm,
            "--host",
            "h1",
            "--profile",
            "1/2",
            "--allow-remote",
        ],
    );
    assert_eq!(a["remote"], serde_json::json!(true), "{a}");
    assert_eq!(a["gpu_host"], serde_json::json!("h2"), "{a}");
    assert_eq!(
        a["endpoint"],
        serde_json::json!(format!("127.0.0.1:{serve_port}")),
        "{a}"
    );
    let socket = std::path::PathBuf::from(a["socket_path"].as_str().expect("socket path"));
    wait_until("h1's worker socket", Duration::from_secs(30), || {
        socket.exists()
    });
    socket
}

/// Runs the driver-API program on `socket`; panics with the slice server's log unless it
/// passes; returns the program's output and the slice server's log.
fn run_program(p: &Pool, socket: &Path) -> (String, String) {
    let dir = &p.dir;
    let out = e2e_command(&p.program, socket)
        .output()
        .expect("run the program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let server_log =
        std::fs::read_to_string(dir.join("h2/workers/slice-server.log")).unwrap_or_default();
    assert!(
        out.status.success() && stdout.contains("E2E PASS"),
        "{stdout}\n{}\nslice server:\n{server_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout.into_owned(), server_log)
}

#[test]
fn a_vm_on_a_host_without_gpus_runs_on_a_slice_of_another_host() {
    let pool = start_pool("pool-remote");
    let socket = allocate_remote(&pool, "vm1");
    let (stdout, server_log) = run_program(&pool, &socket);
    // Half of the simulated H200's 132 SMs, placed by the controller and asked of h2 ...
    assert!(server_log.contains("remote slice: gpu -1"), "{server_log}");
    assert!(server_log.contains("SMs 66"), "{server_log}");
    // ... is what the guest sees: cuDeviceGetAttribute(MULTIPROCESSOR_COUNT), answered by h2.
    // (The simulator cannot run kernels, so how many SMs they occupy is a GPU-run question:
    // tests/gpu/slices.sh.)
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("device: ") && l.contains(", 66 SMs, ")),
        "{stdout}\nslice server:\n{server_log}"
    );
}

/// The child of process `parent` started with `--listen` (an agent's slice server).
fn slice_server_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let mut f = rest.split_whitespace();
        let state = f.next()?;
        let ppid: u32 = f.next()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let listens = cmd.split(|b| *b == 0).any(|a| a == b"--listen");
        (ppid == parent && state != "Z" && listens).then_some(pid)
    })
}

/// A slice server killed with `kill -9` (a link drop, as the soak injects it) is started again
/// by its agent, and a remote slice works again for the VM's next program. Found by the soak:
/// before, the GPU host served no remote slice until its agent was restarted.
#[test]
fn a_killed_slice_server_is_started_again_and_remote_slices_work_again() {
    let pool = start_pool("pool-remote-server-restart");
    let socket = allocate_remote(&pool, "vm1");
    run_program(&pool, &socket);
    let h2 = pool.procs.0[2].id();
    let first = slice_server_of(h2).expect("h2's slice server");
    // SAFETY: kill(2) on the slice server h2's agent started for this test.
    unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
    let mut second = None;
    wait_until("a new slice server", Duration::from_secs(15), || {
        second = slice_server_of(h2).filter(|p| *p != first);
        second.is_some()
    });
    wait_until("the slice server's port", Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", pool.serve_port)).is_ok()
    });
    run_program(&pool, &socket);
}

//! `vgpu-controller serve`: the pool controller.
//! `vgpu-controller up`: a one-command single-host pool (controller + one `vgpu-agent`).
//!
//! The controller has no GPU code: the agent (`vgpu-agent`, its own binary) discovers GPUs, so
//! `up` and `agent` run that binary, found next to this one or else on `PATH`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use vgpu_controller::auth::new_token;
use vgpu_controller::server::{ControllerArgs, ServerError, start};
use vgpu_controller::transfer::TransferError;
use vgpu_pool_wire::FileError;
use vgpu_protocol::error_chain;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("Cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("Serving the API failed")]
    Serve(#[from] vgpu_controller::api::ServeError),
    #[error("A controller task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("Cannot parse {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Cannot write the export")]
    Serialize(#[source] serde_json::Error),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("`up` serves plain HTTP on this host; use `serve` with --tls-cert/--tls-key for TLS")]
    UpWithTls,
    #[error("Cannot run the host agent {}", bin.display())]
    Agent {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Parser, Debug)]
#[command(name = "vgpu-controller", version, about = "vGPU pool controller")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the controller.
    Serve(ControllerArgs),
    /// Single-host pool: controller with its SQLite store plus one agent for this host, until Ctrl-C.
    Up(UpArgs),
    /// Run the host agent: the `vgpu-agent` binary with these arguments (`agent --help` lists
    /// them).
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Write the pool's state (hosts, GPUs, projects with token hashes, active allocations) as
    /// JSON, e.g. to move from SQLite to etcd or back (docs/ha.md).
    Export(ExportArgs),
    /// Load a document written by `export` into an empty store.
    Import(ImportArgs),
}

#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// `sqlite` (pool.db in --state-dir) or `etcd://host:port[,host:port...][/prefix]`.
    #[arg(long, env = "VGPU_STORE", default_value = "sqlite")]
    store: String,
    /// State directory of the SQLite store.
    #[arg(long, default_value = "./.vgpu-pool")]
    state_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Output file (default: standard output).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A file written by `export`.
    file: PathBuf,
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    #[command(flatten)]
    controller: ControllerArgs,
    /// Use N simulated GPUs even when a CUDA driver is present.
    #[arg(long)]
    sim_gpus: Option<u32>,
    /// Worker program for the agent (default: `vhost-gpu` next to this executable, else PATH).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Extra arguments put before the standard worker arguments (repeatable).
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// Address of the agent's metrics endpoint.
    #[arg(long, default_value = "127.0.0.1:9471")]
    agent_metrics_addr: String,
}

/// The `vgpu-agent` binary: next to this executable, else from `PATH`.
fn agent_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|me| Some(me.parent()?.join("vgpu-agent")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vgpu-agent"))
}

/// `vgpu-controller agent ARGS`: becomes `vgpu-agent ARGS`.
fn agent(args: Vec<OsString>) -> CliError {
    let bin = agent_bin();
    let source = Command::new(&bin).args(args).exec();
    CliError::Agent { bin, source }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli: Cli = vgpu_config::parse(&vgpu_config::CONTROLLER);
    if let Err(e) = run(cli) {
        eprintln!("vgpu-controller: error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::Up(a) => up(a).await,
            Cmd::Agent { args } => Err(agent(args)),
            Cmd::Export(a) => tokio::task::spawn_blocking(move || export(a)).await?,
            Cmd::Import(a) => tokio::task::spawn_blocking(move || import(a)).await?,
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn serve(args: ControllerArgs) -> Result<(), CliError> {
    let running = start(&args, shutdown_signal()).await?;
    running.task.await??;
    log::info!("controller stopped");
    Ok(())
}

fn open_store(a: &StoreArgs) -> Result<Box<dyn vgpu_controller::store::Store>, CliError> {
    if a.store == "sqlite" {
        create_dir(&a.state_dir)?;
    }
    Ok(vgpu_controller::server::open_store(
        &a.store,
        &a.state_dir.join("pool.db"),
    )?)
}

fn create_dir(path: &Path) -> Result<(), FileError> {
    std::fs::create_dir_all(path).map_err(FileError::on("create", path))
}

fn write_private(path: &Path, text: &str) -> Result<(), FileError> {
    vgpu_pool_wire::write_private(path, text).map_err(FileError::on("write", path))
}

fn export(a: ExportArgs) -> Result<(), CliError> {
    let mut store = open_store(&a.store)?;
    let dump = vgpu_controller::transfer::export(store.as_mut())?;
    let text = serde_json::to_string_pretty(&dump).map_err(CliError::Serialize)? + "\n";
    match &a.out {
        Some(p) => std::fs::write(p, text).map_err(FileError::on("write", p))?,
        None => print!("{text}"),
    }
    eprintln!("exported {}", counts(&dump));
    Ok(())
}

/// What a document holds, for the operator.
fn counts(d: &vgpu_controller::transfer::Dump) -> String {
    format!(
        "{} hosts, {} GPUs, {} projects, {} allocations",
        d.hosts.len(),
        d.gpus.len(),
        d.projects.len(),
        d.allocations.len()
    )
}

fn import(a: ImportArgs) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&a.file).map_err(FileError::on("read", &a.file))?;
    let dump: vgpu_controller::transfer::Dump =
        serde_json::from_str(&text).map_err(|source| CliError::Parse {
            path: a.file.clone(),
            source,
        })?;
    let mut store = open_store(&a.store)?;
    vgpu_controller::transfer::import(store.as_mut(), &dump)?;
    eprintln!("imported {}", counts(&dump));
    Ok(())
}

/// Read a token from `path` (making the file 0600 if it was not), or make one and write it
/// there (created 0600).
fn token_file(path: &Path) -> Result<String, CliError> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(FileError::on("make private", path))?;
            return Ok(t);
        }
    }
    let t = new_token();
    write_private(path, &format!("{t}\n"))?;
    Ok(t)
}

/// Starts `vgpu-agent ARGS`; it dies with this process (`PR_SET_PDEATHSIG`, from the thread that
/// lives as long as the process: the one `main` runs on). The enrolment token goes through the
/// environment, not the command line others can read.
fn spawn_agent(args: &[OsString], token: &str) -> Result<Child, CliError> {
    let bin = agent_bin();
    let mut cmd = Command::new(&bin);
    cmd.args(args).env("VGPU_AGENT_TOKEN", token);
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.spawn()
        .map_err(|source| CliError::Agent { bin, source })
}

/// The banner's line about the GPUs: what the agent registered for `host` (it decides: real
/// GPUs through the CUDA driver, else simulated ones).
fn gpu_banner(pool: &vgpu_controller::pool::Pool, host: &str, sim: Option<u32>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let registered = loop {
        match pool.host(host) {
            Ok(h) => break Some(h),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    match (registered, sim) {
        (None, _) => "the agent has not registered yet (see its log)".to_string(),
        (Some(h), Some(_)) => format!(
            "{} SIMULATED GPU(s) (--sim-gpus): CI/testing only, no real GPU work",
            h.gpus
        ),
        (Some(h), None) if h.host.gpu_source == "cuda" => format!(
            "{} REAL GPU(s) through the CUDA driver found on this host",
            h.gpus
        ),
        (Some(h), None) => format!(
            "{} SIMULATED GPU(s): no CUDA driver (libcuda.so) found on this host. Kernels are validated, not executed.",
            h.gpus
        ),
    }
}

async fn up(mut a: UpArgs) -> Result<(), CliError> {
    if a.controller.tls_cert.is_some() {
        return Err(CliError::UpWithTls);
    }
    let dir = a.controller.state_dir();
    create_dir(&dir)?;
    let dir = std::fs::canonicalize(&dir).map_err(FileError::on("resolve", &dir))?;
    a.controller.state_dir = Some(dir.clone());
    let admin_file = dir.join("admin.token");
    if a.controller.admin_tokens.is_empty() {
        a.controller.admin_tokens.push(token_file(&admin_file)?);
    } else {
        write_private(&admin_file, &format!("{}\n", a.controller.admin_tokens[0]))?;
    }
    let agent_token = token_file(&dir.join("agent.token"))?;
    a.controller.agent_tokens.push(agent_token.clone());

    let running = start(&a.controller, shutdown_signal()).await?;
    let url = format!("http://{}", running.addr);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let mut args: Vec<OsString> = vec![
        "--controller".into(),
        url.clone().into(),
        "--name".into(),
        host.clone().into(),
        "--advertise-addr".into(),
        "127.0.0.1".into(),
        "--serve-port".into(),
        "7470".into(),
        "--state-dir".into(),
        dir.join("agent").into(),
        "--metrics-addr".into(),
        a.agent_metrics_addr.clone().into(),
    ];
    // The one-host pool of a checkout: an installed host's /etc/vgpu/agent.toml (its paths,
    // its socket group) is not this agent's, unless VGPU_AGENT_CONFIG names a file.
    if std::env::var_os(vgpu_config::AGENT.env).is_none() {
        args.extend(["--config".into(), "/dev/null".into()]);
    }
    match a.sim_gpus {
        Some(n) => args.extend(["--sim-gpus".into(), n.to_string().into()]),
        None => args.extend(["--sim-gpus-without-driver".into(), "1".into()]),
    }
    if let Some(w) = &a.worker_bin {
        args.extend(["--worker-bin".into(), w.into()]);
    }
    for w in &a.worker_args {
        args.push(format!("--worker-arg={w}").into());
    }
    let mut agent = spawn_agent(&args, &agent_token)?;
    let pool = running.pool.clone();
    let host2 = host.clone();
    let banner = tokio::task::spawn_blocking(move || gpu_banner(&pool, &host2, a.sim_gpus)).await?;

    let bar = "=".repeat(78);
    println!("{bar}");
    println!("vGPU pool is up (single host: {host})");
    println!("  GPUs:        {banner}");
    println!("  controller:  {url}   (API document: {url}/openapi.json, metrics: {url}/metrics)");
    println!(
        "  agent:       vgpu-agent (pid {}), metrics on http://{}/metrics",
        agent.id(),
        a.agent_metrics_addr
    );
    println!("  state:       {} (SQLite pool.db, tokens)", dir.display());
    println!();
    println!("Allocate a slice (half a GPU here; or --sm 33 --memory 16GiB):");
    println!(
        "  export VGPU_URL={url} VGPU_TOKEN=$(cat {})",
        admin_file.display()
    );
    println!("  vgpuctl allocate --vm myvm --host {host} --profile 1/2");
    println!("  vgpuctl allocations        # the SOCKET column is the worker's vhost-user socket");
    println!();
    println!("Run a program on it (socket path from the allocation):");
    println!(
        "  VGPU_DEVICE=vhost-user:<socket_path> LD_LIBRARY_PATH=<dir with our libcuda.so.1> ./program"
    );
    println!();
    println!("Release it:  vgpuctl release <allocation id>        Stop the pool: Ctrl-C");
    println!("{bar}");

    let res = running.task.await;
    // The agent's workers die with it (PR_SET_PDEATHSIG).
    if let Ok(None) = agent.try_wait() {
        let _ = agent.kill();
    }
    let _ = agent.wait();
    res??;
    log::info!("pool stopped");
    Ok(())
}

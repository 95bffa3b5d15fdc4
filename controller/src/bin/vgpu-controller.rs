//! `vgpu-controller serve`: the pool controller.
//! `vgpu-controller up`: a one-command single-host pool (controller + one in-process agent).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use vgpu_controller::auth::new_token;
use vgpu_controller::server::{ControllerArgs, start};

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
    /// Run the host agent (same as the `vgpu-agent` binary).
    Agent(vgpu_agent::AgentArgs),
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

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vgpu-controller: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::Up(a) => up(a).await,
            Cmd::Agent(a) => tokio::task::spawn_blocking(move || vgpu_agent::run(a)).await?,
            Cmd::Export(a) => tokio::task::spawn_blocking(move || export(a)).await?,
            Cmd::Import(a) => tokio::task::spawn_blocking(move || import(a)).await?,
        }
    });
    if let Err(e) = res {
        eprintln!("vgpu-controller: error: {e:#}");
        std::process::exit(1);
    }
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

async fn serve(args: ControllerArgs) -> anyhow::Result<()> {
    let running = start(&args, shutdown_signal()).await?;
    running.task.await??;
    log::info!("controller stopped");
    Ok(())
}

fn open_store(a: &StoreArgs) -> anyhow::Result<Box<dyn vgpu_controller::store::Store>> {
    if a.store == "sqlite" {
        std::fs::create_dir_all(&a.state_dir)
            .with_context(|| format!("creating state dir {}", a.state_dir.display()))?;
    }
    vgpu_controller::server::open_store(&a.store, &a.state_dir.join("pool.db"))
}

fn export(a: ExportArgs) -> anyhow::Result<()> {
    let mut store = open_store(&a.store)?;
    let dump = vgpu_controller::transfer::export(store.as_mut())?;
    let text = serde_json::to_string_pretty(&dump)? + "\n";
    match &a.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    eprintln!(
        "exported {} hosts, {} GPUs, {} projects, {} allocations",
        dump.hosts.len(),
        dump.gpus.len(),
        dump.projects.len(),
        dump.allocations.len()
    );
    Ok(())
}

fn import(a: ImportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let dump: vgpu_controller::transfer::Dump =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", a.file.display()))?;
    let mut store = open_store(&a.store)?;
    vgpu_controller::transfer::import(store.as_mut(), &dump)?;
    eprintln!(
        "imported {} hosts, {} GPUs, {} projects, {} allocations",
        dump.hosts.len(),
        dump.gpus.len(),
        dump.projects.len(),
        dump.allocations.len()
    );
    Ok(())
}

/// Read a token from `path` (making the file 0600 if it was not), or make one and write it
/// there (created 0600).
fn token_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", path.display()))?;
            return Ok(t);
        }
    }
    let t = new_token();
    vgpu_agent::write_private(path, &format!("{t}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(t)
}

async fn up(mut a: UpArgs) -> anyhow::Result<()> {
    if a.controller.tls_cert.is_some() {
        anyhow::bail!(
            "`up` serves plain HTTP on this host; use `serve` with --tls-cert/--tls-key for TLS"
        );
    }
    let dir = a.controller.state_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating state dir {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    a.controller.state_dir = Some(dir.clone());
    let admin_file = dir.join("admin.token");
    if a.controller.admin_tokens.is_empty() {
        a.controller.admin_tokens.push(token_file(&admin_file)?);
    } else {
        vgpu_agent::write_private(&admin_file, &format!("{}\n", a.controller.admin_tokens[0]))
            .with_context(|| format!("writing {}", admin_file.display()))?;
    }
    let agent_token = token_file(&dir.join("agent.token"))?;
    a.controller.agent_tokens.push(agent_token.clone());

    let (sim, banner) = match a.sim_gpus {
        Some(n) => (Some(n), format!("{n} SIMULATED GPU(s) (--sim-gpus): CI/testing only, no real GPU work")),
        None if vgpu_agent::discovery::cuda_driver_present() => {
            (None, "REAL GPUs through the CUDA driver found on this host".to_string())
        }
        None => (
            Some(1),
            "1 SIMULATED GPU: no CUDA driver (libcuda.so) found on this host. Kernels are validated, not executed."
                .to_string(),
        ),
    };
    let running = start(&a.controller, shutdown_signal()).await?;
    let url = format!("http://{}", running.addr);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let agent_args = vgpu_agent::AgentArgs {
        controller: url.clone(),
        token: Some(agent_token),
        host_token_file: None,
        name: Some(host.clone()),
        advertise_addr: "127.0.0.1".into(),
        serve_port: 7470,
        labels: vec![],
        sim_gpus: sim,
        state_dir: dir.join("agent"),
        worker_bin: a.worker_bin.clone(),
        worker_args: a.worker_args.clone(),
        metrics_addr: a.agent_metrics_addr.clone(),
        metrics_addr_file: None,
        ca_cert: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let agent = std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            let r = vgpu_agent::run_until(agent_args, stop2);
            if let Err(e) = &r {
                log::error!("agent failed: {e:#}; the controller keeps running without it");
            }
            r
        })?;

    let bar = "=".repeat(78);
    println!("{bar}");
    println!("vGPU pool is up (single host: {host})");
    println!("  GPUs:        {banner}");
    println!("  controller:  {url}   (API document: {url}/openapi.json, metrics: {url}/metrics)");
    println!(
        "  agent:       in-process, metrics on http://{}/metrics",
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
    stop.store(true, Ordering::Relaxed);
    match agent.join() {
        Ok(Err(e)) => eprintln!("vgpu-controller: agent stopped with an error: {e:#}"),
        Err(_) => eprintln!("vgpu-controller: agent thread panicked"),
        Ok(Ok(())) => {}
    }
    res??;
    log::info!("pool stopped");
    Ok(())
}

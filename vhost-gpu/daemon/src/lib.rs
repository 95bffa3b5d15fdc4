//! `vhost-gpu`: serves one VM's vGPU on a vhost-user socket. The vhost-user adapter
//! ([`backend`]) turns descriptor chains into messages and host memory segments; the executor
//! (crate `vgpu-executor`) runs them on the GPU.

pub mod backend;
pub mod chain;
pub mod config;
pub mod console;
pub mod isolation;

use std::sync::{Arc, Mutex};

use log::{error, info, warn};
use std::os::fd::FromRawFd;
use thiserror::Error;
use vgpu_executor::{
    Executor,
    cuda::{ComputeMode, CudaGpu, CudaInitError},
    gpu::Gpu,
    sim::SimGpu,
};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use vgpu_remote::{RemoteSession, SessionParams};

pub use crate::{
    backend::{Runner, VgpuBackend},
    config::{Config, GpuSelection},
};

#[derive(Debug, Error)]
pub enum Error {
    #[error("Could not open the GPU")]
    Gpu(#[source] CudaInitError),
    #[error("Could not create the vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    #[error("Could not restart with the MPS share set")]
    Exec(#[source] std::io::Error),
    #[error("Could not listen on the vhost-user socket: {0}")]
    Listen(vhost::vhost_user::Error),
    #[error("Could not set who may connect to the vhost-user socket")]
    SocketAccess(#[source] vgpu_config::socket::SocketError),
    #[error("Could not start a thread for a frontend")]
    Thread(#[source] std::io::Error),
    #[error("Could not listen for remote slices")]
    Bind(#[source] std::io::Error),
    #[error("Serving remote slices failed")]
    Serve(#[source] vgpu_remote::ServeError),
    #[error("Worker process failed")]
    Worker(#[source] isolation::WorkerError),
    #[error("Could not find this program to start workers")]
    WorkerCommand(#[source] std::io::Error),
    #[error("Could not confine this process")]
    Seccomp(#[source] vgpu_seccomp::Error),
    #[error("Could not start the worker spawner")]
    Spawner(#[source] vgpu_seccomp::spawner::SpawnError),
    #[error("The remote-slice connection handed to this process is unusable")]
    Connection(#[source] std::io::Error),
}

/// Opens the device the configuration names.
pub fn open_gpu(config: &Config) -> Result<Box<dyn Gpu>, Error> {
    Ok(match config.gpu {
        GpuSelection::Sim => Box::new(SimGpu::new(config.sim_memory)),
        GpuSelection::Cuda(ordinal) => {
            if let ComputeMode::Mps { sm_count } = config.compute {
                ensure_mps_share(ordinal, sm_count)?;
            }
            Box::new(CudaGpu::open_with(ordinal, config.compute).map_err(Error::Gpu)?)
        }
    })
}

/// An MPS client's SM share is read from `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` when the driver
/// initialises, but the percentage depends on the device's SM count, known only after
/// initialising. So: initialise, compute it, and start this program afresh with it set.
fn ensure_mps_share(ordinal: i32, sm_count: u32) -> Result<(), Error> {
    if std::env::var_os("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE").is_some() {
        return Ok(());
    }
    let total = vgpu_executor::cuda::device_sm_count(ordinal).map_err(Error::Gpu)?;
    let pct = vgpu_executor::cuda::mps_thread_percentage(sm_count, total);
    info!(
        "MPS share: {sm_count} of {total} SMs = {pct}%; restarting with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={pct}"
    );
    let exe = std::env::current_exe().map_err(Error::Exec)?;
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", pct.to_string()),
    );
    Err(Error::Exec(err))
}

/// Serves frontends on the configured socket until an error or until `max_connections` have
/// been served (`None`: forever). Frontends are served at once, each on its own thread and in
/// its own client namespace of the one executor: a VM is one frontend, and so is each process
/// that uses the vGPU through virtio-user. Everything a frontend held is freed when it
/// disconnects.
pub fn run(config: &Config, max_connections: Option<usize>) -> Result<(), Error> {
    if let Some(addr) = &config.listen {
        return serve_remote_slices(config, addr, max_connections);
    }
    let executor = match &config.remote {
        Some(addr) => {
            info!(
                "vhost-gpu: serving {} with a remote slice on {addr} (gpu {}, memory limit {})",
                config.socket.display(),
                remote_params(config).gpu,
                config
                    .limits
                    .mem_limit
                    .map_or("none".into(), |l| format!("{l} bytes"))
            );
            None
        }
        None if isolation::uses_workers(config) => None,
        None => Some(Arc::new(Mutex::new(local_executor(config)?))),
    };
    let workers = if isolation::uses_workers(config) {
        info!(
            "vhost-gpu: serving {} with one process per client on {}, {} queues, memory limit {}",
            config.socket.display(),
            config.gpu.describe(),
            config.queues,
            memory_limit(config)
        );
        let command = isolation::WorkerCommand::current().map_err(Error::WorkerCommand)?;
        // A confined front cannot fork: a spawner started now starts its workers.
        let spawner = if config.seccomp == vgpu_seccomp::SeccompMode::Off {
            None
        } else {
            let mut program = std::process::Command::new(&command.exe);
            program.args(&command.args);
            Some(Arc::new(
                vgpu_seccomp::spawner::Spawner::start(program).map_err(Error::Spawner)?,
            ))
        };
        Some((
            command,
            isolation::SliceLedger::new(config.limits.mem_limit),
            spawner,
        ))
    } else {
        None
    };
    if let Some(path) = &config.status_file {
        if let Some(executor) = &executor {
            let executor = executor.clone();
            report_status(path.clone(), move || {
                let ex = executor
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (ex.mem_used(), ex.client_count())
            });
        } else if let Some((_, ledger, _)) = &workers {
            let ledger = ledger.clone();
            report_status(path.clone(), move || (ledger.used(), ledger.clients()));
        }
    }
    let mut listener = Listener::new(&config.socket, true).map_err(Error::Listen)?;
    vgpu_config::socket::apply(&config.socket, config.socket_mode, config.socket_gid)
        .map_err(Error::SocketAccess)?;
    confine(config)?;
    let mut connections: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut namespace = 0u32;
    loop {
        namespace = namespace.wrapping_add(1);
        let runner = match (&executor, &config.remote) {
            (Some(executor), _) => Runner::Local {
                executor: executor.clone(),
                namespace,
            },
            (None, None) if workers.is_some() => {
                let (command, ledger, spawner) = workers.clone().expect("checked above");
                Runner::Isolated(Box::new(isolation::Workers::new(
                    command,
                    namespace,
                    config.max_clients,
                    config.prestart_workers,
                    ledger,
                    spawner,
                )))
            }
            (None, Some(addr)) => Runner::Remote(Box::new(RemoteSession::new(
                addr,
                remote_params(config),
                config.remote_secret.clone(),
            ))),
            (None, None) => unreachable!("a local executor exists unless --remote"),
        };
        let backend = Arc::new(Mutex::new(VgpuBackend::new(runner, config)));
        let mut daemon = VhostUserDaemon::new(
            "vhost-gpu".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(Error::Daemon)?;
        // Blocks until a frontend connects.
        daemon.start(&mut listener).map_err(Error::Daemon)?;
        info!("frontend {namespace} connected");
        let served = std::thread::Builder::new()
            .name(format!("frontend-{namespace}"))
            .spawn(move || {
                let result = daemon.wait();
                drop(daemon);
                let mut served = backend
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                served.close_exit_events();
                let freed = served.disconnected();
                drop(served);
                info!(
                    "frontend disconnected (frontend {namespace}), freed {} allocations ({} bytes) and {} objects",
                    freed.allocations, freed.bytes, freed.objects
                );
                match result {
                    // A guest or process that goes away is the normal end of a connection.
                    Ok(())
                    | Err(vhost_user_backend::Error::HandleRequest(
                        vhost::vhost_user::Error::Disconnected
                        | vhost::vhost_user::Error::PartialMessage,
                    )) => {}
                    Err(source) => {
                        error!("frontend {namespace}: connection ended with an error: {source}")
                    }
                }
            })
            .map_err(Error::Thread)?;
        connections.retain(|c| !c.is_finished());
        connections.push(served);
        if max_connections.is_some_and(|m| namespace as usize >= m) {
            for c in connections {
                let _ = c.join();
            }
            return Ok(());
        }
    }
}

/// Confines this process once its setup is done (`--seccomp`; docs/threat-model.md).
///
/// - A front with workers gets the front filter (an allowlist: no process creation, no
///   files beyond its status file, unix sockets only): it parses what guests send and never
///   opens the GPU. Its workers are started by the spawner and confine themselves with the
///   worker filter once they have opened the GPU.
/// - A daemon that runs calls itself (`--isolation shared`, `--remote`) gets the worker filter
///   (a denylist) where no CUDA driver runs in it (the simulator, or `--remote`); with a local
///   GPU it stays unconfined, because opening the GPU may restart it for an MPS share.
fn confine(config: &Config) -> Result<(), Error> {
    if isolation::uses_workers(config) {
        vgpu_seccomp::confine_front(config.seccomp).map_err(Error::Seccomp)
    } else if config.gpu == GpuSelection::Sim || config.remote.is_some() {
        vgpu_seccomp::confine_worker(config.seccomp).map_err(Error::Seccomp)
    } else {
        info!("seccomp: not confined with a local GPU in one process (docs/threat-model.md)");
        Ok(())
    }
}

/// The slice's memory limit, as the start-up log names it.
fn memory_limit(config: &Config) -> String {
    config
        .limits
        .mem_limit
        .map_or("none (whole device)".into(), |l| format!("{l} bytes"))
}

/// This host's GPU (or the simulator), with the daemon's stdout captured for device `printf`.
pub(crate) fn local_executor(config: &Config) -> Result<Executor, Error> {
    let gpu = open_gpu(config)?;
    let kind = gpu.kind();
    let mut executor = Executor::new(gpu, config.limits);
    // The driver prints kernels' printf output on our stdout: it belongs to the guest. The
    // simulator prints there too (a line for each printing kernel), so CI exercises this path.
    match console::StdoutCapture::install() {
        Ok(capture) => executor.set_console(Box::new(capture)),
        Err(e) => log::warn!("device printf output stays on the daemon's stdout: {e}"),
    }
    info!(
        "vhost-gpu: serving {} with executor {kind}, {} queues, memory limit {}",
        config.socket.display(),
        config.queues,
        memory_limit(config)
    );
    Ok(executor)
}

/// The slice a VM host asks of a GPU host.
fn remote_params(config: &Config) -> SessionParams {
    SessionParams {
        gpu: match config.gpu {
            GpuSelection::Cuda(n) => n,
            GpuSelection::Sim => -1,
        },
        mem_limit: config.limits.mem_limit,
        sm_count: config.limits.sm_count,
    }
}

/// `--listen`: each TCP connection is one remote slice, served by a process of its own (this
/// program again, with `--serve-remote-connection FD`), so two slices never share a GPU
/// address space. This process only accepts and starts them: it never opens a GPU.
fn serve_remote_slices(config: &Config, addr: &str, max: Option<usize>) -> Result<(), Error> {
    if let Some(fd) = config.serve_remote_connection {
        return serve_remote_connection(config, fd);
    }
    let listener = std::net::TcpListener::bind(addr).map_err(Error::Bind)?;
    let local = listener.local_addr().map_err(Error::Bind)?;
    info!(
        "vhost-gpu: serving remote slices on {local} ({}; TLS; one process per slice, at most {} at once)",
        match config.gpu {
            GpuSelection::Sim => "simulated GPU: nothing runs on a GPU".to_string(),
            GpuSelection::Cuda(_) => "this host's GPUs".to_string(),
        },
        config.max_remote_sessions
    );
    if config.remote_secret.is_none() {
        warn!(
            "remote slices: no shared secret configured; any peer that reaches this port can open a slice"
        );
    }
    // The session process gets our own command line (so the same configuration), plus the
    // connection. /proc/self/exe is the program this process runs, even if it was replaced
    // on disk since.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let command = |fd: i32| {
        let mut c = std::process::Command::new("/proc/self/exe");
        let accepted_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        c.args(&args)
            .arg("--serve-remote-connection")
            .arg(fd.to_string())
            .arg("--accepted-at-us")
            .arg(accepted_us.to_string())
            .stdin(std::process::Stdio::null());
        c
    };
    vgpu_remote::serve(listener, &command, config.max_remote_sessions, max).map_err(Error::Serve)
}

/// A session process: serves the remote-slice connection the listener handed over as `fd`,
/// with an executor of its own on this host's GPU (the session's ordinal) or on the simulator
/// when started with `--gpu sim`, and returns when the connection ends.
fn serve_remote_connection(config: &Config, fd: i32) -> Result<(), Error> {
    // SAFETY: `fd` is the connection our parent listener accepted and left open across exec
    // for us alone (`--serve-remote-connection` is set by it only); nothing else here owns it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let tcp = std::net::TcpStream::from(owned);
    let peer = tcp.peer_addr().map_err(Error::Connection)?;
    let opts = &config.remote_session;
    info!(
        "remote session from {peer}: process {} started {} ms after accept",
        std::process::id(),
        opts.accepted_at
            .and_then(|t| t.elapsed().ok())
            .map_or("?".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
    );
    let base = config.clone();
    let open = move |p: &SessionParams| -> Result<Executor, String> {
        let mut c = base.clone();
        if let GpuSelection::Cuda(_) = c.gpu {
            if p.gpu < 0 {
                return Err(
                    "this host serves real GPUs; the session asked for the simulator".into(),
                );
            }
            c.gpu = GpuSelection::Cuda(p.gpu);
            c.compute = match p.sm_count {
                Some(sm_count) => ComputeMode::Green { sm_count },
                None => ComputeMode::Whole,
            };
        }
        c.limits.mem_limit = p.mem_limit;
        c.limits.sm_count = p.sm_count;
        let gpu = open_gpu(&c).map_err(|e| error_chain(&e))?;
        // The GPU is open: this session's process runs guest code from here on.
        vgpu_seccomp::confine_worker(c.seccomp).map_err(|e| error_chain(&e))?;
        Ok(Executor::new(gpu, c.limits))
    };
    let result = vgpu_remote::serve_connection(tcp, &open, opts);
    vgpu_remote::server::log_end(&result);
    Ok(())
}

/// Keeps `path` holding the slice's state as JSON (written to a temporary file and renamed, so
/// a reader never sees half of it), checked twice a second and rewritten when it changes.
fn report_status(path: std::path::PathBuf, state: impl Fn() -> (u64, usize) + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            let tmp = path.with_extension("status.tmp");
            let mut last = None;
            loop {
                let now = state();
                if last != Some(now) {
                    let text = format!(
                        "{{\"memory_used_bytes\": {}, \"clients\": {}}}\n",
                        now.0, now.1
                    );
                    if std::fs::write(&tmp, text)
                        .and_then(|()| std::fs::rename(&tmp, &path))
                        .is_ok()
                    {
                        last = Some(now);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
    if let Err(e) = spawned {
        log::warn!("no status reports ({e})");
    }
}

/// An error and its sources, as one line: "what failed: why: and why" (the one printer the
/// daemon's binaries and crates share).
pub use vgpu_protocol::error_chain;

use clap::Parser;
use vhost_gpu::{Config, GpuSelection, config::Args};

fn main() {
    // A copy of this program started as a front's spawner (vgpu_seccomp::spawner) serves
    // there and never returns.
    vgpu_seccomp::spawner::serve_if_spawner();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let max = args.max_connections;
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-gpu: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = confine(&config) {
        eprintln!("vhost-gpu: {}", vhost_gpu::error_chain(&e));
        std::process::exit(1);
    }
    if let Err(e) = vhost_gpu::run(&config, max) {
        eprintln!("vhost-gpu: {}", vhost_gpu::error_chain(&e));
        std::process::exit(1);
    }
}

/// Confines this process (`--seccomp`; docs/threat-model.md).
///
/// Today one process both serves vhost-user and executes the calls, so it gets the *worker*
/// filter (the denylist), and only where no CUDA driver runs in it: with the simulator, and
/// with `--remote` (the GPU is on another host). With a local CUDA GPU it is left unconfined
/// here, because opening the GPU may restart the program (the MPS share, `execve`).
///
/// When the front and its workers are separate processes, this moves: the front starts a
/// `vgpu_seccomp::spawner::Spawner` and then calls `vgpu_seccomp::confine_front` (it may
/// create no process after that: it asks the spawner for each worker), and each worker calls
/// `vgpu_seccomp::confine_worker` after it opened the GPU. A front that `execve`s workers
/// itself must not get the worker filter from here.
fn confine(config: &Config) -> Result<(), vgpu_seccomp::Error> {
    if config.gpu == GpuSelection::Sim || config.remote.is_some() {
        vgpu_seccomp::confine_worker(config.seccomp)
    } else {
        log::info!("seccomp: not confined here with a local GPU (see docs/threat-model.md)");
        Ok(())
    }
}

use vhost_gpu::{Config, config::Args};

fn main() {
    // A copy of this program started as a front's spawner (vgpu_seccomp::spawner) serves
    // there and never returns.
    vgpu_seccomp::spawner::serve_if_spawner();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Args = vgpu_config::parse(&vgpu_config::VHOST_GPU);
    let max = args.max_connections;
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-gpu: {}", vhost_gpu::error_chain(&e));
            std::process::exit(2);
        }
    };
    if std::env::var_os(vhost_gpu::isolation::WORKER_FD_ENV).is_some() {
        // Started for a front as the worker of one guest client; it confines itself once
        // it has opened the GPU.
        if let Err(e) = vhost_gpu::isolation::worker_main(&config) {
            eprintln!("vhost-gpu worker: {}", vhost_gpu::error_chain(&e));
            std::process::exit(1);
        }
        return;
    }
    // `run` confines the process (--seccomp; docs/threat-model.md).
    if let Err(e) = vhost_gpu::run(&config, max) {
        eprintln!("vhost-gpu: {}", vhost_gpu::error_chain(&e));
        std::process::exit(1);
    }
}

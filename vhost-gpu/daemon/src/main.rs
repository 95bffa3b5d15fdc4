use clap::Parser;
use vhost_gpu::{Config, config::Args};

fn main() {
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
    if std::env::var_os(vhost_gpu::isolation::WORKER_FD_ENV).is_some() {
        // Started by a front as the worker of one guest client.
        if let Err(e) = vhost_gpu::isolation::worker_main(&config) {
            eprintln!("vhost-gpu worker: {}", vhost_gpu::error_chain(&e));
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = vhost_gpu::run(&config, max) {
        eprintln!("vhost-gpu: {}", vhost_gpu::error_chain(&e));
        std::process::exit(1);
    }
}

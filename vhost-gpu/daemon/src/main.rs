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
    if let Err(e) = vhost_gpu::run(&config, max) {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        eprintln!("vhost-gpu: {msg}");
        std::process::exit(1);
    }
}

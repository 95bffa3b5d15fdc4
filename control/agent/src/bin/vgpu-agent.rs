//! The host agent binary.

use clap::Parser;
use vgpu_agent::AgentArgs;

#[derive(Parser, Debug)]
#[command(name = "vgpu-agent", version, about = "vGPU pool host agent")]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli: Cli = vgpu_config::parse(&vgpu_config::AGENT);
    if let Err(e) = vgpu_agent::run(cli.agent) {
        eprintln!("vgpu-agent: error: {}", vgpu_protocol::error_chain(&e));
        std::process::exit(1);
    }
}

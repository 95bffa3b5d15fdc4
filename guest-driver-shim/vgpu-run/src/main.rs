//! `vgpu-run [--device PATH | --socket PATH] [--lib-dir DIR] [--trace] -- COMMAND [ARGS]...`

#![forbid(unsafe_code)]

use std::{ffi::OsString, os::unix::process::CommandExt, path::PathBuf, process::Command};

use clap::Parser;
use vgpu_run::{Error, Options};

/// Runs an unmodified CUDA program on a vGPU: puts our libcuda.so.1 first on its library
/// path, tells it where the vGPU is, and execs it (its exit status and signals are the
/// program's own).
#[derive(Debug, Parser)]
#[command(
    name = "vgpu-run",
    version,
    override_usage = "vgpu-run [--device PATH | --socket PATH] [--lib-dir DIR] [--trace] -- COMMAND [ARGS]..."
)]
struct Cli {
    /// The vGPU device node inside a VM [default: $VGPU_DEVICE, else /dev/vgpu0].
    #[arg(long, value_name = "PATH", conflicts_with = "socket")]
    device: Option<PathBuf>,
    /// A `vhost-gpu --socket` to speak to directly (virtio-user, outside a VM).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Directory holding our libcuda.so.1 [default: $VGPU_LIB_DIR, else next to vgpu-run].
    #[arg(long, value_name = "DIR")]
    lib_dir: Option<PathBuf>,
    /// Log every call the shim sends (VGPU_TRACE=1), and print the setup to stderr.
    #[arg(long)]
    trace: bool,
    /// The program and its arguments.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

fn fail(msg: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("vgpu-run: {msg}");
    std::process::exit(code)
}

fn main() {
    let cli = Cli::parse();
    let Some((program, args)) = cli.command.split_first() else {
        fail(Error::NoCommand, 2)
    };
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| fail(format!("cannot find vgpu-run's own executable: {e}"), 2));
    let cwd = std::env::current_dir()
        .unwrap_or_else(|e| fail(format!("cannot read the current directory: {e}"), 2));
    let opts = Options {
        lib_dir: cli.lib_dir,
        socket: cli.socket,
        device: cli.device,
        trace: cli.trace,
    };
    let setup = vgpu_run::prepare(&opts, |k| std::env::var_os(k), &exe, &cwd)
        .unwrap_or_else(|e| fail(e, 2));
    if opts.trace {
        for (k, v) in &setup.env {
            eprintln!("vgpu-run: {}={}", k.display(), v.display());
        }
    }
    let err = Command::new(program).args(args).envs(setup.env).exec();
    // As env(1) does: 127 when the program is not there, 126 when it cannot be run.
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    fail(format!("cannot run {}: {err}", program.display()), code)
}

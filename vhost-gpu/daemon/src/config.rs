//! Command-line configuration, validated into a [`Config`].

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use thiserror::Error;
use vgpu_executor::{SliceLimits, cuda::ComputeMode};
use vgpu_seccomp::SeccompMode;

pub use crate::isolation::Isolation;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--gpu must be 'sim' or a CUDA device ordinal, not '{0}'")]
    BadGpu(String),
    #[error("'{0}' is not a size (examples: 1073741824, 512M, 8G, 2GiB)")]
    BadSize(String),
    #[error("--queues must be between 1 and 64, not {0}")]
    BadQueues(usize),
    #[error("--queue-size must be a power of two between 64 and 32768, not {0}")]
    BadQueueSize(usize),
    #[error("--compute-mode must be 'green' or 'mps', not '{0}'")]
    BadComputeMode(String),
    #[error("--compute-mode needs --sm-count")]
    ModeWithoutSms,
    #[error("--sm-count must be at least 1")]
    ZeroSms,
    #[error(
        "Give --socket PATH (serve a VM over vhost-user) or --listen ADDR:PORT (serve remote slices), not both"
    )]
    SocketOrListen,
    #[error("--remote forwards a VM's vhost-user device: it needs --socket")]
    RemoteWithoutSocket,
    #[error("'{0}' is not a HOST:PORT address")]
    BadAddress(String),
    #[error("Cannot read the remote-slice secret from {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{0}' is not a duration (examples: 300, 30s, 500ms, 5m)")]
    BadDuration(String),
    #[error("{0} must be more than zero")]
    Zero(&'static str),
    #[error("--serve-remote-connection is for the remote-slice listener's session processes")]
    ConnectionWithoutListen,
    #[error("Bad --socket-group")]
    SocketGroup(#[source] vgpu_config::socket::SocketError),
}

/// Which device executes the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuSelection {
    Sim,
    Cuda(i32),
}

#[derive(Parser, Debug)]
#[command(
    name = "vhost-gpu",
    version,
    about = "Serves a VM's vGPU over vhost-user"
)]
pub struct Args {
    /// vhost-user socket to serve a VM (or virtio-user processes) on.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Mode of the vhost-user socket, octal (e.g. 0660: its owner and group may connect).
    /// Default: as the umask leaves it.
    #[arg(long, value_parser = vgpu_config::socket::parse_mode)]
    pub socket_mode: Option<u32>,
    /// Group of the vhost-user socket, a name or number (e.g. kvm or libvirt-qemu: the group
    /// QEMU runs in), so QEMU running as its own user can connect.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Serve remote slices on this TCP address (HOST:PORT) instead: each connection is one
    /// slice, with the limits its VM host asks for.
    #[arg(long)]
    pub listen: Option<String>,
    /// Run the VM's calls on a GPU host's `vhost-gpu --listen` at HOST:PORT (the network
    /// fallback) instead of a local GPU; --gpu, --mem-limit and --sm-count describe the slice
    /// asked of it.
    #[arg(long)]
    pub remote: Option<String>,
    /// File holding the pool's shared secret for remote slices (both --listen and --remote);
    /// else the VGPU_REMOTE_TOKEN environment variable. A GPU host with a secret serves only
    /// VM hosts that prove they hold it.
    #[arg(long)]
    pub remote_token_file: Option<PathBuf>,
    /// Keep a JSON file with the slice's state up to date (device memory held, clients), for
    /// the host agent's metrics.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// 'sim' for the CPU simulator (CI only: nothing runs on a GPU) or a CUDA device ordinal.
    #[arg(long, default_value = "0")]
    pub gpu: String,
    /// Device memory the VM may hold (the slice), e.g. 8G. Default: the whole device.
    #[arg(long)]
    pub mem_limit: Option<String>,
    /// Memory of the simulated device, e.g. 16G.
    #[arg(long, default_value = "16G")]
    pub sim_memory: String,
    /// Number of virtqueues offered.
    #[arg(long, default_value_t = 2)]
    pub queues: usize,
    /// Largest queue size offered.
    #[arg(long, default_value_t = 1024)]
    pub queue_size: usize,
    /// Microseconds to keep polling a queue after it runs dry, before waiting for a kick.
    #[arg(long, default_value_t = 200)]
    pub poll_us: u64,
    /// SMs of the slice (enforced on the GPU by --compute-mode; reported to the guest).
    #[arg(long)]
    pub sm_count: Option<u32>,
    /// How the SM share is enforced: 'green' (green contexts) or 'mps' (an MPS client share;
    /// needs nvidia-cuda-mps-control running). See docs/slices.md.
    #[arg(long)]
    pub compute_mode: Option<String>,
    /// Device memory charged to the slice for each context the VM creates, e.g. 500M.
    #[arg(long, default_value = "0")]
    pub ctx_overhead: String,
    /// Exit after serving this many frontends (default: serve forever).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// How the slice's clients are kept apart: 'process' (one host process per guest client,
    /// each with its own GPU address space) or 'shared' (one process; only for measuring what
    /// isolation costs).
    #[arg(long, value_enum, default_value_t = Isolation::Process)]
    pub isolation: Isolation,
    /// Accept guest memory that cannot be sealed against shrinking (hugetlbfs or tmpfs files
    /// of a trusted VMM). By default every region must be a memfd the daemon can seal, so the
    /// frontend cannot cut it short under a mapping.
    #[arg(long)]
    pub allow_unsealed_memory: bool,
    /// Start each frontend's next worker before its client's first call (its CUDA start-up
    /// then runs while the guest gets ready): 'true' or 'false'.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub prestart_workers: bool,
    /// Guest clients (processes) one frontend may have at once.
    #[arg(long, default_value_t = 64)]
    pub max_clients: usize,
    /// seccomp confinement (docs/threat-model.md): 'kill' enforces, 'log' allows and has the
    /// kernel log what would be refused, 'trap' prints each refused call's number on stderr
    /// and fails it, 'off' installs no filter.
    #[arg(long, default_value = "kill")]
    pub seccomp: SeccompMode,
    /// With --listen: the most remote slices served at once (each is a process of its own); a
    /// connection over it is refused at once.
    #[arg(long, default_value_t = 64)]
    pub max_remote_sessions: usize,
    /// With --listen: close a remote session that sends no request for this long (its VM host
    /// sends keepalives while idle), e.g. 300s.
    #[arg(long, default_value = "300s")]
    pub remote_idle_timeout: String,
    /// With --listen: a request whose first byte has arrived must arrive in full, and a reply
    /// must be taken, within this, e.g. 30s.
    #[arg(long, default_value = "30s")]
    pub remote_progress_timeout: String,
    /// With --listen: TLS and the session handshake must complete within this, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub remote_handshake_timeout: String,
    /// With --listen: the most bulk data one request of a remote session may carry, both ways
    /// together, e.g. 2G.
    #[arg(long, default_value = "2G")]
    pub remote_max_in_flight: String,
    /// (Internal) serve the remote-slice connection on this inherited descriptor, then exit.
    #[arg(long, hide = true)]
    pub serve_remote_connection: Option<i32>,
    /// (Internal) when the listener accepted that connection, in microseconds since 1970.
    #[arg(long, hide = true)]
    pub accepted_at_us: Option<u64>,
}

impl GpuSelection {
    /// The device, as logs name it.
    pub fn describe(&self) -> String {
        match self {
            GpuSelection::Sim => "the simulated GPU".into(),
            GpuSelection::Cuda(n) => format!("GPU {n}"),
        }
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The vhost-user socket (empty with `listen`).
    pub socket: PathBuf,
    /// Its mode and group, when given.
    pub socket_mode: Option<u32>,
    pub socket_gid: Option<u32>,
    /// Serve remote slices on this TCP address.
    pub listen: Option<String>,
    /// Forward to this GPU host.
    pub remote: Option<String>,
    /// The pool's shared secret for remote slices.
    pub remote_secret: Option<vgpu_remote::Secret>,
    /// Where to report the slice's state.
    pub status_file: Option<PathBuf>,
    pub gpu: GpuSelection,
    pub compute: ComputeMode,
    pub limits: SliceLimits,
    pub sim_memory: u64,
    pub queues: usize,
    pub queue_size: usize,
    pub poll_us: u64,
    pub isolation: Isolation,
    pub max_clients: usize,
    pub allow_unsealed_memory: bool,
    pub prestart_workers: bool,
    /// How this process is confined.
    pub seccomp: SeccompMode,
    /// Remote slices served at once (`--listen`).
    pub max_remote_sessions: usize,
    /// What a remote session process needs (`--listen`): secret, timeouts, limits.
    pub remote_session: vgpu_remote::SessionOptions,
    /// This process serves one remote-slice connection on this descriptor.
    pub serve_remote_connection: Option<i32>,
}

/// Parses "300" (seconds), "30s", "500ms", "5m".
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::BadDuration(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok(match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    })
}

/// Parses "1048576", "512M", "8G", "2GiB", "64KiB".
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let gpu = if a.gpu == "sim" {
            GpuSelection::Sim
        } else {
            GpuSelection::Cuda(
                a.gpu
                    .parse()
                    .map_err(|_| ConfigError::BadGpu(a.gpu.clone()))?,
            )
        };
        if !(1..=64).contains(&a.queues) {
            return Err(ConfigError::BadQueues(a.queues));
        }
        if !a.queue_size.is_power_of_two() || !(64..=32768).contains(&a.queue_size) {
            return Err(ConfigError::BadQueueSize(a.queue_size));
        }
        if a.sm_count == Some(0) {
            return Err(ConfigError::ZeroSms);
        }
        let compute = match (a.compute_mode.as_deref(), a.sm_count) {
            (None, None) => ComputeMode::Whole,
            (None | Some("green"), Some(sm_count)) => ComputeMode::Green { sm_count },
            (Some("mps"), Some(sm_count)) => ComputeMode::Mps { sm_count },
            (Some("green" | "mps"), None) => return Err(ConfigError::ModeWithoutSms),
            (Some(other), _) => return Err(ConfigError::BadComputeMode(other.to_string())),
        };
        let address = |s: &str| {
            let t = s.strip_prefix("tcp:").unwrap_or(s);
            match t.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(t.to_string())
                }
                _ => Err(ConfigError::BadAddress(s.to_string())),
            }
        };
        let listen = a.listen.as_deref().map(address).transpose()?;
        let remote = a.remote.as_deref().map(address).transpose()?;
        let socket = match (a.socket, &listen) {
            (Some(s), None) => s,
            (None, Some(_)) => PathBuf::new(),
            _ => return Err(ConfigError::SocketOrListen),
        };
        if remote.is_some() && listen.is_some() {
            return Err(ConfigError::RemoteWithoutSocket);
        }
        let remote_secret = match &a.remote_token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|source| ConfigError::TokenFile {
                    path: p.clone(),
                    source,
                })?;
                vgpu_remote::Secret::new(t.trim().as_bytes())
            }
            None => std::env::var("VGPU_REMOTE_TOKEN")
                .ok()
                .and_then(|t| vgpu_remote::Secret::new(t.trim().as_bytes())),
        };
        let positive = |what: &'static str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::Zero(what))
            } else {
                Ok(d)
            }
        };
        let timeouts = vgpu_remote::Timeouts {
            handshake: positive(
                "--remote-handshake-timeout",
                parse_duration(&a.remote_handshake_timeout)?,
            )?,
            idle: positive(
                "--remote-idle-timeout",
                parse_duration(&a.remote_idle_timeout)?,
            )?,
            progress: positive(
                "--remote-progress-timeout",
                parse_duration(&a.remote_progress_timeout)?,
            )?,
        };
        if a.max_remote_sessions == 0 {
            return Err(ConfigError::Zero("--max-remote-sessions"));
        }
        if a.serve_remote_connection.is_some() && listen.is_none() {
            return Err(ConfigError::ConnectionWithoutListen);
        }
        let remote_session = vgpu_remote::SessionOptions {
            secret: remote_secret.clone(),
            timeouts,
            max_in_flight: parse_size(&a.remote_max_in_flight)?,
            accepted_at: a
                .accepted_at_us
                .map(|us| std::time::UNIX_EPOCH + Duration::from_micros(us)),
        };
        let socket_gid = a
            .socket_group
            .as_deref()
            .map(vgpu_config::socket::group_id)
            .transpose()
            .map_err(ConfigError::SocketGroup)?;
        Ok(Config {
            socket,
            socket_mode: a.socket_mode,
            socket_gid,
            listen,
            remote,
            remote_secret,
            status_file: a.status_file,
            gpu,
            compute,
            limits: SliceLimits {
                mem_limit: a.mem_limit.as_deref().map(parse_size).transpose()?,
                sm_count: a.sm_count,
                ctx_overhead: parse_size(&a.ctx_overhead)?,
            },
            sim_memory: parse_size(&a.sim_memory)?,
            queues: a.queues,
            queue_size: a.queue_size,
            poll_us: a.poll_us,
            isolation: a.isolation,
            max_clients: a.max_clients.max(1),
            allow_unsealed_memory: a.allow_unsealed_memory,
            prestart_workers: a.prestart_workers,
            seccomp: a.seccomp,
            max_remote_sessions: a.max_remote_sessions,
            remote_session,
            serve_remote_connection: a.serve_remote_connection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["vhost-gpu", "--socket", "/tmp/s"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M").ok(), Some(512 << 20));
        assert_eq!(parse_size("2GiB").ok(), Some(2 << 30));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let bare = |v: &[&str]| Args::parse_from(std::iter::once("vhost-gpu").chain(v.to_vec()));
        for (a, want) in [
            (args(&["--gpu", "h200"]), ConfigError::BadGpu("h200".into())),
            (args(&["--queues", "0"]), ConfigError::BadQueues(0)),
            (
                args(&["--queue-size", "100"]),
                ConfigError::BadQueueSize(100),
            ),
            (
                args(&["--compute-mode", "mps"]),
                ConfigError::ModeWithoutSms,
            ),
            (
                args(&["--sm-count", "8", "--compute-mode", "mig"]),
                ConfigError::BadComputeMode("mig".into()),
            ),
            (args(&["--sm-count", "0"]), ConfigError::ZeroSms),
            (
                args(&["--remote", "gpuhost"]),
                ConfigError::BadAddress("gpuhost".into()),
            ),
            (
                args(&["--listen", "0.0.0.0:7470"]),
                ConfigError::SocketOrListen,
            ),
            (bare(&["--gpu", "sim"]), ConfigError::SocketOrListen),
            (
                args(&["--serve-remote-connection", "3"]),
                ConfigError::ConnectionWithoutListen,
            ),
            (
                bare(&["--listen", "127.0.0.1:7470", "--remote-idle-timeout", "0s"]),
                ConfigError::Zero("--remote-idle-timeout"),
            ),
        ] {
            let got = Config::try_from(a).expect_err("the flags were accepted");
            assert_eq!(got.to_string(), want.to_string());
        }
        let c = Config::try_from(args(&["--gpu", "sim", "--mem-limit", "1G"])).unwrap();
        assert_eq!(c.gpu, GpuSelection::Sim);
        assert_eq!(c.limits.mem_limit, Some(1 << 30));
        assert_eq!(c.compute, ComputeMode::Whole);
        let c = Config::try_from(args(&["--sm-count", "33"])).unwrap();
        assert_eq!(c.compute, ComputeMode::Green { sm_count: 33 });
        let c = Config::try_from(args(&["--sm-count", "33", "--compute-mode", "mps"])).unwrap();
        assert_eq!(c.compute, ComputeMode::Mps { sm_count: 33 });
        let c = Config::try_from(args(&["--remote", "tcp:gpu7:7470"])).unwrap();
        assert_eq!(c.remote.as_deref(), Some("gpu7:7470"));
        let c = Config::try_from(Args::parse_from(["vhost-gpu", "--listen", "[::]:7470"])).unwrap();
        assert_eq!(c.listen.as_deref(), Some("[::]:7470"));
    }

    #[test]
    fn seccomp_defaults_to_kill_and_parses_its_modes() {
        assert_eq!(
            Config::try_from(args(&[])).unwrap().seccomp,
            SeccompMode::Kill
        );
        for (flag, mode) in [
            ("log", SeccompMode::Log),
            ("trap", SeccompMode::Trap),
            ("off", SeccompMode::Off),
        ] {
            let c = Config::try_from(args(&["--seccomp", flag])).unwrap();
            assert_eq!(c.seccomp, mode);
        }
        let e = Args::try_parse_from(["vhost-gpu", "--socket", "/tmp/s", "--seccomp", "strict"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'kill', 'log', 'trap' or 'off'"), "{e}");
    }

    #[test]
    fn remote_slice_limits_parse_and_default() {
        for (text, d) in [
            ("300", Duration::from_secs(300)),
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
        ] {
            assert_eq!(parse_duration(text).ok(), Some(d), "{text}");
        }
        assert!(parse_duration("soon").is_err());
        let listen = |extra: &[&str]| {
            let mut v = vec!["vhost-gpu", "--listen", "127.0.0.1:7470"];
            v.extend_from_slice(extra);
            Config::try_from(Args::parse_from(v))
        };
        let c = listen(&[]).unwrap();
        assert_eq!(c.max_remote_sessions, 64);
        assert_eq!(c.remote_session.timeouts, vgpu_remote::Timeouts::default());
        assert_eq!(c.remote_session.max_in_flight, 2 << 30);
        let c = listen(&[
            "--remote-idle-timeout",
            "2s",
            "--remote-progress-timeout",
            "1500ms",
            "--remote-handshake-timeout",
            "1",
            "--max-remote-sessions",
            "3",
        ])
        .unwrap();
        assert_eq!(c.remote_session.timeouts.idle, Duration::from_secs(2));
        assert_eq!(
            c.remote_session.timeouts.progress,
            Duration::from_millis(1500)
        );
        assert_eq!(c.remote_session.timeouts.handshake, Duration::from_secs(1));
        assert_eq!(c.max_remote_sessions, 3);
    }
}

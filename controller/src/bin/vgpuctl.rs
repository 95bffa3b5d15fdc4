//! `vgpuctl`: command-line client of the pool controller's REST API.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "vgpuctl",
    version,
    about = "Command-line client of the vGPU pool controller"
)]
struct Cli {
    /// Controller URL; for several controller replicas a comma-separated list (the next one is
    /// tried when one cannot be connected to).
    #[arg(
        long,
        env = "VGPU_URL",
        default_value = "http://127.0.0.1:8470",
        global = true
    )]
    url: String,
    /// Bearer token (admin or project).
    #[arg(long, env = "VGPU_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Extra CA certificate (PEM) to trust for https:// (e.g. the controller's self-signed one).
    #[arg(long, env = "VGPU_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Output format: a table, a wider table (more columns), the controller's JSON, or YAML.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// The same as `-o json`.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

/// The output format, set once in `run` (the tables read it to add the wide columns).
static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Which rows of a list to print (matched on what the controller answers, for every format).
#[derive(clap::Args, Debug, Clone, Default)]
struct Filter {
    /// Only rows of this host: a host's name, a GPU's host, an allocation's or slice's VM host
    /// or GPU host.
    #[arg(long)]
    host: Option<String>,
    /// Only rows of this project (allocations, slices).
    #[arg(long)]
    project: Option<String>,
    /// Only rows in this state: allocations `pending` or `running`; hosts `alive`, `lost` or
    /// `drained`; GPUs `healthy` or `unhealthy`.
    #[arg(long)]
    state: Option<String>,
}

/// The lists filters apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    Hosts,
    Gpus,
    Slices,
    Allocations,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List hosts.
    Hosts(Filter),
    /// List GPUs with their free capacity.
    Gpus(Filter),
    /// List slices in use.
    Slices(Filter),
    /// List allocations.
    Allocations(Filter),
    /// Show one allocation.
    Get { id: String },
    /// Allocate a slice for a VM.
    Allocate {
        #[arg(long)]
        vm: String,
        /// The host the VM runs on.
        #[arg(long)]
        host: String,
        /// Project (admin token only).
        #[arg(long)]
        project: Option<String>,
        /// Fixed profile: 1, 1/2, 1/4, 1/8, ...
        #[arg(long, conflicts_with_all = ["sm", "memory"])]
        profile: Option<String>,
        /// Arbitrary slice: SM count.
        #[arg(long, requires = "memory")]
        sm: Option<u32>,
        /// Arbitrary slice: memory (bytes, or with KiB/MiB/GiB/TiB suffix).
        #[arg(long, requires = "sm")]
        memory: Option<String>,
        /// Allow a GPU on another host (network fallback).
        #[arg(long)]
        allow_remote: bool,
        /// Use the emptiest GPU instead of the fullest (binpack).
        #[arg(long)]
        spread: bool,
        /// Prefer GPUs on this NUMA node.
        #[arg(long)]
        numa: Option<i32>,
        /// Wait until the agent reports the slice's worker running (progress on stderr).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (the allocation is kept).
        #[arg(long, default_value_t = 120, requires = "wait")]
        timeout: u64,
    },
    /// Release an allocation.
    Release { id: String },
    /// Stop placing new slices on a host.
    Drain { host: String },
    /// Undo a drain.
    Undrain { host: String },
    /// Issue a host's agent credential (a new one replaces the old, which stops working).
    /// Write it to the agent's `<state-dir>/host.token` (mode 0600).
    HostToken { host: String },
    /// List projects.
    Projects,
    /// Create a project (prints its token once).
    ProjectCreate {
        name: String,
        #[arg(long)]
        max_allocations: Option<u64>,
        /// Memory quota (bytes or with suffix).
        #[arg(long)]
        max_memory: Option<String>,
        #[arg(long)]
        max_sm: Option<u64>,
    },
    /// Print a shell completion script: `vgpuctl completion bash > /etc/bash_completion.d/vgpuctl`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `vgpuctl man | man -l -`.
    Man,
    /// Hot-plug a vGPU into a running libvirt domain with shared memory: the slice the domain
    /// (by UUID or name) already holds, else a new one (--profile, or --sm and --memory).
    Attach {
        domain: String,
        #[command(flatten)]
        lv: LibvirtOpts,
        /// Fixed profile: 1, 1/2, 1/4, ...
        #[arg(long, conflicts_with_all = ["sm", "memory"])]
        profile: Option<String>,
        #[arg(long, requires = "memory")]
        sm: Option<u32>,
        #[arg(long, requires = "sm")]
        memory: Option<String>,
        /// Seconds to wait for the slice's worker to be running.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// Unplug the vGPU from a domain and release its slice (not a slice Nova's instance holds
    /// in Placement: that one goes when Nova deletes the instance).
    Detach {
        domain: String,
        #[command(flatten)]
        lv: LibvirtOpts,
        /// Keep the slice.
        #[arg(long)]
        keep: bool,
    },
    /// Follow libvirt's lifecycle events: attach a domain's slice when it starts, release it
    /// (outside Nova's project) when it stops. Domains already running are attached at start.
    LibvirtWatch {
        #[command(flatten)]
        lv: LibvirtOpts,
        /// Seconds to wait, after a domain starts, for its slice and worker.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// Set a GPU's slice mode or compute oversubscription ratio.
    GpuSet {
        uuid: String,
        /// homogeneous or mixed
        #[arg(long)]
        slice_mode: Option<String>,
        #[arg(long)]
        oversubscription: Option<f64>,
        /// healthy or unhealthy
        #[arg(long)]
        health: Option<String>,
    },
}

/// Options of the libvirt commands.
#[derive(clap::Args, Debug, Clone)]
struct LibvirtOpts {
    /// libvirt connection URI.
    #[arg(long, default_value = "qemu:///system")]
    libvirt_uri: String,
    /// This host's name in the pool (default: the kernel's host name).
    #[arg(long)]
    host: Option<String>,
    /// QEMU id of the device (its chardev is `<id>c`).
    #[arg(long, default_value = "vgpu0")]
    id: String,
    /// The chardev reconnects to a restarted worker after this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    reconnect_ms: u64,
    /// Pool project of Nova's instances (their slices follow Placement, not the domain).
    #[arg(long, default_value = "openstack")]
    openstack_project: String,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Libvirt(#[from] vgpu_controller::libvirt::LibvirtError),
    #[error("Domain {0:?} holds no slice; give --profile, or --sm and --memory")]
    NoSliceFor(String),
    #[error("The worker of allocation {id} was not running within {secs} s")]
    NotReady { id: String, secs: u64 },
    #[error(transparent)]
    Client(#[from] vgpu_pool_wire::ClientSetupError),
    #[error("No controller URL in {0:?}")]
    NoUrl(String),
    #[error("Cannot reach {base}")]
    Unreachable {
        base: String,
        #[source]
        source: ureq::Error,
    },
    #[error("Cannot read the answer of {base}")]
    Answer {
        base: String,
        #[source]
        source: ureq::Error,
    },
    #[error("HTTP {status} {code}{}: {message}", because(.reason))]
    Refused {
        status: u16,
        code: String,
        /// Which constraint refused it (`error.reason`), where the controller names one.
        reason: Option<String>,
        message: String,
    },
    #[error(
        "Allocation {id} is still {state} after {secs} s (it is kept; release it or wait longer)"
    )]
    WaitTimeout {
        id: String,
        state: String,
        secs: u64,
    },
    #[error(
        "Allocation {id} went away while waiting for it to run (its lease was reclaimed: the host's agent did not start its worker)"
    )]
    WaitGone { id: String },
    #[error("--{0} does not apply to this list")]
    Filter(&'static str),
    #[error("Cannot write the output")]
    Write(#[source] std::io::Error),
    #[error("Cannot write YAML")]
    Yaml(#[source] serde_norway::Error),
    #[error("{0}")]
    BadSize(String),
    #[error("Give --profile, or --sm and --memory")]
    NoSlice,
}

fn because(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

impl CliError {
    /// The request failed before reaching the controller (safe to send to another replica).
    fn unreachable(&self) -> bool {
        match self {
            CliError::Unreachable { source, .. } => unreachable(source),
            _ => false,
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("Bad size {s:?}"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        u => return Err(format!("Unknown size unit {u:?} (use KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("Size {s:?} is too large"))
}

/// One table row per element of a JSON array answer.
fn rows_of(v: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v.as_array()
        .map(|a| a.iter().map(row).collect())
        .unwrap_or_default()
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

struct Api {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A request failed before reaching the controller (safe to send to another replica).
fn unreachable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let urls: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let mut last = CliError::NoUrl(self.url.clone());
        for base in urls {
            match self.call_one(base, method, path, body.clone()) {
                Err(e) if e.unreachable() => last = e,
                r => return r,
            }
        }
        Err(last)
    }

    fn call_one(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{}", base.trim_end_matches('/'), path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let resp = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            (m, body) => {
                let mut r = if m == "PATCH" {
                    self.agent.patch(&url)
                } else {
                    self.agent.post(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send_json(body.unwrap_or(json!({})))
            }
        };
        let mut resp = resp.map_err(|source| CliError::Unreachable {
            base: base.to_string(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|source| CliError::Answer {
                base: base.to_string(),
                source,
            })?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            let message = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            let code = v["error"]["code"].as_str().unwrap_or("error").to_string();
            let reason = v["error"]["reason"].as_str().map(str::to_string);
            return Err(CliError::Refused {
                status,
                code,
                reason,
                message,
            });
        }
        Ok(v)
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// Prints a table. Columns whose header starts with `+` are shown only with `-o wide`.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let wide = OUTPUT.get() == Some(&Output::Wide);
    let keep: Vec<bool> = headers
        .iter()
        .map(|h| wide || !h.starts_with('+'))
        .collect();
    let headers: Vec<&str> = headers
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(h, _)| h.trim_start_matches('+'))
        .collect();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(c, _)| c)
                .collect()
        })
        .collect();
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn print_allocations(v: &Value) {
    let rows = rows_of(v, |a| {
        vec![
            s(&a["id"]),
            s(&a["project"]),
            s(&a["vm"]),
            s(&a["vm_host"]),
            s(&a["gpu_uuid"]),
            a["profile"]
                .as_u64()
                .map(|n| if n == 1 { "1".into() } else { format!("1/{n}") })
                .unwrap_or_else(|| "custom".into()),
            s(&a["sm_count"]),
            human_bytes(a["memory_bytes"].as_u64().unwrap_or(0)),
            if a["remote"].as_bool() == Some(true) {
                s(&a["endpoint"])
            } else {
                "local".into()
            },
            s(&a["state"]),
            s(&a["socket_path"]),
            s(&a["gpu_host"]),
            age(&a["created_at"]),
        ]
    });
    table(
        &[
            "ID",
            "PROJECT",
            "VM",
            "VM HOST",
            "GPU",
            "PROFILE",
            "SMS",
            "MEMORY",
            "WHERE",
            "STATE",
            "SOCKET",
            "+GPU HOST",
            "+AGE",
        ],
        rows,
    );
}

/// Time since `ms` (milliseconds since the epoch): `42s`, `5m`, `3h`, `2d`.
fn age(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(ms);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// What a host's STATE column says.
fn host_state(h: &Value) -> &'static str {
    if h["alive"].as_bool() != Some(true) {
        "lost"
    } else if h["schedulable"].as_bool() != Some(true) {
        "drained"
    } else {
        "alive"
    }
}

/// Keeps the rows of list `v` that `f` selects.
fn filter(list: List, f: &Filter, v: Value) -> Result<Value, CliError> {
    if f.project.is_some() && matches!(list, List::Hosts | List::Gpus) {
        return Err(CliError::Filter("project"));
    }
    if f.state.is_some() && list == List::Slices {
        return Err(CliError::Filter("state"));
    }
    let Value::Array(rows) = v else {
        return Ok(v);
    };
    let keep = |row: &Value| {
        let host_ok = f.host.as_deref().is_none_or(|h| {
            ["name", "host", "vm_host", "gpu_host"]
                .iter()
                .filter(|k| **k != "name" || list == List::Hosts)
                .any(|k| row[*k].as_str() == Some(h))
        });
        let project_ok = f
            .project
            .as_deref()
            .is_none_or(|p| row["project"].as_str() == Some(p));
        let state_ok = f.state.as_deref().is_none_or(|want| match list {
            List::Hosts => host_state(row) == want,
            List::Gpus => row["health"].as_str() == Some(want),
            _ => row["state"].as_str() == Some(want),
        });
        host_ok && project_ok && state_ok
    };
    Ok(Value::Array(rows.into_iter().filter(keep).collect()))
}

/// Polls allocation `id` until its worker runs, printing its state on stderr when it changes.
fn wait_running(api: &Api, id: &str, timeout: Duration) -> Result<Value, CliError> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let v = match api.call("GET", &format!("/v1/allocations/{id}"), None) {
            Err(CliError::Refused { status: 404, .. }) => {
                return Err(CliError::WaitGone { id: id.into() });
            }
            r => r?,
        };
        let state = s(&v["state"]);
        if state != last {
            eprintln!("{id}: {state} ({:.1} s)", start.elapsed().as_secs_f64());
            last = state.clone();
        }
        if state == "running" {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(CliError::WaitTimeout {
                id: id.into(),
                state,
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let output = if cli.json { Output::Json } else { cli.output };
    let _ = OUTPUT.set(output);
    match &cli.cmd {
        Cmd::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "vgpuctl",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Cmd::Man => {
            return clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(CliError::Write);
        }
        _ => {}
    }
    let agent = vgpu_pool_wire::http_client(cli.ca_cert.as_deref(), Duration::from_secs(30))?;
    let api = Api {
        url: cli.url.clone(),
        token: cli.token.clone(),
        agent,
    };
    let (v, printer): (Value, fn(&Value)) = match cli.cmd {
        Cmd::Attach {
            domain,
            lv,
            profile,
            sm,
            memory,
            wait_secs,
        } => {
            let slice = match (profile, sm, memory) {
                (Some(p), _, _) => Some(json!({"profile": p})),
                (None, Some(sm), Some(m)) => Some(
                    json!({"sm_count": sm, "memory_bytes": parse_size(&m).map_err(CliError::BadSize)?}),
                ),
                _ => None,
            };
            let a = attach(&api, &lv, &domain, slice, Duration::from_secs(wait_secs))?;
            (a, |_| {})
        }
        Cmd::Detach { domain, lv, keep } => {
            let virsh = vgpu_controller::libvirt::Virsh {
                uri: lv.libvirt_uri.clone(),
            };
            let uuid = virsh.domuuid(&domain)?;
            let took = virsh.detach(&domain, &lv.id, Duration::from_secs(30))?;
            println!(
                "detached {} from {domain} in {} ms",
                lv.id,
                took.as_millis()
            );
            if !keep {
                release_for(&api, &lv, &[uuid.as_str(), domain.as_str()])?;
            }
            (Value::Null, |_| {})
        }
        Cmd::LibvirtWatch { lv, wait_secs } => {
            watch(&api, &lv, Duration::from_secs(wait_secs))?;
            (Value::Null, |_| {})
        }
        Cmd::Hosts(f) => (
            filter(List::Hosts, &f, api.call("GET", "/v1/hosts", None)?)?,
            |v| {
                let rows = rows_of(v, |h| {
                    let labels = h["labels"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, x)| format!("{k}={}", s(x)))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        s(&h["name"]),
                        if h["alive"].as_bool() == Some(true) {
                            "alive".into()
                        } else {
                            "lost".into()
                        },
                        if h["schedulable"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "drained".into()
                        },
                        s(&h["gpu_source"]),
                        s(&h["gpus"]),
                        s(&h["allocations"]),
                        format!("{}:{}", s(&h["address"]), s(&h["serve_port"])),
                        if labels.is_empty() {
                            "-".into()
                        } else {
                            labels
                        },
                        s(&h["socket_dir"]),
                        format!("{} ms ago", s(&h["last_seen_ms_ago"])),
                        if h["enrolled"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        age(&h["registered_at"]),
                    ]
                });
                table(
                    &[
                        "HOST",
                        "STATE",
                        "SCHEDULABLE",
                        "GPUS FROM",
                        "GPUS",
                        "ALLOCS",
                        "SERVE ENDPOINT",
                        "LABELS",
                        "+SOCKET DIR",
                        "+LAST SEEN",
                        "+ENROLLED",
                        "+REGISTERED",
                    ],
                    rows,
                );
            },
        ),
        Cmd::Gpus(f) => (
            filter(List::Gpus, &f, api.call("GET", "/v1/gpus", None)?)?,
            |v| {
                let rows = rows_of(v, |g| {
                    vec![
                        s(&g["uuid"]),
                        s(&g["host"]),
                        s(&g["index"]),
                        s(&g["model"]),
                        format!("{}/{}", s(&g["sm_allocated"]), s(&g["sm_capacity"])),
                        format!(
                            "{} / {}",
                            human_bytes(g["memory_allocated_bytes"].as_u64().unwrap_or(0)),
                            human_bytes(g["memory_bytes"].as_u64().unwrap_or(0))
                        ),
                        s(&g["slices"]),
                        s(&g["slice_mode"]),
                        s(&g["health"]),
                        s(&g["numa_node"]),
                        s(&g["pci_bus_id"]),
                        s(&g["oversubscription_ratio"]),
                        human_bytes(g["memory_free_bytes"].as_u64().unwrap_or(0)),
                    ]
                });
                table(
                    &[
                        "UUID",
                        "HOST",
                        "IDX",
                        "MODEL",
                        "SMS USED",
                        "MEMORY USED",
                        "SLICES",
                        "MODE",
                        "HEALTH",
                        "NUMA",
                        "+PCI",
                        "+OVERSUB",
                        "+MEMORY FREE",
                    ],
                    rows,
                );
            },
        ),
        Cmd::Slices(f) => (
            filter(List::Slices, &f, api.call("GET", "/v1/slices", None)?)?,
            |v| {
                let rows = rows_of(v, |x| {
                    vec![
                        s(&x["id"]),
                        s(&x["gpu_uuid"]),
                        s(&x["gpu_host"]),
                        x["profile"].as_str().unwrap_or("custom").to_string(),
                        s(&x["sm_count"]),
                        human_bytes(x["memory_bytes"].as_u64().unwrap_or(0)),
                        s(&x["allocation_id"]),
                        s(&x["project"]),
                        s(&x["vm"]),
                    ]
                });
                table(
                    &[
                        "SLICE",
                        "GPU",
                        "HOST",
                        "PROFILE",
                        "SMS",
                        "MEMORY",
                        "ALLOCATION",
                        "PROJECT",
                        "VM",
                    ],
                    rows,
                );
            },
        ),
        Cmd::Allocations(f) => (
            filter(
                List::Allocations,
                &f,
                api.call("GET", "/v1/allocations", None)?,
            )?,
            print_allocations,
        ),
        Cmd::Get { id } => (
            api.call("GET", &format!("/v1/allocations/{id}"), None)?,
            |v| print_allocations(&json!([v])),
        ),
        Cmd::Allocate {
            vm,
            host,
            project,
            profile,
            sm,
            memory,
            allow_remote,
            spread,
            numa,
            wait,
            timeout,
        } => {
            let slice = match (profile, sm, memory) {
                (Some(p), _, _) => json!({"profile": p}),
                (None, Some(sm), Some(m)) => {
                    json!({"sm_count": sm, "memory_bytes": parse_size(&m).map_err(CliError::BadSize)?})
                }
                _ => return Err(CliError::NoSlice),
            };
            let mut body = json!({
                "vm": vm, "host": host, "slice": slice,
                "policy": {"allow_remote": allow_remote, "strategy": if spread { "spread" } else { "binpack" }, "numa_node": numa}
            });
            if let Some(p) = project {
                body["project"] = json!(p);
            }
            let mut v = api.call("POST", "/v1/allocations", Some(body))?;
            if wait {
                v = wait_running(&api, &s(&v["id"]), Duration::from_secs(timeout))?;
            }
            (v, |v| {
                print_allocations(&json!([v]));
                println!(
                    "\nRun a program on it:\n  VGPU_DEVICE=vhost-user:{} LD_LIBRARY_PATH=<dir with our libcuda.so.1> ./program",
                    s(&v["socket_path"])
                );
            })
        }
        Cmd::Release { id } => (
            api.call("DELETE", &format!("/v1/allocations/{id}"), None)?,
            |v| println!("released {}", s(&v["id"])),
        ),
        Cmd::Drain { host } => (
            api.call("POST", &format!("/v1/hosts/{host}/drain"), None)?,
            |v| println!("host {} drained: no new slices on its GPUs", s(&v["name"])),
        ),
        Cmd::Undrain { host } => (
            api.call("POST", &format!("/v1/hosts/{host}/undrain"), None)?,
            |v| println!("host {} schedulable again", s(&v["name"])),
        ),
        Cmd::HostToken { host } => (
            api.call("POST", "/v1/agents/enroll", Some(json!({ "host": host })))?,
            |v| println!("{}", s(&v["token"])),
        ),
        Cmd::Projects => (api.call("GET", "/v1/projects", None)?, |v| {
            let rows = rows_of(v, |p| {
                vec![
                    s(&p["name"]),
                    format!(
                        "{} / {}",
                        s(&p["usage"]["allocations"]),
                        s(&p["quota"]["max_allocations"])
                    ),
                    format!(
                        "{} / {}",
                        human_bytes(p["usage"]["memory_bytes"].as_u64().unwrap_or(0)),
                        p["quota"]["max_memory_bytes"]
                            .as_u64()
                            .map(human_bytes)
                            .unwrap_or_else(|| "-".into())
                    ),
                    format!("{} / {}", s(&p["usage"]["sm"]), s(&p["quota"]["max_sm"])),
                ]
            });
            table(&["PROJECT", "ALLOCS (USED / QUOTA)", "MEMORY", "SMS"], rows);
        }),
        Cmd::Completion { .. } | Cmd::Man => unreachable!("answered above"),
        Cmd::ProjectCreate {
            name,
            max_allocations,
            max_memory,
            max_sm,
        } => {
            let mem = max_memory
                .map(|m| parse_size(&m))
                .transpose()
                .map_err(CliError::BadSize)?;
            let body = json!({"name": name, "quota": {"max_allocations": max_allocations, "max_memory_bytes": mem, "max_sm": max_sm}});
            (api.call("POST", "/v1/projects", Some(body))?, |v| {
                println!(
                    "project {} created; its token (shown once):\n{}",
                    s(&v["name"]),
                    s(&v["token"])
                );
            })
        }
        Cmd::GpuSet {
            uuid,
            slice_mode,
            oversubscription,
            health,
        } => {
            let body = json!({"slice_mode": slice_mode, "oversubscription_ratio": oversubscription, "health": health});
            (
                api.call("PATCH", &format!("/v1/gpus/{uuid}"), Some(body))?,
                |v| {
                    println!(
                        "GPU {}: mode {}, oversubscription {}, health {}",
                        s(&v["uuid"]),
                        s(&v["slice_mode"]),
                        s(&v["oversubscription_ratio"]),
                        s(&v["health"])
                    );
                },
            )
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Output::Yaml => print!("{}", serde_norway::to_string(&v).map_err(CliError::Yaml)?),
        Output::Table | Output::Wide => printer(&v),
    }
    Ok(())
}

fn this_host(lv: &LibvirtOpts) -> String {
    lv.host.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    })
}

/// The allocation a domain holds: `vm` is its UUID (Nova's instances, `attach`) or its name.
fn slice_of(api: &Api, names: &[&str]) -> Result<Option<Value>, CliError> {
    let all = api.call("GET", "/v1/allocations", None)?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| names.iter().any(|n| a["vm"].as_str() == Some(n)))
        .cloned())
}

/// Find (or make) the domain's slice, wait for its worker, hot-plug it.
fn attach(
    api: &Api,
    lv: &LibvirtOpts,
    domain: &str,
    slice: Option<Value>,
    wait: Duration,
) -> Result<Value, CliError> {
    let virsh = vgpu_controller::libvirt::Virsh {
        uri: lv.libvirt_uri.clone(),
    };
    let t0 = std::time::Instant::now();
    let uuid = virsh.domuuid(domain)?;
    let name = virsh.domname(&uuid)?;
    let mut a = slice_of(api, &[uuid.as_str(), name.as_str()])?;
    if a.is_none() {
        if let Some(slice) = slice {
            let body = json!({"vm": uuid, "host": this_host(lv), "slice": slice});
            a = Some(api.call("POST", "/v1/allocations", Some(body))?);
        } else {
            // the Placement sync may not have made it yet
            while a.is_none() && t0.elapsed() < wait {
                std::thread::sleep(Duration::from_millis(250));
                a = slice_of(api, &[uuid.as_str(), name.as_str()])?;
            }
        }
    }
    let a = a.ok_or_else(|| CliError::NoSliceFor(domain.to_string()))?;
    let id = s(&a["id"]);
    let mut cur = a;
    loop {
        let socket = s(&cur["socket_path"]);
        if cur["state"] == "running" && std::path::Path::new(&socket).exists() {
            break;
        }
        if t0.elapsed() > wait {
            return Err(CliError::NotReady {
                id,
                secs: wait.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
        cur = api.call("GET", &format!("/v1/allocations/{id}"), None)?;
    }
    let socket = s(&cur["socket_path"]);
    match virsh.attach(&name, &lv.id, &socket, lv.reconnect_ms)? {
        Some(took) => println!(
            "attached {} (allocation {id}, {socket}) to {name} ({uuid}): hot-plug {} ms, {} ms from the request",
            lv.id,
            took.as_millis(),
            t0.elapsed().as_millis()
        ),
        None => println!(
            "{} (allocation {id}) is plugged into {name} ({uuid}) already (by another attach): {} ms from the request",
            lv.id,
            t0.elapsed().as_millis()
        ),
    }
    Ok(cur)
}

/// Release the slices of a domain that are not Nova's (Placement holds those).
fn release_for(api: &Api, lv: &LibvirtOpts, names: &[&str]) -> Result<(), CliError> {
    while let Some(a) = slice_of(api, names)? {
        if a["project"].as_str() == Some(lv.openstack_project.as_str()) {
            println!(
                "kept {} of {}: an OpenStack instance's slice goes when Placement drops it",
                s(&a["id"]),
                s(&a["vm"])
            );
            return Ok(());
        }
        api.call("DELETE", &format!("/v1/allocations/{}", s(&a["id"])), None)?;
        println!("released {} of {}", s(&a["id"]), s(&a["vm"]));
    }
    Ok(())
}

/// `vgpuctl libvirt-watch`: attach at start, release at stop, for ever.
fn watch(api: &Api, lv: &LibvirtOpts, wait: Duration) -> Result<(), CliError> {
    use vgpu_controller::libvirt::{Lifecycle, Virsh, events};
    let virsh = Virsh {
        uri: lv.libvirt_uri.clone(),
    };
    // name -> uuid of the domains seen running (a transient domain's UUID is gone at stop)
    let mut uuids = std::collections::HashMap::new();
    let spawn_attach = |name: String| {
        let (api, lv) = (
            Api {
                url: api.url.clone(),
                token: api.token.clone(),
                agent: api.agent.clone(),
            },
            lv.clone(),
        );
        std::thread::spawn(move || {
            if let Err(e) = attach(&api, &lv, &name, None, wait) {
                eprintln!("vgpuctl: attach {name}: {}", vgpu_protocol::error_chain(&e));
            }
        });
    };
    // Every 5 s: a running domain whose slice exists but is not plugged (the slice came after
    // the attach gave up waiting, or an event was missed) is attached.
    {
        let (api, lv, virsh) = (
            Api {
                url: api.url.clone(),
                token: api.token.clone(),
                agent: api.agent.clone(),
            },
            lv.clone(),
            virsh.clone(),
        );
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                for name in virsh.running().unwrap_or_default() {
                    let Ok(uuid) = virsh.domuuid(&name) else {
                        continue;
                    };
                    let Ok(Some(a)) = slice_of(&api, &[uuid.as_str(), name.as_str()]) else {
                        continue;
                    };
                    if a["state"] != "running" || virsh.is_attached(&name, &lv.id).unwrap_or(true) {
                        continue;
                    }
                    if let Err(e) = attach(&api, &lv, &name, None, Duration::from_secs(5)) {
                        eprintln!("vgpuctl: attach {name}: {}", vgpu_protocol::error_chain(&e));
                    }
                }
            }
        });
    }
    loop {
        let mut child = virsh.watch()?;
        // domains already running (or started before the watch began)
        for name in virsh.running()? {
            if let Ok(u) = virsh.domuuid(&name) {
                uuids.insert(name.clone(), u);
            }
            match slice_of(api, &[uuids.get(&name).map_or("", |u| u.as_str()), &name]) {
                Ok(Some(_)) => spawn_attach(name),
                Ok(None) => {}
                Err(e) => eprintln!("vgpuctl: {}", vgpu_protocol::error_chain(&e)),
            }
        }
        for ev in events(&mut child) {
            match ev {
                Lifecycle::Started(name) => {
                    println!("domain {name} started");
                    if let Ok(u) = virsh.domuuid(&name) {
                        uuids.insert(name.clone(), u);
                    }
                    spawn_attach(name);
                }
                Lifecycle::Stopped(name) => {
                    println!("domain {name} stopped");
                    let uuid = uuids.remove(&name).unwrap_or_default();
                    if let Err(e) = release_for(api, lv, &[uuid.as_str(), name.as_str()]) {
                        eprintln!(
                            "vgpuctl: release {name}: {}",
                            vgpu_protocol::error_chain(&e)
                        );
                    }
                }
            }
        }
        let _ = child.wait();
        eprintln!("vgpuctl: libvirt event stream ended; reconnecting");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("vgpuctl: {}", vgpu_protocol::error_chain(&e));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}

//! seccomp-bpf confinement of `vhost-gpu`'s processes (issue 16; `docs/threat-model.md`).
//!
//! Two roles:
//! - the **front** ([`Role::Front`]) talks vhost-user to the VMM and parses the guest's
//!   descriptor chains, and never opens the GPU. Its filter is an *allowlist*: what a
//!   vhost-user backend needs (unix sockets with `SCM_RIGHTS`, epoll and eventfds, mapping
//!   guest memory, threads, futexes, its log and status file). Anything else kills the process
//!   ([`SeccompMode::Kill`]). It may create threads but no processes: no `fork`, no `clone`
//!   without `CLONE_THREAD`, no `execve`. A front that must start workers gets them from a
//!   process it forked *before* confining itself (see `docs/threat-model.md`, "front ->
//!   worker").
//! - a **worker** ([`Role::Worker`]) runs the CUDA driver and executes a guest's calls. NVIDIA's
//!   user-space driver is closed, large and version-dependent (ioctls on `/dev/nvidia*`, its own
//!   threads, `mmap` of device memory, `/proc` and `/sys` reads, sockets to the MPS daemon,
//!   forks of helpers), so an allowlist would break on the next driver release. Its filter is a
//!   *denylist* of what turns a compromised worker into a compromised host (running programs,
//!   reaching into other processes, namespaces and mounts, kernel modules, BPF, perf, the
//!   keyring, userfaultfd, ...), answered `EPERM` so that a driver that probes one keeps
//!   working.
//!
//! Under both, `clone3` is answered `ENOSYS` (its flags live in memory a filter cannot read;
//! glibc then falls back to `clone`, whose flags are checked), and `no_new_privs` is set.

mod filters;
pub mod spawner;
mod trap;

use std::{fmt, io, str::FromStr};

use seccompiler::BpfProgram;
use serde_json::json;
use thiserror::Error;

pub use seccompiler::TargetArch;

/// Which process is being confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The vhost-user front: allowlist, no GPU.
    Front,
    /// A process that runs the CUDA driver: denylist.
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Front => "front",
            Role::Worker => "worker",
        })
    }
}

/// What a filter does with a call it does not allow (`--seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Enforce: a front is killed (`SIGSYS`) on any call outside its allowlist; a worker's
    /// denied calls fail with `EPERM`.
    #[default]
    Kill,
    /// Allow, and have the kernel log the call (`SECCOMP_RET_LOG`: the audit log or `dmesg`).
    /// For finding what a new code path needs.
    Log,
    /// Deny with `SIGSYS`, caught: the call's number is printed on stderr and the call fails
    /// with `EPERM`. For finding what a code path needs where the kernel log cannot be read.
    Trap,
    /// No filter.
    Off,
}

impl SeccompMode {
    /// The names [`FromStr`] accepts.
    pub const NAMES: &'static [&'static str] = &["kill", "log", "trap", "off"];
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Kill => "kill",
            SeccompMode::Log => "log",
            SeccompMode::Trap => "trap",
            SeccompMode::Off => "off",
        })
    }
}

/// A `--seccomp` value that is not one of [`SeccompMode::NAMES`].
#[derive(Debug, Error, PartialEq, Eq)]
#[error("seccomp mode must be 'kill', 'log', 'trap' or 'off', not '{0}'")]
pub struct BadMode(pub String);

impl FromStr for SeccompMode {
    type Err = BadMode;

    fn from_str(s: &str) -> Result<Self, BadMode> {
        match s {
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "trap" => Ok(SeccompMode::Trap),
            "off" => Ok(SeccompMode::Off),
            other => Err(BadMode(other.to_string())),
        }
    }
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("seccomp filters are not built for this architecture")]
    UnsupportedArch,
    #[error("Could not build the {role} seccomp filter")]
    Compile {
        role: Role,
        #[source]
        source: seccompiler::Error,
    },
    #[error("Could not set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
    #[error("Could not install the SIGSYS handler")]
    TrapHandler(#[source] io::Error),
    #[error("Could not install the {role} seccomp filter")]
    Install {
        role: Role,
        #[source]
        source: seccompiler::Error,
    },
}

/// The architecture this program runs on, if the filters are built for it.
pub fn host_arch() -> Option<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Some(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(TargetArch::aarch64)
    } else {
        None
    }
}

/// Sets `PR_SET_NO_NEW_PRIVS`: from here on, `execve` cannot grant privileges (set-user-ID
/// programs, file capabilities), and an unprivileged process may install seccomp filters.
pub fn no_new_privs() -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only; it reads and writes no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(Error::NoNewPrivs(io::Error::last_os_error()));
    }
    Ok(())
}

/// The BPF programs of `role` in `mode` for `arch`, in the order they are installed: the
/// process guard, then the role's filter. Empty for [`SeccompMode::Off`]. `pid` is the
/// process the front filter is for (it may signal only itself).
pub fn programs(
    role: Role,
    mode: SeccompMode,
    arch: TargetArch,
    pid: u32,
) -> Result<Vec<BpfProgram>, Error> {
    if mode == SeccompMode::Off {
        return Ok(Vec::new());
    }
    let deny = match mode {
        SeccompMode::Kill => json!("kill_process"),
        SeccompMode::Log => json!("log"),
        SeccompMode::Trap => json!("trap"),
        SeccompMode::Off => unreachable!("handled above"),
    };
    let role_filter = match role {
        Role::Front => json!({
            "mismatch_action": deny,
            "match_action": "allow",
            "filter": filters::front_rules(arch, pid),
        }),
        Role::Worker => json!({
            "mismatch_action": "allow",
            // A worker's denied calls fail: the driver keeps running.
            "match_action": if mode == SeccompMode::Kill { json!({ "errno": libc::EPERM }) } else { deny },
            "filter": filters::worker_rules(arch),
        }),
    };
    let guard = json!({
        "mismatch_action": "allow",
        "match_action": { "errno": libc::ENOSYS },
        "filter": filters::guard_rules(),
    });
    let mut out = Vec::with_capacity(2);
    for (name, filter) in [("guard", guard), ("role", role_filter)] {
        let text = json!({ name: filter }).to_string();
        let mut map = seccompiler::compile_from_json(text.as_bytes(), arch)
            .map_err(|source| Error::Compile { role, source })?;
        out.push(
            map.remove(name)
                .expect("the compiler returns every filter it was given"),
        );
    }
    Ok(out)
}

/// Confines the calling process (all its threads) as `role`: sets `no_new_privs` and installs
/// the filters of `mode` (nothing for [`SeccompMode::Off`]). Filters cannot be removed; apply
/// them once the process has done what only its setup needs (opening sockets, forking the
/// processes it will need).
pub fn apply(role: Role, mode: SeccompMode) -> Result<(), Error> {
    if mode == SeccompMode::Off {
        log::warn!("seccomp: the {role} runs unconfined (--seccomp off)");
        return Ok(());
    }
    let arch = host_arch().ok_or(Error::UnsupportedArch)?;
    let programs = programs(role, mode, arch, std::process::id())?;
    no_new_privs()?;
    if mode == SeccompMode::Trap {
        trap::install().map_err(Error::TrapHandler)?;
    }
    for program in &programs {
        seccompiler::apply_filter_all_threads(program)
            .map_err(|source| Error::Install { role, source })?;
    }
    log::info!("seccomp: the {role} is confined ({mode})");
    Ok(())
}

/// Confines a vhost-user front: see [`Role::Front`].
pub fn confine_front(mode: SeccompMode) -> Result<(), Error> {
    apply(Role::Front, mode)
}

/// Confines a process that runs the CUDA driver: see [`Role::Worker`].
pub fn confine_worker(mode: SeccompMode) -> Result<(), Error> {
    apply(Role::Worker, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for name in SeccompMode::NAMES {
            let mode: SeccompMode = name.parse().unwrap();
            assert_eq!(mode.to_string(), *name);
        }
        assert_eq!("kill".parse(), Ok(SeccompMode::Kill));
        assert_eq!("off".parse(), Ok(SeccompMode::Off));
        assert_eq!(
            "KILL".parse::<SeccompMode>(),
            Err(BadMode("KILL".to_string()))
        );
        assert_eq!(SeccompMode::default(), SeccompMode::Kill);
    }

    /// Every filter builds for both architectures (a name one of them lacks would fail here),
    /// and fits the kernel's 4096-instruction limit.
    #[test]
    fn every_filter_compiles_for_x86_64_and_aarch64() {
        for arch in [TargetArch::x86_64, TargetArch::aarch64] {
            for role in [Role::Front, Role::Worker] {
                for mode in [SeccompMode::Kill, SeccompMode::Log, SeccompMode::Trap] {
                    let p = programs(role, mode, arch, 4242)
                        .unwrap_or_else(|e| panic!("{role} {mode} {arch:?}: {e:?}"));
                    assert_eq!(p.len(), 2);
                    for prog in &p {
                        assert!(!prog.is_empty() && prog.len() < 4096, "{}", prog.len());
                    }
                }
                assert!(
                    programs(role, SeccompMode::Off, arch, 1)
                        .unwrap()
                        .is_empty()
                );
            }
        }
    }

    /// The two architectures number calls differently: the programs must differ (a filter
    /// built with one table for both would not).
    #[test]
    fn architectures_get_their_own_numbers() {
        let x = programs(Role::Front, SeccompMode::Kill, TargetArch::x86_64, 1).unwrap();
        let a = programs(Role::Front, SeccompMode::Kill, TargetArch::aarch64, 1).unwrap();
        assert_ne!(x[1], a[1]);
    }

    #[test]
    fn front_filter_is_for_its_own_pid() {
        let p1 = programs(Role::Front, SeccompMode::Kill, TargetArch::x86_64, 1).unwrap();
        let p2 = programs(Role::Front, SeccompMode::Kill, TargetArch::x86_64, 2).unwrap();
        assert_ne!(p1[1], p2[1]);
    }
}

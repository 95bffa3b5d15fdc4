//! Starting worker processes from a confined front.
//!
//! The front filter forbids creating processes (no `fork`, no `clone` without `CLONE_THREAD`,
//! no `execve`), so a front gets its workers from a *spawner*: a process it starts before it
//! confines itself, running this program afresh ([`serve_if_spawner`] at the top of `main`).
//! The front asks for a worker over a unix socket ([`Spawner::spawn`]) with more arguments,
//! extra environment and file descriptors; the spawner starts this same program with *its own
//! arguments* followed by those, and answers with the worker's pid. So a front that turns
//! hostile can start nothing but the spawner's own program and command line (for example
//! `vhost-gpu worker`), with arguments appended that the worker's parser checks.
//!
//! Workers get the descriptors as 3, 4, ..., `/dev/null` as stdin (never the spawner's socket)
//! and the spawner's stdout and stderr (the daemon's log). They are killed when the spawner
//! ends (`PR_SET_PDEATHSIG`), and the spawner ends when the front closes its socket (or dies).
//! The spawner reaps its workers. It sets `no_new_privs`, so neither it nor a worker can gain
//! privileges through `execve`.

use std::{
    ffi::OsString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            net::UnixStream,
            process::CommandExt,
        },
    },
    process::{Command, Stdio},
    sync::Mutex,
};

use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Set (to anything) in the environment of a process started as a spawner.
const SPAWNER_ENV: &str = "VGPU_SECCOMP_SPAWNER";
/// Most descriptors one worker may be given.
pub const MAX_FDS: usize = 16;
/// Largest request (arguments and environment).
const MAX_REQUEST: usize = 64 << 10;
/// Received descriptors are moved at or above this number before a worker is started, so that
/// placing them at 3.. never overwrites one another.
const PARK_FDS_AT: RawFd = 64;

#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("Could not start the spawner")]
    Start(#[source] io::Error),
    #[error("at most {MAX_FDS} descriptors per worker, not {0}")]
    TooManyFds(usize),
    #[error("the worker's arguments and environment exceed {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("Could not reach the spawner")]
    Channel(#[source] io::Error),
    #[error("The spawner has gone away")]
    Gone,
    #[error("The spawner could not start the worker")]
    Worker(#[source] io::Error),
}

/// The front's end of a spawner.
#[derive(Debug)]
pub struct Spawner {
    channel: Mutex<UnixStream>,
    pid: u32,
}

impl Spawner {
    /// Starts a spawner running `program` (normally this program with the arguments every
    /// worker starts with: `Command::new(std::env::current_exe()?).arg("worker")`; its `main`
    /// calls [`serve_if_spawner`] first). Call before confining the front.
    pub fn start(mut program: Command) -> Result<Self, SpawnError> {
        let (ours, theirs) = seqpacket_pair().map_err(SpawnError::Start)?;
        let child = program
            .env(SPAWNER_ENV, "1")
            .stdin(Stdio::from(theirs))
            .spawn()
            .map_err(SpawnError::Start)?;
        Ok(Self {
            channel: Mutex::new(UnixStream::from(ours)),
            pid: child.id(),
        })
    }

    /// The spawner's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Starts a worker: the spawner's program and arguments followed by `args`, with `env`
    /// added to the spawner's environment, and `fds` as descriptors 3, 4, ...; returns its pid.
    pub fn spawn(
        &self,
        args: &[OsString],
        env: &[(OsString, OsString)],
        fds: &[BorrowedFd<'_>],
    ) -> Result<u32, SpawnError> {
        if fds.len() > MAX_FDS {
            return Err(SpawnError::TooManyFds(fds.len()));
        }
        let request = encode(args, env);
        if request.len() > MAX_REQUEST {
            return Err(SpawnError::TooLarge);
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let channel = self
            .channel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        channel
            .send_with_fds(&[&request[..]], &raw)
            .map_err(|e| SpawnError::Channel(io::Error::from_raw_os_error(e.errno())))?;
        let mut reply = [0u8; 8];
        // SAFETY: MSG_* semantics on a seqpacket socket we own; reads into a local buffer.
        let n = unsafe { libc::recv(channel.as_raw_fd(), reply.as_mut_ptr().cast(), 8, 0) };
        match n {
            8 => {}
            0 => return Err(SpawnError::Gone),
            n if n < 0 => return Err(SpawnError::Channel(io::Error::last_os_error())),
            _ => return Err(SpawnError::Gone),
        }
        let answer = i64::from_le_bytes(reply);
        if answer > 0 {
            Ok(answer as u32)
        } else {
            Err(SpawnError::Worker(io::Error::from_raw_os_error(
                (-answer) as i32,
            )))
        }
    }
}

/// If this process was started by [`Spawner::start`], serves the front until it closes its
/// socket, then exits; otherwise returns at once. Call it first in `main`, before anything
/// else (logging, threads, filters).
pub fn serve_if_spawner() {
    if std::env::var_os(SPAWNER_ENV).is_none() {
        return;
    }
    // SAFETY: unsets a variable while this process has only its main thread.
    unsafe { std::env::remove_var(SPAWNER_ENV) };
    let code = match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vgpu-seccomp spawner: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn serve() -> io::Result<()> {
    crate::no_new_privs().map_err(io::Error::other)?;
    let program = std::env::current_exe()?;
    let prefix: Vec<OsString> = std::env::args_os().skip(1).collect();
    // SAFETY: fd 0 is the socket Spawner::start gave us as stdin; we take ownership of it.
    let channel = UnixStream::from(unsafe { OwnedFd::from_raw_fd(0) });
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        reap();
        let mut pfd = libc::pollfd {
            fd: channel.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one descriptor we own.
        if unsafe { libc::poll(&raw mut pfd, 1, 1000) } <= 0 {
            continue;
        }
        let mut raw = [-1; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points into `buf`, which may take any bytes.
        let (n, nfds) = match unsafe { channel.recv_with_fds(&mut iov, &mut raw) } {
            Ok(r) => r,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        };
        // Park the received descriptors high and close-on-exec (they arrive inheritable).
        let mut parked = Vec::with_capacity(nfds);
        for &fd in &raw[..nfds] {
            // SAFETY: recvmsg just gave us this descriptor; we own it from here on.
            let got = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: duplicates a descriptor we own.
            let high = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PARK_FDS_AT) };
            if high < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fcntl returned a new descriptor that we own.
            parked.push(unsafe { OwnedFd::from_raw_fd(high) });
        }
        if n == 0 && nfds == 0 {
            // The front closed its end.
            return Ok(());
        }
        let answer = match decode(&buf[..n]) {
            Some((args, env)) if n <= MAX_REQUEST => {
                start_worker(&program, &prefix, args, env, &parked)
            }
            _ => -i64::from(libc::EINVAL),
        };
        drop(parked);
        // SAFETY: sends 8 bytes of a local on a socket we own.
        unsafe {
            libc::send(
                channel.as_raw_fd(),
                answer.to_le_bytes().as_ptr().cast(),
                8,
                libc::MSG_NOSIGNAL,
            )
        };
    }
}

/// Starts one worker; its pid, or minus the errno.
fn start_worker(
    program: &std::path::Path,
    prefix: &[OsString],
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    fds: &[OwnedFd],
) -> i64 {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut cmd = Command::new(program);
    cmd.args(prefix).args(args).envs(env).stdin(Stdio::null());
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, dup2) on
    // descriptors this process holds open until the child has started.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            for (i, &fd) in raw.iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    match cmd.spawn() {
        Ok(child) => i64::from(child.id()),
        Err(e) => -i64::from(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Collects exited workers.
fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: waits for any child without blocking; `status` is a local.
        if unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut sv = [0; 2];
    // SAFETY: `sv` has room for the two descriptors.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair just returned these descriptors; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
}

/// `nargs` and `nenv` (u32 LE each), then NUL-terminated arguments and `KEY=VALUE` pairs.
fn encode(args: &[OsString], env: &[(OsString, OsString)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(args.len() as u32).to_le_bytes());
    out.extend_from_slice(&(env.len() as u32).to_le_bytes());
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    for (k, v) in env {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

type Request = (Vec<OsString>, Vec<(OsString, OsString)>);

fn decode(bytes: &[u8]) -> Option<Request> {
    let nargs = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let nenv = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
    let body = bytes.get(8..)?;
    let mut parts: Vec<&[u8]> = if body.is_empty() {
        Vec::new()
    } else {
        // Every string ends with NUL.
        body.strip_suffix(&[0])?.split(|&b| b == 0).collect()
    };
    if parts.len() != nargs.checked_add(nenv)? {
        return None;
    }
    let env = parts.split_off(nargs);
    let args = parts
        .into_iter()
        .map(|p| OsString::from_vec(p.to_vec()))
        .collect();
    let env = env
        .into_iter()
        .map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=').filter(|&i| i > 0)?;
            Some((
                OsString::from_vec(kv[..eq].to_vec()),
                OsString::from_vec(kv[eq + 1..].to_vec()),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((args, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_malformed_ones_are_refused() {
        let args: Vec<OsString> = vec!["worker".into(), "--client".into(), "7".into()];
        let env: Vec<(OsString, OsString)> = vec![("RUST_LOG".into(), "info=x".into())];
        assert_eq!(decode(&encode(&args, &env)), Some((args.clone(), env)));
        assert_eq!(decode(&encode(&[], &[])), Some((Vec::new(), Vec::new())));
        let good = encode(&args, &[]);
        // A count that does not match the strings, a missing terminator, a short header.
        let mut wrong = good.clone();
        wrong[0] = 4;
        assert_eq!(decode(&wrong), None);
        assert_eq!(decode(&good[..good.len() - 1]), None);
        assert_eq!(decode(&good[..5]), None);
        // An environment entry without '='.
        let mut bad_env = 0u32.to_le_bytes().to_vec();
        bad_env.extend_from_slice(&1u32.to_le_bytes());
        bad_env.extend_from_slice(b"NOEQUALS\0");
        assert_eq!(decode(&bad_env), None);
    }
}

//! One host process per guest client.
//!
//! The CUDA contexts of one process share one GPU address space, so a kernel given another
//! context's pointer reads that memory. To keep tenants apart as the native driver keeps
//! processes apart, the daemon's front (the process that speaks vhost-user and parses
//! descriptor chains; it never opens the GPU) starts a *worker* process for every guest
//! client it sees: a VM's process through `/dev/vgpuN`, or a virtio-user process. The worker
//! maps the frontend's guest memory from the file descriptors the VMM shared, opens the GPU,
//! and runs that client's messages straight out of guest memory. The front keeps the slice's
//! memory ledger for all of them, so the limit holds across processes: a worker reserves
//! every charge with the front before it takes it, and reports what it holds after each
//! message.
//!
//! Front and worker talk over a Unix stream socket (the worker's fd 3) in frames of
//! `kind: u32, len: u32` followed by `len` bytes, little-endian.

use std::{
    collections::HashMap,
    ffi::OsString,
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, RawFd},
        unix::{net::UnixStream, process::CommandExt},
    },
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use log::{info, warn};
use thiserror::Error;
use vgpu_executor::{DataStream, Executor, Freed, Outcome, SharedLedger, gpu::HostSeg};
use vgpu_protocol::{CuResult, MsgHeader, ReplyWriter, flags};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use zerocopy::FromBytes;

use crate::config::Config;

/// The environment variable that makes `vhost-gpu` a worker; its value is the socket's fd.
pub const WORKER_FD_ENV: &str = "VGPU_WORKER_FD";
/// The frontend whose client a worker serves (so its logs name clients as the front does).
const WORKER_NAMESPACE_ENV: &str = "VGPU_WORKER_NAMESPACE";
/// The fd a worker finds its socket on.
const WORKER_FD: RawFd = 3;
/// `CUDA_ERROR_DEVICE_UNAVAILABLE`: a client whose worker could not start or died.
const DEVICE_UNAVAILABLE: CuResult = CuResult(46);
/// Longest frame either side accepts: a message (16 MiB at most) and its segment list.
const MAX_FRAME: usize = (16 << 20) + (1 << 20);
/// How long a new worker may take to open the GPU.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a worker may take to free everything when its client goes away.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

mod kind {
    // front -> worker
    pub const MEMORY: u32 = 1;
    pub const RUN: u32 = 2;
    pub const RESERVE_ANSWER: u32 = 3;
    pub const USED_ANSWER: u32 = 4;
    pub const CLOSE: u32 = 5;
    // worker -> front
    pub const READY: u32 = 10;
    pub const RESERVE: u32 = 11;
    pub const USED: u32 = 12;
    pub const REPLY: u32 = 13;
    pub const CLOSED: u32 = 14;
}

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("Could not start a worker process")]
    Spawn(#[source] io::Error),
    #[error("Worker connection failed")]
    Io(#[source] io::Error),
    #[error("Worker sent frame kind {0} where {1} was expected")]
    Unexpected(u32, &'static str),
    #[error("Worker frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("Worker frame is malformed")]
    Malformed,
    #[error(
        "Guest memory region {index} ({len} bytes at file offset {offset}) is larger than its file ({file_len} bytes)"
    )]
    ShortFile {
        index: usize,
        len: u64,
        offset: u64,
        file_len: u64,
    },
    #[error("Guest memory region {0} has no file behind it")]
    NoFile(usize),
    #[error(
        "Guest memory region {0} can be cut short under the device (not a memfd sealed against shrinking; see --allow-unsealed-memory)"
    )]
    Unsealed(usize),
    #[error("{WORKER_FD_ENV} is not set to the worker socket's fd")]
    NoSocket,
    #[error("Could not map guest memory")]
    Map(#[source] io::Error),
}

/// How long a side waiting for the other's next frame polls before it sleeps: a synchronous
/// call's round trip through the worker then costs no wake-up of a sleeping thread on either
/// side (the hop cost 21 us per synchronous call on the H200 machine when both sides slept).
const SPIN: Duration = Duration::from_micros(100);

/// Sends one frame with one system call (`writev`), so the reader never wakes for a header
/// whose body has not arrived.
fn write_frame(sock: &mut UnixStream, kind: u32, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&kind.to_le_bytes());
    head[4..].copy_from_slice(&(len as u32).to_le_bytes());
    // No allocation per frame: every frame has a header and at most three parts.
    let mut slices = [io::IoSlice::new(&[]); 4];
    slices[0] = io::IoSlice::new(&head);
    for (slot, part) in slices[1..].iter_mut().zip(parts) {
        *slot = io::IoSlice::new(part);
    }
    debug_assert!(
        parts.len() < slices.len(),
        "a frame of {} parts",
        parts.len()
    );
    let mut bufs = &mut slices[..=parts.len().min(3)];
    while !bufs.is_empty() {
        match sock.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Polls `sock` for up to [`SPIN`] until a byte (or the end) can be read without waiting.
fn spin_until_readable(sock: &UnixStream) {
    let start = Instant::now();
    let mut byte = 0u8;
    while start.elapsed() < SPIN {
        // SAFETY: peeks at most one byte into a local; the descriptor is this socket's.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
            return;
        }
        // Yields rather than spins: on a loaded host the other side gets the CPU it needs.
        std::thread::yield_now();
    }
}

fn read_frame(sock: &mut UnixStream, body: &mut Vec<u8>) -> Result<u32, WorkerError> {
    spin_until_readable(sock);
    let mut head = [0u8; 8];
    sock.read_exact(&mut head).map_err(WorkerError::Io)?;
    let kind = u32::from_le_bytes(head[..4].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(head[4..].try_into().unwrap_or_default()) as usize;
    if len > MAX_FRAME {
        return Err(WorkerError::TooLong(len));
    }
    body.clear();
    body.resize(len, 0);
    sock.read_exact(body).map_err(WorkerError::Io)?;
    Ok(kind)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, WorkerError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(WorkerError::Malformed)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, WorkerError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(WorkerError::Malformed)
}

/// The slice's memory ledger and client count, kept by the front for every worker of every
/// frontend of this daemon.
#[derive(Debug)]
pub struct SliceLedger {
    limit: Option<u64>,
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    used: u64,
    clients: usize,
}

impl SliceLedger {
    pub fn new(limit: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes every client of the slice holds.
    pub fn used(&self) -> u64 {
        self.state().used
    }

    /// Guest clients with a live worker.
    pub fn clients(&self) -> usize {
        self.state().clients
    }

    fn reserve(&self, charged: &mut u64, bytes: u64) -> bool {
        let mut s = self.state();
        let Some(total) = s.used.checked_add(bytes) else {
            return false;
        };
        if self.limit.is_some_and(|l| total > l) {
            return false;
        }
        s.used = total;
        *charged += bytes;
        true
    }

    /// A worker that held `charged` now holds `now` (it never holds more than it reserved).
    fn settle(&self, charged: &mut u64, now: u64) {
        let now = now.min(*charged);
        let mut s = self.state();
        s.used = s.used.saturating_sub(*charged - now);
        *charged = now;
    }
}

/// A region of the frontend's guest memory as the front maps it, and the file behind it.
struct Region {
    base: usize,
    len: usize,
    file: File,
    offset: u64,
}

struct Worker {
    proc: WorkerProc,
    sock: UnixStream,
    account: Arc<Account>,
}

/// A worker process: our child, or the spawner's (a confined front cannot fork).
enum WorkerProc {
    Child(Child),
    /// Started and reaped by the spawner; it exits when its socket closes, and dies with the
    /// spawner, which dies with the front.
    Spawned(u32),
}

impl WorkerProc {
    fn id(&self) -> u32 {
        match self {
            WorkerProc::Child(c) => c.id(),
            WorkerProc::Spawned(pid) => *pid,
        }
    }

    /// Ends the process (its socket is already shut down, which ends a spawned worker).
    fn end(&mut self) {
        if let WorkerProc::Child(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exited(&mut self, account: &Account) -> bool {
        match self {
            WorkerProc::Child(c) => matches!(c.try_wait(), Ok(Some(_))),
            WorkerProc::Spawned(_) => account.state().gone,
        }
    }
}

/// A worker started ahead of its client, still opening the GPU.
struct Pending {
    proc: WorkerProc,
    sock: UnixStream,
    started: Instant,
}

impl Pending {
    fn discard(mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.proc.end();
    }
}

/// What a worker holds of the slice. A worker that dies gives it back at once (its watcher
/// sees the socket hang up), not when its client next calls.
struct Account {
    ledger: Arc<SliceLedger>,
    state: Mutex<AccountState>,
}

#[derive(Default)]
struct AccountState {
    /// Bytes this worker reserved and still holds.
    charged: u64,
    gone: bool,
}

impl Account {
    fn state(&self) -> std::sync::MutexGuard<'_, AccountState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reserve(&self, bytes: u64) -> bool {
        let mut a = self.state();
        !a.gone && self.ledger.reserve(&mut a.charged, bytes)
    }

    fn settle(&self, now: u64) {
        let mut a = self.state();
        if !a.gone {
            self.ledger.settle(&mut a.charged, now);
        }
    }

    /// The worker is gone: everything it held leaves the ledger (once).
    fn retire(&self) {
        let mut a = self.state();
        if !a.gone {
            a.gone = true;
            self.ledger.settle(&mut a.charged, 0);
            let mut s = self.ledger.state();
            s.clients = s.clients.saturating_sub(1);
        }
    }
}

/// Waits for the worker's end of `sock` to close, then retires its account.
fn watch(sock: &UnixStream, account: Arc<Account>) -> io::Result<()> {
    let sock = sock.try_clone()?;
    std::thread::Builder::new()
        .name("worker-watch".into())
        .spawn(move || {
            let mut fd = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd for a descriptor this thread owns.
                let n = unsafe { libc::poll(&raw mut fd, 1, -1) };
                if n > 0 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                    break;
                }
                if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            account.retire();
        })?;
    Ok(())
}

/// The workers of one frontend: one per guest client, started on its first message.
pub struct Workers {
    exe: PathBuf,
    args: Vec<OsString>,
    namespace: u32,
    max_clients: usize,
    ledger: Arc<SliceLedger>,
    workers: HashMap<u32, Worker>,
    /// Starts workers for a confined front (None: this process forks them itself).
    spawner: Option<Arc<vgpu_seccomp::spawner::Spawner>>,
    /// A worker started before its client arrives (see [`Workers::spawn`]).
    spare: Option<Pending>,
    prestart: bool,
    clients_seen: usize,
    regions: Vec<Region>,
    frame: Vec<u8>,
    segs: Vec<u8>,
}

/// How a worker process is started: the daemon's own executable and arguments.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// This process, started again with the arguments it was given.
    pub fn current() -> io::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

impl Workers {
    pub fn new(
        command: WorkerCommand,
        namespace: u32,
        max_clients: usize,
        prestart: bool,
        ledger: Arc<SliceLedger>,
        spawner: Option<Arc<vgpu_seccomp::spawner::Spawner>>,
    ) -> Self {
        Self {
            spawner,
            spare: None,
            prestart,
            clients_seen: 0,
            exe: command.exe,
            args: command.args,
            namespace,
            max_clients,
            ledger,
            workers: HashMap::new(),
            regions: Vec::new(),
            frame: Vec::new(),
            segs: Vec::new(),
        }
    }

    /// The frontend's guest memory changed: check every region against its file (a region
    /// larger than its file would raise SIGBUS on access), then hand the new table to every
    /// worker. On error nothing changes and the caller must stop using the table.
    pub fn set_memory(
        &mut self,
        regions: &[(usize, usize, &File, u64)],
    ) -> Result<(), WorkerError> {
        let mut checked = Vec::with_capacity(regions.len());
        for &(base, len, file, offset) in regions {
            checked.push(Region {
                base,
                len,
                file: file.try_clone().map_err(WorkerError::Io)?,
                offset,
            });
        }
        self.regions = checked;
        // Every frontend has a first client: start its worker as soon as the memory is known.
        if self.prestart && self.clients_seen == 0 {
            self.prestart_spare();
        }
        let ids: Vec<u32> = self.workers.keys().copied().collect();
        for id in ids {
            let sent = match self.workers.get_mut(&id) {
                Some(w) => send_memory(&mut w.sock, &self.regions),
                None => continue,
            };
            if let Err(e) = sent {
                warn!("client {}:{id}: worker lost: {e}", self.namespace);
                self.drop_worker(id);
            }
        }
        Ok(())
    }

    /// Runs one message: routes it to its client's worker, starting one if needed.
    pub fn execute(
        &mut self,
        msg: &[u8],
        data_in: &[HostSeg],
        data_out: &[HostSeg],
        reply: &mut Vec<u8>,
    ) -> Outcome {
        let Ok((hdr, _)) = MsgHeader::read_from_prefix(msg) else {
            return error_reply(msg, CuResult::INVALID_VALUE, reply);
        };
        let client = hdr.client.get();
        if hdr.flags.get() & flags::CLIENT_CLOSE != 0 {
            self.close(client);
            return Outcome {
                reply_len: 0,
                data_out_len: 0,
            };
        }
        if !self.workers.contains_key(&client) {
            if self.workers.len() >= self.max_clients {
                warn!(
                    "frontend {}: client {client} refused: {} clients is the limit",
                    self.namespace, self.max_clients
                );
                return error_reply(msg, CuResult::OUT_OF_MEMORY, reply);
            }
            match self.spawn(client) {
                Ok(w) => {
                    self.workers.insert(client, w);
                }
                Err(e) => {
                    warn!(
                        "client {}:{client}: {}",
                        self.namespace,
                        crate::error_chain(&e)
                    );
                    return error_reply(msg, DEVICE_UNAVAILABLE, reply);
                }
            }
        }
        match self.run_on_worker(client, msg, data_in, data_out, reply) {
            Ok(outcome) => outcome,
            Err(e) => {
                warn!(
                    "client {}:{client}: worker lost: {}",
                    self.namespace,
                    crate::error_chain(&e)
                );
                self.drop_worker(client);
                error_reply(msg, DEVICE_UNAVAILABLE, reply)
            }
        }
    }

    fn run_on_worker(
        &mut self,
        client: u32,
        msg: &[u8],
        data_in: &[HostSeg],
        data_out: &[HostSeg],
        reply: &mut Vec<u8>,
    ) -> Result<Outcome, WorkerError> {
        self.segs.clear();
        let mut head = [0u8; 16];
        head[..4].copy_from_slice(&(msg.len() as u32).to_le_bytes());
        head[4..8].copy_from_slice(&(data_in.len() as u32).to_le_bytes());
        head[8..12].copy_from_slice(&(data_out.len() as u32).to_le_bytes());
        for seg in data_in.iter().chain(data_out) {
            let (index, offset) = locate(&self.regions, seg).ok_or(WorkerError::Malformed)?;
            self.segs.extend_from_slice(&(index as u64).to_le_bytes());
            self.segs.extend_from_slice(&offset.to_le_bytes());
            self.segs.extend_from_slice(&(seg.len as u64).to_le_bytes());
        }
        let w = self
            .workers
            .get_mut(&client)
            .ok_or(WorkerError::Malformed)?;
        write_frame(&mut w.sock, kind::RUN, &[&head, &self.segs, msg]).map_err(WorkerError::Io)?;
        loop {
            match read_frame(&mut w.sock, &mut self.frame)? {
                kind::RESERVE => {
                    let bytes = u64_at(&self.frame, 0)?;
                    let ok = w.account.reserve(bytes);
                    write_frame(&mut w.sock, kind::RESERVE_ANSWER, &[&[u8::from(ok)]])
                        .map_err(WorkerError::Io)?;
                }
                kind::USED => {
                    let used = self.ledger.used();
                    write_frame(&mut w.sock, kind::USED_ANSWER, &[&used.to_le_bytes()])
                        .map_err(WorkerError::Io)?;
                }
                kind::REPLY => {
                    let data_out_len = u64_at(&self.frame, 0)?;
                    let held = u64_at(&self.frame, 8)?;
                    w.account.settle(held);
                    let total_out: u64 = data_out.iter().map(|s| s.len as u64).sum();
                    if data_out_len > total_out {
                        return Err(WorkerError::Malformed);
                    }
                    reply.clear();
                    reply.extend_from_slice(&self.frame[16..]);
                    return Ok(Outcome {
                        reply_len: reply.len(),
                        data_out_len,
                    });
                }
                other => return Err(WorkerError::Unexpected(other, "a reply")),
            }
        }
    }

    /// A worker for a new client: the one started ahead if there is one, else a new one. The
    /// guest memory table goes to it now.
    fn spawn(&mut self, client: u32) -> Result<Worker, WorkerError> {
        let pending = match self.spare.take() {
            Some(p) => p,
            None => self.start()?,
        };
        let w = self.finish(pending, client)?;
        self.clients_seen += 1;
        // A frontend with several clients (a VM's processes) gets its next worker started
        // ahead, so CUDA's start-up is off the next client's first call.
        if self.prestart && self.clients_seen >= 2 {
            self.prestart_spare();
        }
        Ok(w)
    }

    /// Starts a spare worker if none waits (the frontend's memory is known: a client follows).
    fn prestart_spare(&mut self) {
        if self.spare.is_none() && !self.regions.is_empty() {
            match self.start() {
                Ok(p) => self.spare = Some(p),
                Err(e) => warn!(
                    "frontend {}: no spare worker: {}",
                    self.namespace,
                    crate::error_chain(&e)
                ),
            }
        }
    }

    /// Forks and executes a worker; it opens the GPU on its own while we go on.
    fn start(&mut self) -> Result<Pending, WorkerError> {
        let started = Instant::now();
        let (ours, theirs) = UnixStream::pair().map_err(WorkerError::Spawn)?;
        if let Some(spawner) = &self.spawner {
            let env = [
                (WORKER_FD_ENV.into(), WORKER_FD.to_string().into()),
                (
                    WORKER_NAMESPACE_ENV.into(),
                    self.namespace.to_string().into(),
                ),
            ];
            let pid = spawner
                .spawn(&[], &env, &[std::os::fd::AsFd::as_fd(&theirs)])
                .map_err(|e| WorkerError::Spawn(io::Error::other(e)))?;
            return Ok(Pending {
                proc: WorkerProc::Spawned(pid),
                sock: ours,
                started,
            });
        }
        let child_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .env(WORKER_FD_ENV, WORKER_FD.to_string())
            .env(WORKER_NAMESPACE_ENV, self.namespace.to_string())
            .stdin(Stdio::null());
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (dup2, close_range, prctl) on values computed before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(child_fd, WORKER_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Descriptors the VMM sent other frontends (their guest memory, their
                // eventfds) arrive without close-on-exec: a worker keeps only its stdio and
                // its socket.
                if libc::syscall(libc::SYS_close_range, WORKER_FD + 1, u32::MAX, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The worker dies with the front: it must never serve on alone.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_from_daemon_thread(cmd).map_err(WorkerError::Spawn)?;
        drop(theirs);
        Ok(Pending {
            proc: WorkerProc::Child(child),
            sock: ours,
            started,
        })
    }

    /// Waits until a started worker has opened the GPU, then gives it the memory table.
    fn finish(&mut self, pending: Pending, client: u32) -> Result<Worker, WorkerError> {
        let waited = Instant::now();
        let Pending {
            proc,
            sock,
            started,
        } = pending;
        let mut w = Worker {
            proc,
            sock,
            account: Arc::new(Account {
                ledger: self.ledger.clone(),
                state: Mutex::default(),
            }),
        };
        self.ledger.state().clients += 1;
        let ready = (|| {
            w.sock
                .set_read_timeout(Some(START_TIMEOUT))
                .map_err(WorkerError::Io)?;
            match read_frame(&mut w.sock, &mut self.frame)? {
                kind::READY => {}
                other => return Err(WorkerError::Unexpected(other, "ready")),
            }
            w.sock.set_read_timeout(None).map_err(WorkerError::Io)?;
            send_memory(&mut w.sock, &self.regions).map_err(WorkerError::Io)?;
            watch(&w.sock, w.account.clone()).map_err(WorkerError::Spawn)
        })();
        if let Err(e) = ready {
            let _ = w.sock.shutdown(std::net::Shutdown::Both);
            w.proc.end();
            w.account.retire();
            return Err(e);
        }
        info!(
            "client {}:{client}: worker process {} ready {} ms after its start, {} ms after the client's first call",
            self.namespace,
            w.proc.id(),
            started.elapsed().as_millis(),
            waited.elapsed().as_millis()
        );
        Ok(w)
    }

    /// The worker of `client` is gone or useless: stop it and give its memory back.
    fn drop_worker(&mut self, client: u32) {
        if let Some(mut w) = self.workers.remove(&client) {
            let _ = w.sock.shutdown(std::net::Shutdown::Both);
            w.proc.end();
            w.account.retire();
        }
    }

    /// The client went away: its worker frees everything and exits.
    fn close(&mut self, client: u32) -> Freed {
        let Some(w) = self.workers.get_mut(&client) else {
            return Freed::default();
        };
        let freed = (|| {
            w.sock
                .set_read_timeout(Some(CLOSE_TIMEOUT))
                .map_err(WorkerError::Io)?;
            write_frame(&mut w.sock, kind::CLOSE, &[]).map_err(WorkerError::Io)?;
            match read_frame(&mut w.sock, &mut self.frame)? {
                kind::CLOSED => Ok(Freed {
                    allocations: u64_at(&self.frame, 0)? as usize,
                    bytes: u64_at(&self.frame, 8)?,
                    objects: u64_at(&self.frame, 16)? as usize,
                }),
                other => Err(WorkerError::Unexpected(other, "closed")),
            }
        })();
        let freed = freed.unwrap_or_else(|e| {
            warn!(
                "client {}:{client}: worker did not close cleanly: {}",
                self.namespace,
                crate::error_chain(&e)
            );
            Freed::default()
        });
        if let Some(w) = self.workers.get_mut(&client) {
            // Reaped below; a worker that did not exit by now is killed.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if w.proc.exited(&w.account) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.drop_worker(client);
        freed
    }

    /// Every client of the frontend went away (it disconnected or reset its device).
    pub fn close_all(&mut self) -> Freed {
        let ids: Vec<u32> = self.workers.keys().copied().collect();
        let mut total = Freed::default();
        for id in ids {
            total += self.close(id);
        }
        total
    }

    /// Forgets the frontend's memory (it disconnected), and any spare worker.
    pub fn forget_memory(&mut self) {
        self.regions.clear();
        if let Some(p) = self.spare.take() {
            p.discard();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Some(p) = self.spare.take() {
            p.discard();
        }
        let ids: Vec<u32> = self.workers.keys().copied().collect();
        for id in ids {
            self.drop_worker(id);
        }
    }
}

/// Checks each guest memory region (host address, length, file, file offset) against its
/// file.
pub fn check_regions(
    regions: &[(usize, usize, &File, u64)],
    allow_unsealed: bool,
) -> Result<(), WorkerError> {
    for (index, &(_, len, file, offset)) in regions.iter().enumerate() {
        check_region_file(index, len as u64, file, offset)?;
        if !allow_unsealed && !sealed_against_shrinking(file) {
            return Err(WorkerError::Unsealed(index));
        }
    }
    Ok(())
}

/// Seals a memfd against shrinking (if it is not already) and says whether it now is: only
/// then can the checked size not change under a mapping.
fn sealed_against_shrinking(file: &File) -> bool {
    // SAFETY: fcntl on a descriptor we own, with integer arguments; failure is checked by
    // reading the seals back.
    let seals = unsafe {
        libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK);
        libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS)
    };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

type SpawnRequest = (Command, std::sync::mpsc::Sender<io::Result<Child>>);

/// Starts `cmd` from one thread that lives as long as the daemon. PR_SET_PDEATHSIG fires
/// when the thread that forked the child ends, not the process; the threads that serve a
/// frontend end when it disconnects, which would kill its workers before they could free
/// what their clients held.
fn spawn_from_daemon_thread(cmd: Command) -> io::Result<Child> {
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("worker-spawner".into())
            .spawn(move || {
                for (mut cmd, answer) in rx {
                    let _ = answer.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            warn!("no worker spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the worker spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the worker spawner thread is gone"))?
}

/// A region larger than the file behind it would fault (SIGBUS) where the file ends.
fn check_region_file(index: usize, len: u64, file: &File, offset: u64) -> Result<(), WorkerError> {
    let file_len = file.metadata().map_err(WorkerError::Io)?.len();
    let end = offset.checked_add(len);
    if end.is_none_or(|end| end > file_len) {
        return Err(WorkerError::ShortFile {
            index,
            len,
            offset,
            file_len,
        });
    }
    Ok(())
}

fn locate(regions: &[Region], seg: &HostSeg) -> Option<(usize, u64)> {
    let ptr = seg.ptr as usize;
    regions.iter().enumerate().find_map(|(i, r)| {
        let end = ptr.checked_add(seg.len)?;
        (ptr >= r.base && end <= r.base + r.len).then(|| (i, (ptr - r.base) as u64))
    })
}

fn send_memory(sock: &mut UnixStream, regions: &[Region]) -> io::Result<()> {
    write_frame(sock, kind::MEMORY, &[&(regions.len() as u32).to_le_bytes()])?;
    for r in regions {
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&(r.len as u64).to_le_bytes());
        rec[8..].copy_from_slice(&r.offset.to_le_bytes());
        let sent = sock
            .send_with_fd(&rec[..], r.file.as_raw_fd())
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if sent != rec.len() {
            sock.write_all(&rec[sent..])?;
        }
    }
    Ok(())
}

/// An error reply for a message no worker ran, where the message wants one and has room.
fn error_reply(msg: &[u8], result: CuResult, reply: &mut Vec<u8>) -> Outcome {
    let none = Outcome {
        reply_len: 0,
        data_out_len: 0,
    };
    let Ok((hdr, _)) = MsgHeader::read_from_prefix(msg) else {
        return none;
    };
    if hdr.magic.get() != vgpu_protocol::MAGIC || hdr.flags.get() & flags::WANT_REPLY == 0 {
        return none;
    }
    let mut w = ReplyWriter::new(reply);
    w.push_status(0, result.0);
    let n = w.finish(hdr.seq.get(), 0);
    if n > hdr.resp_cap.get() as usize {
        return none;
    }
    Outcome {
        reply_len: n,
        data_out_len: 0,
    }
}

// ---------------------------------------------------------------------------------------
// The worker process.

/// Guest memory as a worker maps it.
struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Bytes mapped before `ptr` to align the file offset down to a page.
    lead: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr - lead` and `len + lead` are exactly what mmap returned and covered.
        unsafe {
            libc::munmap(self.ptr.sub(self.lead).cast(), self.len + self.lead);
        }
    }
}

/// The front's side of the ledger, asked over the worker's socket.
struct FrontLedger {
    sock: UnixStream,
    frame: Vec<u8>,
}

impl FrontLedger {
    fn ask(&mut self, kind_out: u32, body: &[u8], kind_in: u32) -> Option<&[u8]> {
        write_frame(&mut self.sock, kind_out, &[body]).ok()?;
        match read_frame(&mut self.sock, &mut self.frame) {
            Ok(k) if k == kind_in => Some(&self.frame),
            _ => None,
        }
    }
}

impl SharedLedger for FrontLedger {
    fn reserve(&mut self, bytes: u64) -> bool {
        self.ask(kind::RESERVE, &bytes.to_le_bytes(), kind::RESERVE_ANSWER)
            .is_some_and(|b| b.first() == Some(&1))
    }

    fn slice_used(&mut self) -> u64 {
        self.ask(kind::USED, &[], kind::USED_ANSWER)
            .and_then(|b| u64_at(b, 0).ok())
            .unwrap_or(0)
    }
}

/// `vhost-gpu` started by a front as the worker of one guest client: serves that client's
/// messages until the front closes it or goes away.
pub fn worker_main(config: &Config) -> Result<(), crate::Error> {
    let fd: RawFd = std::env::var(WORKER_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(crate::Error::Worker(WorkerError::NoSocket))?;
    let namespace: u32 = std::env::var(WORKER_NAMESPACE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: the front passed this descriptor to us as our end of the worker socket; nothing
    // else in this process owns it.
    let mut sock = unsafe { UnixStream::from_raw_fd(fd) };
    let mut executor = crate::local_executor(config)?;
    // The GPU is open (opening it may restart this program for an MPS share): from here on
    // the worker filter applies.
    vgpu_seccomp::confine_worker(config.seccomp).map_err(crate::Error::Seccomp)?;
    let ledger_sock = sock
        .try_clone()
        .map_err(|e| crate::Error::Worker(WorkerError::Io(e)))?;
    executor.set_shared_ledger(Box::new(FrontLedger {
        sock: ledger_sock,
        frame: Vec::new(),
    }));
    write_frame(&mut sock, kind::READY, &[])
        .map_err(|e| crate::Error::Worker(WorkerError::Io(e)))?;
    serve_worker(&mut sock, &mut executor, namespace).map_err(crate::Error::Worker)
}

fn serve_worker(
    sock: &mut UnixStream,
    executor: &mut Executor,
    namespace: u32,
) -> Result<(), WorkerError> {
    let mut maps: Vec<Mapping> = Vec::new();
    let mut frame = Vec::new();
    let mut reply = Vec::with_capacity(64 << 10);
    let mut segs: Vec<HostSeg> = Vec::new();
    loop {
        let kind = match read_frame(sock, &mut frame) {
            Ok(k) => k,
            Err(WorkerError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // The front went away without closing us: free everything and go.
                executor.close_all();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match kind {
            kind::MEMORY => {
                let count = u32_at(&frame, 0)? as usize;
                for m in &maps {
                    executor.unregister_host(m.ptr);
                }
                maps.clear();
                for _ in 0..count {
                    let m = receive_region(sock)?;
                    if executor.register_host(m.ptr, m.len) {
                        info!("guest memory region of {} KiB pinned for DMA", m.len >> 10);
                    }
                    maps.push(m);
                }
            }
            kind::RUN => {
                let msg_len = u32_at(&frame, 0)? as usize;
                let n_in = u32_at(&frame, 4)? as usize;
                let n_out = u32_at(&frame, 8)? as usize;
                let segs_end = 16 + (n_in + n_out) * 24;
                if frame.len() != segs_end + msg_len {
                    return Err(WorkerError::Malformed);
                }
                segs.clear();
                for i in 0..n_in + n_out {
                    let at = 16 + i * 24;
                    let index = u64_at(&frame, at)? as usize;
                    let offset = u64_at(&frame, at + 8)? as usize;
                    let len = u64_at(&frame, at + 16)? as usize;
                    let m = maps.get(index).ok_or(WorkerError::Malformed)?;
                    if offset.checked_add(len).is_none_or(|end| end > m.len) {
                        return Err(WorkerError::Malformed);
                    }
                    // SAFETY: offset + len lies within the mapping (checked above).
                    let ptr = unsafe { m.ptr.add(offset) };
                    segs.push(HostSeg { ptr, len });
                }
                let outcome = executor.execute_in(
                    namespace,
                    &frame[segs_end..],
                    DataStream::new(&segs[..n_in]),
                    DataStream::new(&segs[n_in..]),
                    &mut reply,
                );
                let mut head = [0u8; 16];
                head[..8].copy_from_slice(&outcome.data_out_len.to_le_bytes());
                head[8..].copy_from_slice(&executor.mem_used().to_le_bytes());
                write_frame(sock, kind::REPLY, &[&head, &reply[..outcome.reply_len]])
                    .map_err(WorkerError::Io)?;
            }
            kind::CLOSE => {
                let freed = executor.close_all();
                let mut body = [0u8; 24];
                body[..8].copy_from_slice(&(freed.allocations as u64).to_le_bytes());
                body[8..16].copy_from_slice(&freed.bytes.to_le_bytes());
                body[16..].copy_from_slice(&(freed.objects as u64).to_le_bytes());
                for m in &maps {
                    executor.unregister_host(m.ptr);
                }
                maps.clear();
                write_frame(sock, kind::CLOSED, &[&body]).map_err(WorkerError::Io)?;
                return Ok(());
            }
            other => return Err(WorkerError::Unexpected(other, "a request")),
        }
    }
}

fn receive_region(sock: &mut UnixStream) -> Result<Mapping, WorkerError> {
    let mut rec = [0u8; 16];
    let (n, file) = sock
        .recv_with_fd(&mut rec)
        .map_err(|e| WorkerError::Io(io::Error::from_raw_os_error(e.errno())))?;
    if n < rec.len() {
        sock.read_exact(&mut rec[n..]).map_err(WorkerError::Io)?;
    }
    let file = file.ok_or(WorkerError::Malformed)?;
    let len = u64_at(&rec, 0)? as usize;
    let offset = u64_at(&rec, 8)?;
    // The front checked the region against the file; check again, it costs one fstat.
    check_region_file(0, len as u64, &file, offset)?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let lead = (offset % page) as usize;
    // SAFETY: a fresh shared mapping of the guest memory file; the kernel picks the address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + lead,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            (offset - lead as u64) as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(WorkerError::Map(io::Error::last_os_error()));
    }
    Ok(Mapping {
        // SAFETY: `lead` bytes lie inside the mapping just made.
        ptr: unsafe { ptr.cast::<u8>().add(lead) },
        len,
        lead,
    })
}

/// Whether this daemon serves each client in its own process (`--isolation process`).
pub fn uses_workers(config: &Config) -> bool {
    config.isolation == Isolation::Process && config.remote.is_none() && config.listen.is_none()
}

/// How the daemon keeps the clients of its slice apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// One host process per guest client: each has its own GPU address space, as native
    /// processes do.
    #[default]
    Process,
    /// Every client in the daemon's process (one GPU address space): a kernel of one client
    /// can read another's memory. For measuring what isolation costs, not for tenants.
    Shared,
}

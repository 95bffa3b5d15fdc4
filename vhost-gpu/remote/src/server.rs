//! The GPU host's side: `vhost-gpu --listen ADDR:PORT`.
//!
//! The listener ([`serve`]) never opens a GPU: it accepts, and starts one process of its own
//! program per connection ([`serve_connection`] runs there), so two remote slices never share
//! a GPU address space. The session process does TLS, the handshake and the requests, with its
//! own executor, and exits when the connection ends, for whatever reason, which frees
//! everything the slice held. A malformed frame ends its connection only.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use log::{info, warn};
use rustls::{ServerConnection, StreamOwned};
use thiserror::Error;
use vgpu_executor::{DataStream, Executor, gpu::HostSeg};
use zerocopy::{FromZeros, IntoBytes};

use crate::{
    frame::{
        Binding, CHALLENGE_MAGIC, Challenge, FrameError, MAX_DATA, MAX_MESSAGE, REPLY_MAGIC,
        REQUEST_MAGIC, ReplyHeader, RequestHeader, Secret, SessionHeader, SessionParams,
        SessionReply, check, nonce, plain_refusal, read_header, read_into, write_all,
    },
    tls::{self, Sock, Transport},
};
use vgpu_protocol::error_chain;

/// Makes the executor of a new session, or says why not.
pub type OpenSlice = dyn Fn(&SessionParams) -> Result<Executor, String> + Send + Sync;

/// Buffers above this size are given back after their request instead of kept for the next.
const RETAIN: usize = 8 << 20;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
}

/// How long a peer may take (`vhost-gpu --remote-*-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From accepting to the session's answer: TLS, challenge, session header.
    pub handshake: Duration,
    /// Between requests (the client sends keepalives within a third of it).
    pub idle: Duration,
    /// For a request to arrive in full once its first byte has, and for a reply to be taken.
    pub progress: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            progress: Duration::from_secs(30),
        }
    }
}

/// What a session process needs besides its connection.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub secret: Option<Secret>,
    pub timeouts: Timeouts,
    /// Most bytes of bulk data one request may declare, both ways together.
    pub max_in_flight: u64,
    /// When the listener accepted the connection (logged with the session's start cost).
    pub accepted_at: Option<SystemTime>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            secret: None,
            timeouts: Timeouts::default(),
            max_in_flight: 2 * MAX_DATA,
            accepted_at: None,
        }
    }
}

/// Milliseconds since `t`, for the log.
fn ms_since(t: Option<SystemTime>) -> String {
    t.and_then(|t| t.elapsed().ok())
        .map_or("?".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

/// Accepts connections and starts `session_command(fd)` for each, with the connection as file
/// descriptor `fd` (inherited), dying with this process. At most `max_concurrent` sessions run
/// at once; a connection over that is refused at once, in plain text. Returns after
/// `max_total` sessions have been started and have ended (`None`: serves forever).
pub fn serve(
    listener: TcpListener,
    session_command: &dyn Fn(i32) -> Command,
    max_concurrent: usize,
    max_total: Option<usize>,
) -> Result<(), ServeError> {
    let active = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut reapers = Vec::new();
    let mut started = 0usize;
    while max_total.is_none_or(|m| started < m) {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if transient(&e) => {
                warn!("remote slices: accepting a connection failed ({e}); going on");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(ServeError::Accept(e)),
        };
        let running = active.load(Ordering::SeqCst);
        if running >= max_concurrent {
            warn!(
                "remote slices: refused {peer}: {running} sessions are running, the most this host serves (--max-remote-sessions)"
            );
            refuse(
                stream,
                &format!("this GPU host is serving its maximum of {max_concurrent} remote slices"),
                &refusing,
            );
            continue;
        }
        let fd = stream.as_raw_fd();
        let mut cmd = session_command(fd);
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and calls only fcntl,
        // prctl and getppid, which are async-signal-safe; `fd` is the accepted connection,
        // open in the child (a copy of our descriptor table).
        unsafe {
            cmd.pre_exec(move || {
                // Keep the connection across exec (std opens sockets close-on-exec).
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The listener died before the line above: do not run without it.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("the listener is gone"));
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                started += 1;
                active.fetch_add(1, Ordering::SeqCst);
                let pid = child.id();
                info!("remote session {started} from {peer}: process {pid}");
                drop(stream);
                let active = active.clone();
                let reaper = std::thread::Builder::new()
                    .name(format!("reap-{pid}"))
                    .spawn(move || {
                        match child.wait() {
                            Ok(s) if s.success() => {}
                            Ok(s) => warn!("remote session process {pid} ended: {s}"),
                            Err(e) => warn!("remote session process {pid}: waiting failed: {e}"),
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                match reaper {
                    Ok(r) => reapers.push(r),
                    // Unreaped, it stays a zombie and counts as running: visible, bounded.
                    Err(e) => warn!("remote session process {pid}: no reaper thread: {e}"),
                }
                reapers.retain(|r| !r.is_finished());
            }
            Err(e) => {
                warn!("remote slices: could not start a session process for {peer}: {e}");
                refuse(
                    stream,
                    "this GPU host could not start a session process",
                    &refusing,
                );
            }
        }
    }
    for r in reapers {
        let _ = r.join();
    }
    Ok(())
}

/// Accept errors that say nothing about the listener itself (a peer gone before we took it,
/// out of descriptors for a moment).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Tells a peer why not, in plain text, and closes. The client speaks first (its TLS hello), so
/// that is read and dropped before closing: closing with unread bytes would reset the
/// connection and could lose the refusal. Done on a short-lived thread (at most 16 at once;
/// beyond that a refused connection is just closed).
fn refuse(stream: TcpStream, why: &str, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::SeqCst) >= 16 {
        refusing.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let text = plain_refusal(why);
    let refusing2 = refusing.clone();
    let spawned = std::thread::Builder::new()
        .name("refuse".into())
        .spawn(move || {
            let mut s = stream;
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(&text);
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = [0u8; 4096];
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(2)
                && matches!(s.read(&mut sink), Ok(n) if n > 0)
            {}
            refusing2.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        refusing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one accepted connection to its end (in the session process): TLS, the handshake,
/// then requests.
pub fn serve_connection(
    tcp: TcpStream,
    open: &OpenSlice,
    opts: &SessionOptions,
) -> Result<(), FrameError> {
    tcp.set_nodelay(true)?;
    let hs = opts.timeouts.handshake;
    let deadline = Instant::now() + hs;
    let mut sock = Sock::new(tcp);
    sock.deadline = Some(deadline);
    let mut stream = tls_accept(sock)
        .map_err(|e| e.timed_out_as("handshake timeout: TLS did not complete", hs))?;
    let binding = tls::binding(&stream.conn)?;
    let result = session(&mut stream, &binding, open, opts, deadline);
    // Say goodbye properly when the peer is still there (a second at most), and let it read
    // that (and any alert about what went wrong) before the connection goes: closing with
    // unread bytes would reset it and could lose them.
    stream.sock.deadline = Some(Instant::now() + Duration::from_secs(1));
    stream.conn.send_close_notify();
    let _ = stream.flush();
    let _ = stream.sock.tcp().shutdown(Shutdown::Write);
    let mut sink = [0u8; 16 << 10];
    while matches!(stream.sock.read(&mut sink), Ok(n) if n > 0) {}
    result
}

fn tls_accept(mut sock: Sock) -> Result<StreamOwned<ServerConnection, Sock>, FrameError> {
    tls::expect_tls(&mut sock)?;
    let mut conn = ServerConnection::new(tls::server_config()?)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// The session over an established channel `t` whose binding is `binding`: challenge, session
/// header, the slice's executor, then requests until the peer goes away.
pub fn session<T: Transport>(
    t: &mut T,
    binding: &Binding,
    open: &OpenSlice,
    opts: &SessionOptions,
    handshake_deadline: Instant,
) -> Result<(), FrameError> {
    let hs = opts.timeouts.handshake;
    let timed = |e: FrameError| e.timed_out_as("handshake timeout: no session header", hs);
    t.set_deadline(Some(handshake_deadline));
    let challenge = Challenge {
        magic: CHALLENGE_MAGIC.into(),
        auth_required: u32::from(opts.secret.is_some()).into(),
        nonce: nonce()?,
        idle_timeout_ms: u32::try_from(opts.timeouts.idle.as_millis())
            .unwrap_or(u32::MAX)
            .into(),
        _pad: 0.into(),
    };
    write_all(t, &[challenge.as_bytes()]).map_err(timed)?;
    let hello: SessionHeader = read_header(t).map_err(timed)?;
    if let Some(secret) = &opts.secret
        && !secret.verify(binding, &challenge.nonce, &hello)
    {
        let why = "authentication failed: the VM host does not hold this pool's secret (or its TLS session is not ours)";
        let _ = write_all(t, &[SessionReply::refuse(why).as_bytes()]);
        return Err(FrameError::Refused(why.into()));
    }
    let params = match hello.params() {
        Ok(p) => p,
        Err(e) => {
            let _ = write_all(t, &[SessionReply::refuse(&e.to_string()).as_bytes()]);
            return Err(e);
        }
    };
    let mut ex = match open(&params) {
        Ok(ex) => ex,
        Err(why) => {
            let _ = write_all(t, &[SessionReply::refuse(&why).as_bytes()]);
            return Err(FrameError::Refused(why));
        }
    };
    let proof = opts.secret.as_ref().map_or([0; 32], |s| {
        s.prove_server(binding, &challenge.nonce, &hello)
    });
    t.set_deadline(Some(Instant::now() + opts.timeouts.progress));
    write_all(t, &[SessionReply::accept(proof).as_bytes()]).map_err(|e| {
        e.timed_out_as(
            "progress timeout: the session reply was not taken",
            opts.timeouts.progress,
        )
    })?;
    info!(
        "remote slice: gpu {}, memory limit {}, SMs {} (process {}, ready {} ms after accept)",
        params.gpu,
        params
            .mem_limit
            .map_or("none".into(), |m| format!("{m} bytes")),
        params.sm_count.map_or("all".into(), |s| s.to_string()),
        std::process::id(),
        ms_since(opts.accepted_at),
    );
    let result = run_requests(t, &mut ex, opts);
    let freed = ex.close_all();
    info!(
        "remote slice closed: freed {} allocations ({} bytes) and {} objects",
        freed.allocations, freed.bytes, freed.objects
    );
    result
}

/// Whether an error at a request boundary is the peer going away (with or without saying
/// goodbye in TLS).
fn is_end(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

fn run_requests<T: Transport>(
    t: &mut T,
    ex: &mut Executor,
    opts: &SessionOptions,
) -> Result<(), FrameError> {
    let Timeouts { idle, progress, .. } = opts.timeouts;
    let arrive = |e: FrameError| {
        e.timed_out_as(
            "progress timeout: the request did not arrive in full",
            progress,
        )
    };
    let taken =
        |e: FrameError| e.timed_out_as("progress timeout: the reply was not taken", progress);
    let (mut msg, mut data_in, mut data_out, mut reply) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    loop {
        // Until a request's first byte: the idle timeout. From there: the progress timeout.
        t.set_deadline(Some(Instant::now() + idle));
        let mut h = RequestHeader::new_zeroed();
        let first = loop {
            match t.read(&mut h.as_mut_bytes()[..1]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_end(&e) => break 0,
                Err(e) => {
                    return Err(
                        FrameError::from(e).timed_out_as("idle timeout: no request came", idle)
                    );
                }
            }
        };
        if first == 0 {
            return Ok(());
        }
        t.set_deadline(Some(Instant::now() + progress));
        t.read_exact(&mut h.as_mut_bytes()[1..])
            .map_err(|e| arrive(e.into()))?;
        if h.magic.get() != REQUEST_MAGIC {
            return Err(FrameError::BadMagic(h.magic.get()));
        }
        if h.is_keepalive() {
            let empty = ReplyHeader {
                magic: REPLY_MAGIC.into(),
                reply_len: 0.into(),
                data_out_len: 0.into(),
            };
            write_all(t, &[empty.as_bytes()]).map_err(taken)?;
            continue;
        }
        // Every declared length is bounded before anything is allocated.
        check(
            "message",
            u64::from(h.msg_len.get()),
            u64::from(MAX_MESSAGE),
        )?;
        check("data-in", h.data_in_len.get(), MAX_DATA)?;
        check("data-out", h.data_out_cap.get(), MAX_DATA)?;
        check(
            "bulk data of one request",
            h.data_in_len.get() + h.data_out_cap.get(),
            opts.max_in_flight,
        )?;
        read_into(t, &mut msg, h.msg_len.get() as usize).map_err(arrive)?;
        read_into(t, &mut data_in, h.data_in_len.get() as usize).map_err(arrive)?;
        let cap = h.data_out_cap.get() as usize;
        if cap > RETAIN {
            // Zeroed by the kernel as the executor writes it, not before: only what a call
            // returns becomes resident.
            data_out = vec![0u8; cap];
        } else {
            data_out.clear();
            data_out.resize(cap, 0);
        }
        let ins = [HostSeg {
            ptr: data_in.as_mut_ptr(),
            len: data_in.len(),
        }];
        let outs = [HostSeg {
            ptr: data_out.as_mut_ptr(),
            len: cap,
        }];
        let ins = if data_in.is_empty() {
            &ins[..0]
        } else {
            &ins[..]
        };
        let outs = if cap == 0 { &outs[..0] } else { &outs[..] };
        let outcome = ex.execute(
            &msg,
            DataStream::new(ins),
            DataStream::new(outs),
            &mut reply,
        );
        let out_len = (outcome.data_out_len as usize).min(cap);
        let hdr = ReplyHeader {
            magic: REPLY_MAGIC.into(),
            reply_len: (outcome.reply_len as u32).into(),
            data_out_len: (out_len as u64).into(),
        };
        t.set_deadline(Some(Instant::now() + progress));
        write_all(
            t,
            &[
                hdr.as_bytes(),
                &reply[..outcome.reply_len],
                &data_out[..out_len],
            ],
        )
        .map_err(taken)?;
        // A session that is idle holds no large buffers.
        for b in [&mut data_in, &mut data_out] {
            if b.capacity() > RETAIN {
                *b = Vec::new();
            }
        }
    }
}

/// Logs how a session ended.
pub fn log_end(result: &Result<(), FrameError>) {
    match result {
        Ok(()) => info!("remote session ended (process {})", std::process::id()),
        Err(e) => warn!(
            "remote session ended (process {}): {}",
            std::process::id(),
            error_chain(e)
        ),
    }
}

//! The VM host's side: forwards each message of a VM's vGPU to the GPU host, with the bulk data
//! it names read out of guest memory, and writes the reply and returned data back.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    sync::{Arc, Mutex, TryLockError, Weak},
    time::{Duration, Instant},
};

use log::{error, info, warn};
use rustls::{ClientConnection, StreamOwned};
use vgpu_executor::{DataStream, Outcome};
use vgpu_protocol::error_chain;
use vgpu_protocol::{CuResult, MsgHeader, ReplyWriter, flags};
use zerocopy::{FromBytes, IntoBytes};

use crate::{
    frame::{
        CHALLENGE_MAGIC, Challenge, FrameError, MAX_DATA, MAX_REPLY, REPLY_MAGIC, REQUEST_MAGIC,
        ReplyHeader, RequestHeader, Secret, SessionHeader, SessionParams, SessionReply, check,
        read_header, read_into, write_all,
    },
    tls::{self, Sock, Transport},
};

/// Fire-and-forget messages whose (empty) answers may be outstanding before we read them: far
/// below what socket buffers hold, so neither side ever blocks writing.
const MAX_PENDING: usize = 256;

/// How long connecting, TLS and the session handshake with the GPU host may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `CUDA_ERROR_DEVICE_UNAVAILABLE`: what the guest sees when the GPU host cannot be reached.
const DEVICE_UNAVAILABLE: CuResult = CuResult(46);

/// An open session with a GPU host: TLS established, both sides proven (when there is a
/// secret), the slice accepted. Reads and writes are frames of [`crate::frame`].
pub struct Channel {
    stream: StreamOwned<ClientConnection, Sock>,
    /// The server closes a session that sends nothing for this long.
    pub idle_timeout: Duration,
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Transport for Channel {
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.stream.set_deadline(deadline);
    }
}

impl Drop for Channel {
    /// Says goodbye in TLS (a second at most), so the GPU host sees a clean end.
    fn drop(&mut self) {
        self.stream.sock.deadline = Some(Instant::now() + Duration::from_secs(1));
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
    }
}

/// Opens a session on the GPU host at `addr`: TCP, TLS, the challenge, the proofs both ways.
pub fn connect(
    addr: &str,
    params: &SessionParams,
    secret: Option<&Secret>,
    timeout: Duration,
) -> Result<Channel, FrameError> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    for a in std::net::ToSocketAddrs::to_socket_addrs(addr)? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                return handshake(s, params, secret, deadline).map_err(|e| {
                    e.timed_out_as("the GPU host did not complete the handshake", timeout)
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(FrameError::Io(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no address")
    })))
}

fn handshake(
    tcp: TcpStream,
    params: &SessionParams,
    secret: Option<&Secret>,
    deadline: Instant,
) -> Result<Channel, FrameError> {
    tcp.set_nodelay(true)?;
    let mut sock = Sock::new(tcp);
    sock.deadline = Some(deadline);
    let mut conn = ClientConnection::new(tls::client_config()?, tls::server_name())?;
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    tls::check_plain_refusal(&mut sock)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    let binding = tls::binding(&conn)?;
    let mut stream = StreamOwned::new(conn, sock);
    let challenge: Challenge = read_header(&mut stream)?;
    if challenge.magic.get() != CHALLENGE_MAGIC {
        return Err(FrameError::BadMagic(challenge.magic.get()));
    }
    let mut hello = SessionHeader::new(params);
    match (secret, challenge.auth_required.get() != 0) {
        (Some(secret), _) => hello.auth = secret.prove(&binding, &challenge.nonce, &hello),
        (None, true) => {
            return Err(FrameError::Refused(
                "the GPU host requires this pool's secret (--remote-token-file or VGPU_REMOTE_TOKEN) and none is set".into(),
            ));
        }
        (None, false) => {}
    }
    write_all(&mut stream, &[hello.as_bytes()])?;
    let reply: SessionReply = read_header(&mut stream)?;
    reply.result()?;
    match secret {
        Some(s) => {
            if !s.verify_server(&binding, &challenge.nonce, &hello, &reply.proof) {
                return Err(FrameError::ServerNotProven);
            }
        }
        None => warn!(
            "remote slice: no shared secret set: the GPU host is not authenticated (the channel is encrypted)"
        ),
    }
    // From here a call may legitimately take long on the GPU: no deadline.
    stream.sock.deadline = None;
    Ok(Channel {
        stream,
        idle_timeout: Duration::from_millis(u64::from(challenge.idle_timeout_ms.get())),
    })
}

struct Connection {
    ch: Channel,
    /// Answers to fire-and-forget messages not read yet (they carry nothing; the GPU host keeps
    /// their errors for the next synchronising call, as a local executor does).
    pending: usize,
    last_sent: Instant,
    /// Header and message of one request, sent as one write.
    frame: Vec<u8>,
}

impl Connection {
    /// Reads the answers of earlier fire-and-forget messages.
    fn drain_pending(&mut self) -> Result<(), FrameError> {
        while self.pending > 0 {
            let h: ReplyHeader = read_header(&mut self.ch)?;
            if h.magic.get() != REPLY_MAGIC {
                return Err(FrameError::BadMagic(h.magic.get()));
            }
            // A fire-and-forget message has no reply and no room for data.
            check(
                "reply to a fire-and-forget message",
                u64::from(h.reply_len.get()),
                0,
            )?;
            check(
                "data-out of a fire-and-forget message",
                h.data_out_len.get(),
                0,
            )?;
            self.pending -= 1;
        }
        Ok(())
    }

    fn keepalive(&mut self) -> Result<(), FrameError> {
        if self.pending >= MAX_PENDING {
            self.drain_pending()?;
        }
        write_all(&mut self.ch, &[RequestHeader::keepalive().as_bytes()])?;
        self.pending += 1;
        self.last_sent = Instant::now();
        Ok(())
    }
}

/// The connection and whether it failed, shared with the keepalive thread.
struct Shared {
    conn: Option<Connection>,
    failed: bool,
    /// Counts connections, so a keepalive thread knows when its own has gone.
    generation: u64,
}

/// One VM frontend's session with the GPU host, opened at its first message. Once the
/// connection fails the session stays failed (the slice's objects died with it), and every
/// message gets `CUDA_ERROR_DEVICE_UNAVAILABLE`. While the guest makes no calls, a thread sends
/// keepalives within the GPU host's idle timeout.
pub struct RemoteSession {
    addr: String,
    params: SessionParams,
    secret: Option<Secret>,
    shared: Arc<Mutex<Shared>>,
    data_in: Vec<u8>,
    data_out: Vec<u8>,
}

impl RemoteSession {
    pub fn new(addr: &str, params: SessionParams, secret: Option<Secret>) -> Self {
        Self {
            addr: addr.to_string(),
            params,
            secret,
            shared: Arc::new(Mutex::new(Shared {
                conn: None,
                failed: false,
                generation: 0,
            })),
            data_in: Vec::new(),
            data_out: Vec::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the session: the GPU host frees the slice's objects. The next message opens a new
    /// session (after a device reset the guest starts afresh).
    pub fn close(&mut self) {
        let mut s = self.lock();
        s.conn = None;
        s.failed = false;
        s.generation += 1;
    }

    /// Runs one message on the GPU host.
    pub fn execute(
        &mut self,
        msg: &[u8],
        data_in: DataStream<'_>,
        data_out: DataStream<'_>,
        reply: &mut Vec<u8>,
    ) -> Outcome {
        let shared = self.shared.clone();
        let mut s = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !s.failed {
            match self.exchange(&mut s, msg, data_in, data_out, reply) {
                Ok(o) => return o,
                Err(e) => {
                    error!(
                        "remote slice on {}: {}; the vGPU is unavailable from now on",
                        self.addr,
                        error_chain(&e)
                    );
                    s.failed = true;
                    s.conn = None;
                    s.generation += 1;
                }
            }
        }
        unavailable(msg, reply)
    }

    fn open(&self, s: &mut Shared) -> Result<(), FrameError> {
        let ch = connect(
            &self.addr,
            &self.params,
            self.secret.as_ref(),
            HANDSHAKE_TIMEOUT,
        )?;
        info!("remote slice on {} opened (TLS)", self.addr);
        s.generation += 1;
        let every = (ch.idle_timeout / 3).max(Duration::from_millis(10));
        s.conn = Some(Connection {
            ch,
            pending: 0,
            last_sent: Instant::now(),
            frame: Vec::new(),
        });
        let (weak, generation, addr) = (
            Arc::downgrade(&self.shared),
            s.generation,
            self.addr.clone(),
        );
        if let Err(e) = std::thread::Builder::new()
            .name("remote-keepalive".into())
            .spawn(move || keepalive(&weak, generation, every, &addr))
        {
            warn!(
                "remote slice on {}: no keepalive thread ({e}): an idle guest may lose its session",
                self.addr
            );
        }
        Ok(())
    }

    fn exchange(
        &mut self,
        s: &mut Shared,
        msg: &[u8],
        data_in: DataStream<'_>,
        data_out: DataStream<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<Outcome, FrameError> {
        if s.conn.is_none() {
            self.open(s)?;
        }
        let cap = data_out.len().min(MAX_DATA);
        check("data-in", data_in.len(), MAX_DATA)?;
        data_in
            .gather(0, data_in.len(), &mut self.data_in)
            .map_err(|e| FrameError::Io(io::Error::other(format!("data-in: {e:?}"))))?;
        let Some(c) = s.conn.as_mut() else {
            unreachable!("connected above");
        };
        let hdr = RequestHeader {
            magic: REQUEST_MAGIC.into(),
            msg_len: (msg.len() as u32).into(),
            data_in_len: (self.data_in.len() as u64).into(),
            data_out_cap: cap.into(),
        };
        c.frame.clear();
        c.frame.extend_from_slice(hdr.as_bytes());
        c.frame.extend_from_slice(msg);
        // Stream-ordered work the guest does not wait for (no reply wanted, nothing to bring
        // back) is not waited for here either: one network round trip per synchronising call,
        // not per message.
        let wants_reply = MsgHeader::read_from_prefix(msg)
            .is_ok_and(|(m, _)| m.flags.get() & flags::WANT_REPLY != 0);
        // Sent now, so the GPU starts on it now.
        write_all(&mut c.ch, &[&c.frame, &self.data_in])?;
        c.last_sent = Instant::now();
        if !wants_reply && cap == 0 && c.pending < MAX_PENDING {
            // Only the answer is read later.
            c.pending += 1;
            reply.clear();
            return Ok(Outcome {
                reply_len: 0,
                data_out_len: 0,
            });
        }
        c.drain_pending()?;
        let h: ReplyHeader = read_header(&mut c.ch)?;
        if h.magic.get() != REPLY_MAGIC {
            return Err(FrameError::BadMagic(h.magic.get()));
        }
        check("reply", u64::from(h.reply_len.get()), u64::from(MAX_REPLY))?;
        check("data-out", h.data_out_len.get(), cap)?;
        read_into(&mut c.ch, reply, h.reply_len.get() as usize)?;
        read_into(&mut c.ch, &mut self.data_out, h.data_out_len.get() as usize)?;
        data_out
            .scatter(0, &self.data_out)
            .map_err(|e| FrameError::Io(io::Error::other(format!("data-out: {e:?}"))))?;
        let out_len = self.data_out.len() as u64;
        // An idle VM holds no large buffers.
        for b in [&mut self.data_in, &mut self.data_out] {
            if b.capacity() > 8 << 20 {
                *b = Vec::new();
            }
        }
        Ok(Outcome {
            reply_len: reply.len(),
            data_out_len: out_len,
        })
    }
}

impl Drop for RemoteSession {
    fn drop(&mut self) {
        self.close();
    }
}

/// Sends a keepalive whenever nothing was sent for `every`, until connection `generation` is
/// gone. It never waits for a call in flight (the GPU host is not idle then).
fn keepalive(shared: &Weak<Mutex<Shared>>, generation: u64, every: Duration, addr: &str) {
    loop {
        std::thread::sleep(every / 4);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut s = match shared.try_lock() {
            Ok(s) => s,
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Poisoned(_)) => return,
        };
        if s.generation != generation {
            return;
        }
        let Some(c) = s.conn.as_mut() else {
            return;
        };
        if c.last_sent.elapsed() < every {
            continue;
        }
        if let Err(e) = c.keepalive() {
            error!(
                "remote slice on {addr}: keepalive failed: {}; the vGPU is unavailable from now on",
                error_chain(&e)
            );
            s.conn = None;
            s.failed = true;
            s.generation += 1;
            return;
        }
    }
}

/// The reply a message gets when the GPU host is gone: its calls failed with
/// `CUDA_ERROR_DEVICE_UNAVAILABLE`, where the message wants a reply and has room for one.
fn unavailable(msg: &[u8], reply: &mut Vec<u8>) -> Outcome {
    let none = Outcome {
        reply_len: 0,
        data_out_len: 0,
    };
    let Ok((hdr, _)) = MsgHeader::read_from_prefix(msg) else {
        return none;
    };
    if hdr.flags.get() & flags::WANT_REPLY == 0 {
        return none;
    }
    let mut w = ReplyWriter::new(reply);
    w.push_status(0, DEVICE_UNAVAILABLE.0);
    let n = w.finish(hdr.seq.get(), 0);
    Outcome {
        reply_len: if n <= hdr.resp_cap.get() as usize {
            n
        } else {
            0
        },
        data_out_len: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use vgpu_executor::{Executor, SliceLimits, sim::SimGpu};
    use vgpu_protocol::{Encoder, Opcode, PROTOCOL_MAJOR, calls, parse_response};

    use super::*;
    use crate::server::{SessionOptions, Timeouts, serve_connection};

    /// A GPU host in this process: each connection served on a thread, on the simulator.
    fn gpu_host(opts: SessionOptions) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let o = opts.clone();
                std::thread::spawn(move || {
                    let open = |_: &SessionParams| -> Result<Executor, String> {
                        Ok(Executor::new(
                            Box::new(SimGpu::new(1 << 30)),
                            SliceLimits::default(),
                        ))
                    };
                    let _ = serve_connection(c, &open, &o);
                });
            }
        });
        addr
    }

    /// The first record's result of a Hello from `client`, run through `s`.
    fn hello(s: &mut RemoteSession, client: u32) -> u32 {
        let mut buf = vec![0u8; 256];
        let mut e = Encoder::new(&mut buf).unwrap();
        let body = calls::Hello {
            proto_major: PROTOCOL_MAJOR.into(),
            ..Default::default()
        };
        e.push(Opcode::Hello as u16, 0, &body, &[]).unwrap();
        let n = e.finish(flags::WANT_REPLY, client, 4096, 1);
        let mut reply = Vec::new();
        let out = s.execute(&buf[..n], DataStream::EMPTY, DataStream::EMPTY, &mut reply);
        let (_, mut records) = parse_response(&reply[..out.reply_len]).unwrap();
        records.next().unwrap().unwrap().result
    }

    /// A session, past its handshake, with a GPU host that closes sessions idle for `idle`.
    fn greeted_session(idle: Duration) -> RemoteSession {
        let addr = gpu_host(SessionOptions {
            timeouts: Timeouts {
                idle,
                ..Timeouts::default()
            },
            ..SessionOptions::default()
        });
        let mut s = RemoteSession::new(&addr, SessionParams::default(), None);
        assert_eq!(hello(&mut s, 0), 0);
        s
    }

    #[test]
    fn an_idle_vm_keeps_its_session_past_the_gpu_hosts_idle_timeout() {
        let mut s = greeted_session(Duration::from_millis(300));
        // Four idle timeouts with no call: the keepalives hold the session.
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(hello(&mut s, 1), 0, "the idle session was closed");
    }

    #[test]
    fn a_gpu_host_without_tls_is_named_as_such() {
        // What a GPU host of the plaintext protocol (frame version 1) says first.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut challenge = b"VGTC".to_vec();
                challenge.resize(40, 0);
                let _ = c.write_all(&challenge);
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let r = connect(&addr, &SessionParams::default(), None, HANDSHAKE_TIMEOUT);
        assert!(matches!(r, Err(FrameError::ServerNotTls)), "{:?}", r.err());
    }

    #[test]
    fn a_session_whose_gpu_host_closes_it_fails_with_device_unavailable() {
        let mut s = greeted_session(Duration::from_millis(200));
        // Hold the session's lock so no keepalive goes out: the host's idle timeout ends it.
        {
            let _held = s.lock();
            std::thread::sleep(Duration::from_millis(800));
        }
        assert_eq!(hello(&mut s, 1), DEVICE_UNAVAILABLE.0);
    }
}

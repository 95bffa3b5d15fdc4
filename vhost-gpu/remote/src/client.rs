//! The VM host's side: forwards each message of a VM's vGPU to the GPU host, with the bulk data
//! it names read out of guest memory, and writes the reply and returned data back.

use std::{
    io::{BufReader, BufWriter, Write},
    net::TcpStream,
    time::Duration,
};

use log::{error, info};
use vgpu_executor::{DataStream, Outcome};
use vgpu_protocol::{CuResult, MsgHeader, ReplyWriter, flags};
use zerocopy::{FromBytes, IntoBytes};

use crate::frame::{
    CHALLENGE_MAGIC, Challenge, FrameError, MAX_DATA, MAX_REPLY, REPLY_MAGIC, REQUEST_MAGIC,
    ReplyHeader, RequestHeader, Secret, SessionHeader, SessionParams, SessionReply, check,
    read_header, read_into, write_all,
};

/// Fire-and-forget messages whose (empty) answers may be outstanding before we read them: far
/// below what socket buffers hold, so neither side ever blocks writing.
const MAX_PENDING: usize = 256;

/// How long connecting to the GPU host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `CUDA_ERROR_DEVICE_UNAVAILABLE`: what the guest sees when the GPU host cannot be reached.
const DEVICE_UNAVAILABLE: CuResult = CuResult(46);

struct Connection {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
    /// Answers to fire-and-forget messages not read yet (they carry nothing; the GPU host keeps
    /// their errors for the next synchronising call, as a local executor does).
    pending: usize,
}

impl Connection {
    /// Reads the answers of earlier fire-and-forget messages.
    fn drain_pending(&mut self) -> Result<(), FrameError> {
        while self.pending > 0 {
            let h: ReplyHeader = read_header(&mut self.r)?;
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
}

/// One VM frontend's session with the GPU host, opened at its first message. Once the
/// connection fails the session stays failed (the slice's objects died with it), and every
/// message gets `CUDA_ERROR_DEVICE_UNAVAILABLE`.
pub struct RemoteSession {
    addr: String,
    params: SessionParams,
    secret: Option<Secret>,
    conn: Option<Connection>,
    failed: bool,
    data_in: Vec<u8>,
    data_out: Vec<u8>,
}

impl RemoteSession {
    pub fn new(addr: &str, params: SessionParams, secret: Option<Secret>) -> Self {
        Self {
            addr: addr.to_string(),
            params,
            secret,
            conn: None,
            failed: false,
            data_in: Vec::new(),
            data_out: Vec::new(),
        }
    }

    fn connect(&self) -> Result<Connection, FrameError> {
        let mut last = None;
        for a in std::net::ToSocketAddrs::to_socket_addrs(self.addr.as_str())? {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    let mut c = Connection {
                        r: BufReader::with_capacity(256 << 10, s.try_clone()?),
                        w: BufWriter::with_capacity(256 << 10, s),
                        pending: 0,
                    };
                    let challenge: Challenge = read_header(&mut c.r)?;
                    if challenge.magic.get() != CHALLENGE_MAGIC {
                        return Err(FrameError::BadMagic(challenge.magic.get()));
                    }
                    let mut hello = SessionHeader::new(&self.params);
                    match (&self.secret, challenge.auth_required.get() != 0) {
                        (Some(secret), _) => hello.auth = secret.prove(&challenge.nonce, &hello),
                        (None, true) => {
                            return Err(FrameError::Refused(
                                "the GPU host requires this pool's secret (--remote-token-file or VGPU_REMOTE_TOKEN) and none is set".into(),
                            ));
                        }
                        (None, false) => {}
                    }
                    write_all(&mut c.w, &[hello.as_bytes()])?;
                    let reply: SessionReply = read_header(&mut c.r)?;
                    reply.result()?;
                    info!("remote slice on {} opened", self.addr);
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(FrameError::Io(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
        })))
    }

    /// Ends the session: the GPU host frees the slice's objects. The next message opens a new
    /// session (after a device reset the guest starts afresh).
    pub fn close(&mut self) {
        self.conn = None;
        self.failed = false;
    }

    /// Runs one message on the GPU host.
    pub fn execute(
        &mut self,
        msg: &[u8],
        data_in: DataStream<'_>,
        data_out: DataStream<'_>,
        reply: &mut Vec<u8>,
    ) -> Outcome {
        if !self.failed {
            match self.exchange(msg, data_in, data_out, reply) {
                Ok(o) => return o,
                Err(e) => {
                    error!(
                        "remote slice on {}: {e}; the vGPU is unavailable from now on",
                        self.addr
                    );
                    self.failed = true;
                    self.conn = None;
                }
            }
        }
        unavailable(msg, reply)
    }

    fn exchange(
        &mut self,
        msg: &[u8],
        data_in: DataStream<'_>,
        data_out: DataStream<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<Outcome, FrameError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let cap = data_out.len().min(MAX_DATA);
        check("data-in", data_in.len(), MAX_DATA)?;
        data_in
            .gather(0, data_in.len(), &mut self.data_in)
            .map_err(|e| FrameError::Io(std::io::Error::other(format!("data-in: {e:?}"))))?;
        let Some(c) = self.conn.as_mut() else {
            unreachable!("connected above");
        };
        let hdr = RequestHeader {
            magic: REQUEST_MAGIC.into(),
            msg_len: (msg.len() as u32).into(),
            data_in_len: (self.data_in.len() as u64).into(),
            data_out_cap: cap.into(),
        };
        // Stream-ordered work the guest does not wait for (no reply wanted, nothing to bring
        // back) is not waited for here either: one network round trip per synchronising call,
        // not per message.
        let wants_reply = MsgHeader::read_from_prefix(msg)
            .is_ok_and(|(m, _)| m.flags.get() & flags::WANT_REPLY != 0);
        if !wants_reply && cap == 0 && c.pending < MAX_PENDING {
            c.w.write_all(hdr.as_bytes())?;
            c.w.write_all(msg)?;
            c.w.write_all(&self.data_in)?;
            // Sent now, so the GPU starts on it now; only the answer is read later.
            c.w.flush()?;
            c.pending += 1;
            reply.clear();
            return Ok(Outcome {
                reply_len: 0,
                data_out_len: 0,
            });
        }
        write_all(&mut c.w, &[hdr.as_bytes(), msg, &self.data_in])?;
        c.drain_pending()?;
        let h: ReplyHeader = read_header(&mut c.r)?;
        if h.magic.get() != REPLY_MAGIC {
            return Err(FrameError::BadMagic(h.magic.get()));
        }
        check("reply", u64::from(h.reply_len.get()), u64::from(MAX_REPLY))?;
        check("data-out", h.data_out_len.get(), cap)?;
        read_into(&mut c.r, reply, h.reply_len.get() as usize)?;
        read_into(&mut c.r, &mut self.data_out, h.data_out_len.get() as usize)?;
        data_out
            .scatter(0, &self.data_out)
            .map_err(|e| FrameError::Io(std::io::Error::other(format!("data-out: {e:?}"))))?;
        Ok(Outcome {
            reply_len: reply.len(),
            data_out_len: self.data_out.len() as u64,
        })
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

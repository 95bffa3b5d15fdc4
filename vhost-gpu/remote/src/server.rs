//! The GPU host's side: `vhost-gpu --listen ADDR:PORT`. Each connection is one remote slice
//! with its own executor; when the connection ends, for whatever reason, everything the slice
//! held is freed. A malformed frame ends its connection only.

use std::{
    io::{BufReader, BufWriter, ErrorKind},
    net::{TcpListener, TcpStream},
    sync::Arc,
};

use log::{info, warn};
use thiserror::Error;
use vgpu_executor::{DataStream, Executor, gpu::HostSeg};
use zerocopy::IntoBytes;

use crate::frame::{
    CHALLENGE_MAGIC, Challenge, FrameError, MAX_DATA, MAX_MESSAGE, REPLY_MAGIC, REQUEST_MAGIC,
    ReplyHeader, RequestHeader, Secret, SessionHeader, SessionParams, SessionReply, check, nonce,
    read_header, read_into, write_all,
};

/// Makes the executor of a new session, or says why not.
pub type OpenSlice = dyn Fn(&SessionParams) -> Result<Executor, String> + Send + Sync;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
    #[error("could not start a session thread")]
    Thread(#[source] std::io::Error),
}

/// Serves sessions until accepting fails or `max_sessions` have been started.
pub fn serve(
    listener: TcpListener,
    open: Arc<OpenSlice>,
    secret: Option<Secret>,
    max_sessions: Option<usize>,
) -> Result<(), ServeError> {
    if secret.is_none() {
        warn!(
            "remote slices: no shared secret configured; any peer that reaches this port can open a slice"
        );
    }
    let mut sessions = Vec::new();
    for n in 1.. {
        let (stream, peer) = listener.accept().map_err(ServeError::Accept)?;
        let open = open.clone();
        let secret = secret.clone();
        let t = std::thread::Builder::new()
            .name(format!("remote-{n}"))
            .spawn(move || {
                info!("remote session {n} from {peer}");
                match session(stream, &*open, secret.as_ref()) {
                    Ok(()) => info!("remote session {n} from {peer} ended"),
                    Err(e) => warn!("remote session {n} from {peer} ended: {e}"),
                }
            })
            .map_err(ServeError::Thread)?;
        sessions.retain(|s: &std::thread::JoinHandle<()>| !s.is_finished());
        sessions.push(t);
        if max_sessions.is_some_and(|m| n >= m) {
            break;
        }
    }
    for s in sessions {
        let _ = s.join();
    }
    Ok(())
}

/// Runs one session to its end.
pub fn session(
    stream: TcpStream,
    open: &OpenSlice,
    secret: Option<&Secret>,
) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let mut r = BufReader::with_capacity(256 << 10, stream.try_clone()?);
    let mut w = BufWriter::with_capacity(256 << 10, stream);
    let challenge = Challenge {
        magic: CHALLENGE_MAGIC.into(),
        auth_required: u32::from(secret.is_some()).into(),
        nonce: nonce()?,
    };
    write_all(&mut w, &[challenge.as_bytes()])?;
    let hello: SessionHeader = read_header(&mut r)?;
    if let Some(secret) = secret
        && !secret.verify(&challenge.nonce, &hello)
    {
        let why = "authentication failed: the VM host does not hold this pool's secret";
        let _ = write_all(&mut w, &[SessionReply::refuse(why).as_bytes()]);
        return Err(FrameError::Refused(why.into()));
    }
    let params = match hello.params() {
        Ok(p) => p,
        Err(e) => {
            let _ = write_all(&mut w, &[SessionReply::refuse(&e.to_string()).as_bytes()]);
            return Err(e);
        }
    };
    let mut ex = match open(&params) {
        Ok(ex) => ex,
        Err(why) => {
            write_all(&mut w, &[SessionReply::refuse(&why).as_bytes()])?;
            return Err(FrameError::Refused(why));
        }
    };
    write_all(&mut w, &[SessionReply::accept().as_bytes()])?;
    info!(
        "remote slice: gpu {}, memory limit {}, SMs {}",
        params.gpu,
        params
            .mem_limit
            .map_or("none".into(), |m| format!("{m} bytes")),
        params.sm_count.map_or("all".into(), |s| s.to_string())
    );
    let result = run_requests(&mut r, &mut w, &mut ex);
    let freed = ex.close_all();
    info!(
        "remote slice closed: freed {} allocations ({} bytes) and {} objects",
        freed.allocations, freed.bytes, freed.objects
    );
    result
}

fn run_requests(
    r: &mut BufReader<TcpStream>,
    w: &mut BufWriter<TcpStream>,
    ex: &mut Executor,
) -> Result<(), FrameError> {
    let (mut msg, mut data_in, mut data_out, mut reply) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    loop {
        let h: RequestHeader = match read_header(r) {
            Ok(h) => h,
            Err(FrameError::Io(e)) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if h.magic.get() != REQUEST_MAGIC {
            return Err(FrameError::BadMagic(h.magic.get()));
        }
        check(
            "message",
            u64::from(h.msg_len.get()),
            u64::from(MAX_MESSAGE),
        )?;
        check("data-in", h.data_in_len.get(), MAX_DATA)?;
        check("data-out", h.data_out_cap.get(), MAX_DATA)?;
        read_into(r, &mut msg, h.msg_len.get() as usize)?;
        read_into(r, &mut data_in, h.data_in_len.get() as usize)?;
        let cap = h.data_out_cap.get() as usize;
        data_out.clear();
        data_out.resize(cap, 0);
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
        write_all(
            w,
            &[
                hdr.as_bytes(),
                &reply[..outcome.reply_len],
                &data_out[..out_len],
            ],
        )?;
    }
}

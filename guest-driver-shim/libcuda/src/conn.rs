//! The shim's connection to the vGPU: batching of fire-and-forget calls, synchronous calls,
//! and bulk data placement (in place where the transport can name the bytes, staged for
//! ordinary memory over virtio-user; `copy.rs`). How chains reach the device is the
//! [`Transport`]'s business (`transport/`); nothing here or in the API branches on which one
//! is used.
//!
//! # Waits
//!
//! No wait outlives the vGPU, and liveness is not elapsed time. Over virtio-user a wait for a
//! reply, or for the daemon's answer to a control request (the handshake, shared-memory
//! acknowledgements), has no time limit while the daemon lives (a kernel may run for hours,
//! and other clients' work may delay the daemon's answers) but ends within milliseconds when
//! the daemon's socket closes. The connection attempt itself retries for the liveness bound,
//! `VGPU_LIVENESS_SECS` (default 5), while the socket does not accept. A dead daemon makes the
//! connection dead: that call and every later one returns `CUDA_ERROR_DEVICE_UNAVAILABLE` at
//! once, without touching the transport again, so teardown (destructors, `atexit`) cannot hang
//! either. Through `/dev/vgpuN` the waits are the kernel driver's.
//!
//! Every call goes through one mutex per connection. A lock-free per-thread batch would be
//! faster under contention but would break CUDA's stream ordering across threads (a thread
//! may launch on a stream after another thread's launch on it), so the order of submission
//! is the order of the lock.

use std::{
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use vgpu_protocol::{
    CuResult, EncodeError, Encoder, Opcode, calls, flags, parse_response, reply_flags,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::transport::{
    MAX_HEADS, Policy, Seg, SharedBuf, Transport, TransportError, kmod::KmodTransport,
    virtio_user::VirtioUserTransport,
};

mod copy;

/// Bytes of one batch message.
const MSG_BYTES: usize = 256 << 10;
/// Batch message buffers (one per chain in flight).
const MSG_BUFFERS: usize = 16;
/// Bytes of the reply buffer of synchronous calls.
const REPLY_BYTES: usize = 4 << 20;
/// Bytes of each of the two staging buffers for copies from ordinary memory.
const STAGING_BYTES: usize = 8 << 20;
/// Data segments in one chain.
const MAX_DATA_SEGS: usize = 48;
/// Longest a batch of fire-and-forget calls is kept back while the device is busy: after that
/// the flusher thread sends it, so work the program queued reaches the GPU even if the program
/// makes no further call (it may be waiting for the GPU through mapped memory, or just
/// computing on the CPU meanwhile).
const HOLD: Duration = Duration::from_micros(500);

/// `CUDA_ERROR_DEVICE_UNAVAILABLE`: what every call returns once the vGPU is gone.
pub const DEVICE_UNAVAILABLE: CuResult = CuResult(46);
/// Set when the (process's only) connection dies; read without its lock by every entry point.
static DEAD: AtomicBool = AtomicBool::new(false);

/// Default of `VGPU_LIVENESS_SECS`.
const DEFAULT_LIVENESS: Duration = Duration::from_secs(5);

/// The liveness bound: how long `cuInit` retries a daemon socket that does not accept yet
/// (`VGPU_LIVENESS_SECS`, seconds, fractions allowed; default 5). A daemon that accepted is
/// waited for as long as its socket is open.
pub fn liveness() -> Duration {
    parse_liveness(std::env::var("VGPU_LIVENESS_SECS").ok().as_deref())
}

fn parse_liveness(v: Option<&str>) -> Duration {
    let Some(v) = v else {
        return DEFAULT_LIVENESS;
    };
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Duration::from_secs_f64(s),
        _ => {
            crate::log_error(&format!(
                "VGPU_LIVENESS_SECS={v:?} is not a positive number of seconds; using {}",
                DEFAULT_LIVENESS.as_secs()
            ));
            DEFAULT_LIVENESS
        }
    }
}

/// Where the bulk bytes of a call are, in guest addresses.
#[derive(Clone, Copy, Debug)]
pub struct Bulk {
    pub gpa: u64,
    pub len: u64,
}

/// A decoded reply record, copied out of shared memory.
pub struct Reply {
    pub result: CuResult,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn parse<T: FromBytes + KnownLayout + Immutable + Copy>(&self) -> Result<T, CuResult> {
        if !self.result.is_ok() {
            return Err(self.result);
        }
        T::read_from_prefix(&self.body)
            .map(|(t, _)| t)
            .map_err(|_| CuResult::UNKNOWN)
    }

    pub fn ok(&self) -> Result<(), CuResult> {
        if self.result.is_ok() {
            Ok(())
        } else {
            Err(self.result)
        }
    }
}

struct Batch {
    buf: usize,
    pos: usize,
    ncalls: u32,
    data_in: Vec<Seg>,
    data_in_len: u64,
    data_out: Vec<Seg>,
    data_out_len: u64,
}

struct Inner {
    link: Box<dyn Transport>,
    /// The transport's batching and placement policy (read once at open).
    policy: Policy,
    msg_bufs: Vec<SharedBuf>,
    free_bufs: Vec<usize>,
    /// Message buffer of each chain in flight, by head index.
    inflight: Vec<Option<usize>>,
    inflight_count: usize,
    /// Used length of completed synchronous chains, by head index.
    done: Vec<Option<u32>>,
    reply: SharedBuf,
    staging: [SharedBuf; 2],
    /// Small reply buffers for the two staged copies that may be in flight.
    staged_replies: [SharedBuf; 2],
    batch: Batch,
    seq: u64,
    dead: bool,
    /// Since when the batch has been kept back while the device was busy.
    held_since: Option<Instant>,
    /// The thread that sends batches kept back for longer than [`HOLD`].
    flusher: Option<std::thread::Thread>,
}

pub struct Connection {
    inner: Mutex<Inner>,
}

fn transport_error(e: impl std::fmt::Display) -> CuResult {
    crate::log_error(&format!("vGPU transport failed: {e}"));
    CuResult::UNKNOWN
}

impl Connection {
    pub fn open_virtio_user(path: &std::path::Path) -> Result<Self, String> {
        let vu = VirtioUserTransport::connect(path, liveness())
            .map_err(|e| vgpu_protocol::error_chain(&e))?;
        Self::open(Box::new(vu))
    }

    /// Opens the guest kernel driver's device node (the default inside a VM).
    pub fn open_kmod(path: &std::path::Path) -> Result<Self, String> {
        let transport =
            KmodTransport::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::open(Box::new(transport))
    }

    fn open(mut link: Box<dyn Transport>) -> Result<Self, String> {
        let mut alloc = |len| link.alloc(len).map_err(|e| vgpu_protocol::error_chain(&e));
        let mut msg_bufs = Vec::with_capacity(MSG_BUFFERS);
        for _ in 0..MSG_BUFFERS {
            msg_bufs.push(alloc(MSG_BYTES)?);
        }
        let reply = alloc(REPLY_BYTES)?;
        let staging = [alloc(STAGING_BYTES)?, alloc(STAGING_BYTES)?];
        let staged_replies = [alloc(4096)?, alloc(4096)?];
        let qs = MAX_HEADS;
        let policy = link.policy();
        Ok(Self {
            inner: Mutex::new(Inner {
                link,
                policy,
                msg_bufs,
                free_bufs: (1..MSG_BUFFERS).rev().collect(),
                inflight: vec![None; qs],
                inflight_count: 0,
                done: vec![None; qs],
                reply,
                staging,
                staged_replies,
                batch: Batch {
                    buf: 0,
                    pos: size_of::<vgpu_protocol::MsgHeader>(),
                    ncalls: 0,
                    data_in: Vec::with_capacity(MAX_DATA_SEGS),
                    data_in_len: 0,
                    data_out: Vec::with_capacity(MAX_DATA_SEGS),
                    data_out_len: 0,
                },
                seq: 0,
                dead: false,
                held_since: None,
                flusher: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a fire-and-forget call; errors surface at the next synchronising call.
    #[allow(clippy::too_many_arguments)]
    pub fn call_async<T: IntoBytes + Immutable>(
        &self,
        op: Opcode,
        flags: u16,
        body: &T,
        tail_len: usize,
        fill: impl FnOnce(&mut [u8]),
        data_in: Option<Bulk>,
        data_out: Option<Bulk>,
    ) -> Result<(), CuResult> {
        let mut g = self.lock();
        g.append(op, flags, body, tail_len, fill, data_in, data_out)?;
        g.kick_if_idle()
    }

    /// Sends a call (after everything batched before it) and waits for its reply.
    pub fn call<T: IntoBytes + Immutable>(
        &self,
        op: Opcode,
        body: &T,
        tail: &[u8],
        data_in: Option<Bulk>,
        data_out: Option<Bulk>,
    ) -> Result<Reply, CuResult> {
        self.lock().call(op, 0, body, tail, data_in, data_out)
    }

    /// Sends everything batched so far.
    pub fn flush(&self) -> Result<(), CuResult> {
        let mut g = self.lock();
        g.flush_pending()
    }

    /// Allocates memory the device can reach directly (shared with the daemon over
    /// virtio-user; ordinary memory that the kernel driver pins per request in a VM).
    pub fn alloc_shared(&self, len: usize) -> Result<SharedBuf, CuResult> {
        let mut g = self.lock();
        if g.dead {
            return Err(DEVICE_UNAVAILABLE);
        }
        match g.link.alloc(len) {
            Ok(b) => Ok(b),
            Err(e) if g.link.is_gone() => Err(g.die(&e)),
            Err(_) => Err(CuResult::OUT_OF_MEMORY),
        }
    }

    /// Whether the vGPU is gone (every call fails with `CUDA_ERROR_DEVICE_UNAVAILABLE`).
    pub fn is_dead(&self) -> bool {
        DEAD.load(Ordering::Acquire)
    }

    pub fn free_shared(&self, buf: SharedBuf) {
        self.lock().link.free(buf);
    }

    /// Copies `n` bytes from host memory `src` to device address `dst`, on `stream` or (with
    /// `None`) synchronously; see `copy.rs` for where the bytes travel from.
    ///
    /// # Safety
    /// `src` must be readable for `n` bytes and unchanged until the copy has read them.
    pub unsafe fn copy_htod(
        &self,
        ctx: u64,
        dst: u64,
        src: *const u8,
        n: usize,
        stream: Option<u64>,
    ) -> Result<(), CuResult> {
        // SAFETY: the caller's contract.
        unsafe { self.lock().copy_htod(ctx, dst, src, n, stream) }
    }

    /// Copies `n` bytes from device address `src` to host memory `dst`, on `stream` or (with
    /// `None`) synchronously.
    ///
    /// # Safety
    /// `dst` must be writable for `n` bytes until the copy has written them.
    pub unsafe fn copy_dtoh(
        &self,
        ctx: u64,
        dst: *mut u8,
        src: u64,
        n: usize,
        stream: Option<u64>,
    ) -> Result<(), CuResult> {
        // SAFETY: the caller's contract.
        unsafe { self.lock().copy_dtoh(ctx, dst, src, n, stream) }
    }

    /// A synchronous call whose data-in is `data` (copied into memory the device reaches for
    /// the call's duration, so `data` may be anywhere).
    pub fn call_with_data<T: IntoBytes + Immutable>(
        &self,
        op: Opcode,
        body: &T,
        data: &[u8],
    ) -> Result<Reply, CuResult> {
        let staging = self.alloc_shared(data.len())?;
        // SAFETY: the shared buffer has room for `data` and is ours until freed below.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), staging.hva, data.len()) };
        let reply = self.flush().and_then(|()| {
            self.call(
                op,
                body,
                &[],
                Some(Bulk {
                    gpa: staging.gpa,
                    len: data.len() as u64,
                }),
                None,
            )
        });
        self.free_shared(staging);
        reply
    }
}

impl Inner {
    fn call<T: IntoBytes + Immutable>(
        &mut self,
        op: Opcode,
        call_flags: u16,
        body: &T,
        tail: &[u8],
        data_in: Option<Bulk>,
        data_out: Option<Bulk>,
    ) -> Result<Reply, CuResult> {
        self.append(
            op,
            call_flags,
            body,
            tail.len(),
            |t| t.copy_from_slice(tail),
            data_in,
            data_out,
        )?;
        let head = self.flush_with(Some(self.reply), REPLY_BYTES)?;
        self.wait(head)?;
        self.last_reply(op, self.reply, REPLY_BYTES)
    }

    /// Appends a call whose body needs the data-in and data-out offsets its bulk bytes will
    /// have (`make(in_offset, out_offset)`), flushing first if the batch is full.
    fn append_bulk<T: IntoBytes + Immutable>(
        &mut self,
        op: Opcode,
        call_flags: u16,
        make: impl FnOnce(u64, u64) -> T,
        data_in: Option<Bulk>,
        data_out: Option<Bulk>,
    ) -> Result<(), CuResult> {
        let segs = usize::from(data_in.is_some()) + usize::from(data_out.is_some());
        if self.batch.pos + Encoder::record_len(size_of::<T>(), 0) > MSG_BYTES
            || self.batch.data_in.len() + self.batch.data_out.len() + segs > MAX_DATA_SEGS
        {
            self.flush(false)?;
        }
        let body = make(self.batch.data_in_len, self.batch.data_out_len);
        self.append(op, call_flags, &body, 0, |_| {}, data_in, data_out)
    }

    /// Sends the batch, whose last call is `op`, and waits for that call's result.
    fn send_and_wait(&mut self, op: Opcode) -> Result<(), CuResult> {
        let head = self.flush_with(Some(self.reply), REPLY_BYTES)?;
        self.wait(head)?;
        self.last_reply(op, self.reply, REPLY_BYTES)?.ok()
    }

    /// Sends the batch with reply buffer `slot` of the staged replies; returns the head.
    fn flush_staged(&mut self, slot: usize) -> Result<u16, CuResult> {
        let buf = self.staged_replies[slot];
        self.flush_with(Some(buf), buf.len)
    }

    /// Waits for a staged chain and returns the result of its last call.
    fn wait_staged(&mut self, head: u16, slot: usize, op: Opcode) -> Result<(), CuResult> {
        self.wait(head)?;
        let buf = self.staged_replies[slot];
        self.last_reply(op, buf, buf.len)?.ok()
    }

    /// Sends the batch (fire-and-forget) if it holds anything.
    fn flush_pending(&mut self) -> Result<(), CuResult> {
        if self.batch.ncalls > 0 {
            self.flush(false)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn append<T: IntoBytes + Immutable>(
        &mut self,
        op: Opcode,
        flags: u16,
        body: &T,
        tail_len: usize,
        fill: impl FnOnce(&mut [u8]),
        data_in: Option<Bulk>,
        data_out: Option<Bulk>,
    ) -> Result<(), CuResult> {
        if self.dead {
            return Err(DEVICE_UNAVAILABLE);
        }
        if crate::tracing() {
            crate::log_error(&format!(
                "trace: {op:?} flags={flags:#x} in={data_in:?} out={data_out:?}"
            ));
        }
        let need = Encoder::record_len(size_of_val(body), tail_len);
        if need > MSG_BYTES - size_of::<vgpu_protocol::MsgHeader>() {
            return Err(CuResult::INVALID_VALUE);
        }
        let segs_needed = usize::from(data_in.is_some_and(|d| d.len > 0))
            + usize::from(data_out.is_some_and(|d| d.len > 0));
        if self.batch.pos + need > MSG_BYTES
            || self.batch.data_in.len() + self.batch.data_out.len() + segs_needed > MAX_DATA_SEGS
        {
            self.flush(false)?;
        }
        let buf = self.msg_bufs[self.batch.buf];
        // SAFETY: the batch buffer is shared memory owned by this connection and not in flight.
        let bytes = unsafe { std::slice::from_raw_parts_mut(buf.hva, MSG_BYTES) };
        let mut enc = Encoder::resume(bytes, self.batch.pos, self.batch.ncalls);
        enc.push_with(op as u16, flags, body, tail_len, fill)
            .map_err(|EncodeError::Full { .. }| CuResult::INVALID_VALUE)?;
        self.batch.pos = enc.len();
        self.batch.ncalls = enc.ncalls();
        if let Some(d) = data_in.filter(|d| d.len > 0) {
            self.batch.data_in.push(Seg {
                gpa: d.gpa,
                len: d.len as u32,
                writable: false,
            });
            self.batch.data_in_len += d.len;
        }
        if let Some(d) = data_out.filter(|d| d.len > 0) {
            self.batch.data_out.push(Seg {
                gpa: d.gpa,
                len: d.len as u32,
                writable: true,
            });
            self.batch.data_out_len += d.len;
        }
        Ok(())
    }

    /// Sends the batch as one chain, without a reply.
    fn flush(&mut self, want_reply: bool) -> Result<u16, CuResult> {
        debug_assert!(!want_reply);
        self.flush_with(None, 0)
    }

    /// Sends the batch as one chain; with a reply buffer the device answers every call in it.
    fn flush_with(&mut self, reply: Option<SharedBuf>, reply_len: usize) -> Result<u16, CuResult> {
        let want_reply = reply.is_some();
        let b = &mut self.batch;
        let buf = self.msg_bufs[b.buf];
        // SAFETY: as in `append`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(buf.hva, MSG_BYTES) };
        let enc = Encoder::resume(bytes, b.pos, b.ncalls);
        self.seq += 1;
        let resp_cap = if want_reply { reply_len as u32 } else { 0 };
        let reply_gpa = reply.map_or(0, |r| r.gpa);
        if let Some(r) = reply {
            // A reply the device never writes must not be read as the previous one: clear the
            // magic so that `last_reply` refuses it (an error at once, not a stale answer).
            // SAFETY: the reply buffer is ours and not in flight (its last chain completed).
            unsafe { std::ptr::write_bytes(r.hva, 0, r.len.min(16)) };
        }
        let f = if want_reply { flags::WANT_REPLY } else { 0 };
        let len = enc.finish(f, 0, resp_cap, self.seq);
        let mut segs: [Seg; MAX_DATA_SEGS + 2] = [Seg {
            gpa: 0,
            len: 0,
            writable: false,
        }; MAX_DATA_SEGS + 2];
        let mut n = 0;
        segs[n] = Seg {
            gpa: buf.gpa,
            len: len as u32,
            writable: false,
        };
        n += 1;
        for s in b
            .data_in
            .iter()
            .chain(
                std::iter::once(&Seg {
                    gpa: reply_gpa,
                    len: resp_cap,
                    writable: true,
                })
                .filter(|_| want_reply),
            )
            .chain(b.data_out.iter())
        {
            segs[n] = *s;
            n += 1;
        }
        let used_buf = b.buf;
        // Wait for room on the ring and for a free message buffer for the next batch.
        let submitted = loop {
            self.reap();
            if self.link.has_room(n) && !self.free_bufs.is_empty() {
                // SAFETY: every segment names memory the application (or we) own until the
                // chain completes, as the driver API requires of copy buffers.
                match unsafe { self.link.submit(&segs[..n], len, resp_cap as usize) } {
                    Ok(s) => break s,
                    Err(e) => {
                        // The batch is dropped; its buffer is free again.
                        self.free_bufs.push(used_buf);
                        self.reset_batch();
                        return Err(self.fail(e));
                    }
                }
            }
            if let Err(e) = self.link.wait() {
                return Err(self.fail(e));
            }
        };
        let head = usize::from(submitted.head);
        match submitted.completed {
            Some(len) => {
                // Completed in `submit`: its message buffer is free already.
                self.free_bufs.push(used_buf);
                self.done[head] = Some(len);
            }
            None => {
                self.inflight[head] = Some(used_buf);
                self.inflight_count += 1;
                self.done[head] = None;
            }
        }
        self.reset_batch();
        Ok(submitted.head)
    }

    /// Starts a new, empty batch (in a free message buffer).
    fn reset_batch(&mut self) {
        self.held_since = None;
        let b = &mut self.batch;
        b.buf = self.free_bufs.pop().unwrap_or(0);
        b.pos = size_of::<vgpu_protocol::MsgHeader>();
        b.ncalls = 0;
        b.data_in.clear();
        b.data_in_len = 0;
        b.data_out.clear();
        b.data_out_len = 0;
    }

    /// Sends the batch now if the device is idle (so the GPU starts at once) or the batch is
    /// long; otherwise keeps collecting calls while the device works.
    fn kick_if_idle(&mut self) -> Result<(), CuResult> {
        self.reap();
        if self.inflight_count == 0 && self.policy.send_when_idle
            || self.batch.ncalls >= self.policy.batch_calls
        {
            self.flush(false)?;
        } else if self.batch.ncalls > 0 && self.held_since.is_none() {
            self.held_since = Some(Instant::now());
            self.wake_flusher();
        }
        Ok(())
    }

    /// Tells the flusher that a batch is being kept back (starting it the first time).
    fn wake_flusher(&mut self) {
        if let Some(t) = &self.flusher {
            t.unpark();
            return;
        }
        match std::thread::Builder::new()
            .name("vgpu-flush".into())
            .spawn(flusher)
        {
            Ok(handle) => self.flusher = Some(handle.thread().clone()),
            Err(e) => crate::log_error(&format!("cannot start the batch flusher: {e}")),
        }
    }

    /// A failed transport: the device is gone (the connection dies), or it refused this
    /// request alone (the batch is dropped, the connection lives).
    fn fail(&mut self, e: TransportError) -> CuResult {
        match e {
            TransportError::Refused(_) => {
                crate::log_error(&vgpu_protocol::error_chain(&e));
                CuResult::INVALID_VALUE
            }
            TransportError::NothingInFlight => transport_error(e),
            TransportError::Gone(_) | TransportError::Alloc(_) => self.die(&e),
        }
    }

    /// Marks the connection dead: this and every later call fail with
    /// `CUDA_ERROR_DEVICE_UNAVAILABLE` (the first failure is logged).
    fn die(&mut self, e: &TransportError) -> CuResult {
        if !self.dead {
            crate::log_error(&format!(
                "the vGPU is unavailable ({}); every CUDA call fails from now on",
                vgpu_protocol::error_chain(e)
            ));
        }
        self.dead = true;
        DEAD.store(true, Ordering::Release);
        DEVICE_UNAVAILABLE
    }

    fn reap(&mut self) {
        let Self {
            link,
            inflight,
            inflight_count,
            free_bufs,
            done,
            ..
        } = self;
        link.reap(&mut |head, len| {
            if let Some(buf) = inflight[usize::from(head)].take() {
                free_bufs.push(buf);
                *inflight_count -= 1;
            }
            done[usize::from(head)] = Some(len);
        });
    }

    /// Waits until chain `head` completes.
    fn wait(&mut self, head: u16) -> Result<u32, CuResult> {
        if self.dead {
            return Err(DEVICE_UNAVAILABLE);
        }
        loop {
            self.reap();
            if self.inflight[usize::from(head)].is_none()
                && let Some(len) = self.done[usize::from(head)].take()
            {
                return Ok(len);
            }
            if let Err(e) = self.link.wait() {
                return Err(self.fail(e));
            }
        }
    }

    /// The reply record of the last call in the reply buffer, which must be for `op`.
    fn last_reply(&mut self, op: Opcode, buf: SharedBuf, len: usize) -> Result<Reply, CuResult> {
        // SAFETY: the reply buffer is ours and the chain that wrote it has completed.
        let bytes = unsafe { std::slice::from_raw_parts(buf.hva, len) };
        let (_, records) = parse_response(bytes).map_err(transport_error)?;
        let last = records
            .filter_map(Result::ok)
            .last()
            .ok_or_else(|| transport_error("empty reply"))?;
        if last.opcode != op as u16 {
            // The daemon stopped at an earlier call it could not decode.
            return Ok(Reply {
                result: CuResult(last.result).max_err(),
                body: Vec::new(),
            });
        }
        if crate::tracing() {
            crate::log_error(&format!("trace: reply {op:?} -> {}", last.result));
        }
        let reply = Reply {
            result: CuResult(last.result),
            body: last.body.to_vec(),
        };
        if last.flags & reply_flags::CONSOLE_PENDING != 0 {
            self.drain_console();
        }
        Ok(reply)
    }

    /// Fetches what the GPU printed (device `printf`) and writes it to our stdout, as NVIDIA's
    /// driver does before the synchronising call returns. Failures lose output, not the call.
    fn drain_console(&mut self) {
        // At most 64 chunks of 1 MiB per synchronising call; the rest comes with the next.
        for _ in 0..64 {
            let body = calls::ConsoleRead {
                max: (1u32 << 20).into(),
                _pad: 0.into(),
            };
            if self
                .append(Opcode::ConsoleRead, 0, &body, 0, |_| {}, None, None)
                .is_err()
            {
                return;
            }
            let Ok(head) = self.flush_with(Some(self.reply), REPLY_BYTES) else {
                return;
            };
            if self.wait(head).is_err() {
                return;
            }
            // SAFETY: the reply buffer is ours and the chain that wrote it has completed.
            let bytes = unsafe { std::slice::from_raw_parts(self.reply.hva, REPLY_BYTES) };
            let Ok((_, records)) = parse_response(bytes) else {
                return;
            };
            let Some(Ok(last)) = records.last() else {
                return;
            };
            if last.opcode != Opcode::ConsoleRead as u16 || last.result != 0 {
                return;
            }
            write_stdout(last.body);
            if last.flags & reply_flags::CONSOLE_PENDING == 0 {
                return;
            }
        }
    }
}

/// The flusher thread: sends a batch that has been kept back for [`HOLD`]; sleeps while none
/// is. Ends when the connection dies.
fn flusher() {
    let d = loop {
        match crate::driver::driver() {
            Ok(d) => break d,
            // Started while `cuInit` is still connecting: the driver is about to exist.
            Err(CuResult::NOT_INITIALIZED) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return,
        }
    };
    loop {
        let wait = {
            let mut g = d.conn.lock();
            if g.dead {
                return;
            }
            match g.held_since.map(|t| t.elapsed()) {
                Some(age) if age < HOLD => Some(HOLD - age),
                Some(_) => {
                    // Errors of fire-and-forget calls surface at the next synchronising call;
                    // a dead connection fails every later call.
                    let _ = g.flush_pending();
                    g.held_since = None;
                    None
                }
                None => None,
            }
        };
        match wait {
            Some(w) => std::thread::park_timeout(w),
            None => std::thread::park(),
        }
    }
}

/// Writes through C's `stdout`, so device output and the program's own `printf` share one
/// buffer and keep their order, as with NVIDIA's driver.
fn write_stdout(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    unsafe extern "C" {
        static mut stdout: *mut libc::FILE;
    }
    // SAFETY: C's stdout is initialised before any CUDA call; fwrite copies from our slice.
    unsafe {
        libc::fwrite(bytes.as_ptr().cast(), 1, bytes.len(), stdout);
        libc::fflush(stdout);
    }
}

trait MaxErr {
    fn max_err(self) -> Self;
}

impl MaxErr for CuResult {
    fn max_err(self) -> Self {
        if self.is_ok() {
            CuResult::UNKNOWN
        } else {
            self
        }
    }
}

/// Builds the body of a call with a stream and the current context.
pub fn stream_arg(stream: u64, ctx: u64) -> calls::StreamArg {
    calls::StreamArg {
        stream: stream.into(),
        ctx: ctx.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vgpu_protocol::{ReplyWriter, parse_request};

    use crate::transport::Submitted;

    use super::*;

    /// What a [`Fake`] transport was handed for one chain.
    #[derive(Debug)]
    struct Sent {
        ops: Vec<u16>,
        /// (gpa, len) of each data-in segment, and its bytes.
        data_in: Vec<(u64, Vec<u8>)>,
        data_out: usize,
    }

    /// A device that answers every call at once with success, fills data-out with 0x5A, and
    /// reaches host bytes in place only inside `pinned`.
    struct Fake {
        policy: Policy,
        pinned: std::ops::Range<usize>,
        sent: Arc<Mutex<Vec<Sent>>>,
        next: u16,
    }

    impl Transport for Fake {
        fn policy(&self) -> Policy {
            self.policy
        }
        fn alloc(&mut self, len: usize) -> Result<SharedBuf, TransportError> {
            let buf: &'static mut [u8] = Vec::leak(vec![0u8; len.max(1)]);
            Ok(SharedBuf {
                hva: buf.as_mut_ptr(),
                gpa: buf.as_ptr() as u64,
                len,
            })
        }
        fn free(&mut self, _buf: SharedBuf) {}
        fn translate(&self, p: *const u8, len: usize) -> Option<u64> {
            let p = p as usize;
            (self.pinned.contains(&p) && p + len <= self.pinned.end).then_some(p as u64)
        }
        fn has_room(&self, _segs: usize) -> bool {
            true
        }
        unsafe fn submit(
            &mut self,
            segs: &[Seg],
            msg_len: usize,
            resp_cap: usize,
        ) -> Result<Submitted, TransportError> {
            // SAFETY: every segment names memory of the test's, valid for its length.
            let bytes =
                |s: &Seg| unsafe { std::slice::from_raw_parts(s.gpa as *const u8, s.len as usize) };
            let msg = &bytes(&segs[0])[..msg_len];
            let (hdr, calls) = parse_request(msg).expect("a well-formed message");
            let ops: Vec<u16> = calls.map(|c| c.unwrap().opcode).collect();
            let rest = &segs[1..];
            let data_in = rest
                .iter()
                .filter(|s| !s.writable)
                .map(|s| (s.gpa, bytes(s).to_vec()))
                .collect();
            let mut writable = rest.iter().filter(|s| s.writable);
            if resp_cap > 0 {
                let r = writable.next().expect("a reply area");
                let mut buf = Vec::new();
                let mut w = ReplyWriter::new(&mut buf);
                for &op in &ops {
                    w.push_status(op, 0);
                }
                w.finish(hdr.seq.get(), 0);
                // SAFETY: the reply area is the connection's, `r.len` bytes long.
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), r.gpa as *mut u8, buf.len()) };
            }
            let mut data_out = 0;
            for s in writable {
                // SAFETY: data-out names memory writable for its length.
                unsafe { std::ptr::write_bytes(s.gpa as *mut u8, 0x5A, s.len as usize) };
                data_out += s.len as usize;
            }
            self.sent.lock().unwrap().push(Sent {
                ops,
                data_in,
                data_out,
            });
            let head = self.next;
            self.next = (self.next + 1) % MAX_HEADS as u16;
            Ok(Submitted {
                head,
                completed: Some(0),
            })
        }
        fn reap(&mut self, _done: &mut dyn FnMut(u16, u32)) {}
        fn wait(&mut self) -> Result<(), TransportError> {
            Err(TransportError::NothingInFlight)
        }
        fn is_gone(&self) -> bool {
            false
        }
    }

    fn fake(policy: Policy, pinned: std::ops::Range<usize>) -> (Connection, Arc<Mutex<Vec<Sent>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let t = Fake {
            policy,
            pinned,
            sent: sent.clone(),
            next: 0,
        };
        (Connection::open(Box::new(t)).unwrap(), sent)
    }

    const POLICY: Policy = Policy {
        batch_calls: 3,
        send_when_idle: false,
        copies_complete_in_request: false,
        max_direct_piece: 1 << 30,
    };

    /// Mutations caught: ignoring `translate` (everything staged) fails the first half;
    /// skipping the copy into or out of a staging buffer, or a wrong piece size, the second.
    #[test]
    fn copies_go_in_place_where_the_transport_names_the_bytes_and_are_staged_elsewhere() {
        let pinned: &'static mut [u8] = Vec::leak(vec![7u8; 4096]);
        let range = pinned.as_ptr() as usize..pinned.as_ptr() as usize + pinned.len();
        let (conn, sent) = fake(POLICY, range);
        // SAFETY: `pinned` is readable for its length.
        unsafe { conn.copy_htod(1, 0x1000, pinned.as_ptr(), pinned.len(), None) }.unwrap();
        {
            let sent = sent.lock().unwrap();
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].ops, vec![Opcode::MemcpyHtoD as u16]);
            assert_eq!(sent[0].data_in.len(), 1);
            assert_eq!(sent[0].data_in[0].0, pinned.as_ptr() as u64, "in place");
        }
        sent.lock().unwrap().clear();

        let n = 2 * STAGING_BYTES + 100;
        let src: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        // SAFETY: `src` is readable for `n` bytes.
        unsafe { conn.copy_htod(1, 0x1000, src.as_ptr(), n, None) }.unwrap();
        {
            let sent = sent.lock().unwrap();
            assert_eq!(sent.len(), 3, "three staged pieces");
            let mut seen = Vec::new();
            for s in sent.iter() {
                assert_eq!(s.data_in.len(), 1);
                assert_ne!(s.data_in[0].0, src.as_ptr() as u64, "staged");
                seen.extend_from_slice(&s.data_in[0].1);
            }
            assert!(
                seen == src,
                "the staged pieces carry the source bytes in order"
            );
        }
        sent.lock().unwrap().clear();

        let mut dst = vec![0u8; STAGING_BYTES + 3];
        // SAFETY: `dst` is writable for its length.
        unsafe { conn.copy_dtoh(1, dst.as_mut_ptr(), 0x1000, dst.len(), None) }.unwrap();
        assert_eq!(sent.lock().unwrap().len(), 2);
        assert!(
            dst.iter().all(|&b| b == 0x5A),
            "staged data-out copied back"
        );
    }

    /// Mutations caught: ignoring `send_when_idle` or `batch_calls`.
    #[test]
    fn batches_follow_the_transports_policy() {
        let (conn, sent) = fake(POLICY, 0..0);
        let body = stream_arg(0, 1);
        for _ in 0..2 {
            conn.call_async(Opcode::StreamSynchronize, 0, &body, 0, |_| {}, None, None)
                .unwrap();
        }
        assert!(
            sent.lock().unwrap().is_empty(),
            "kept back below batch_calls"
        );
        conn.call_async(Opcode::StreamSynchronize, 0, &body, 0, |_| {}, None, None)
            .unwrap();
        assert_eq!(sent.lock().unwrap().len(), 1);
        assert_eq!(sent.lock().unwrap()[0].ops.len(), 3);

        let eager = Policy {
            send_when_idle: true,
            ..POLICY
        };
        let (conn, sent) = fake(eager, 0..0);
        conn.call_async(Opcode::StreamSynchronize, 0, &body, 0, |_| {}, None, None)
            .unwrap();
        assert_eq!(sent.lock().unwrap().len(), 1, "sent at once while idle");
        assert_eq!(sent.lock().unwrap()[0].data_out, 0);
    }

    #[test]
    fn the_liveness_bound_comes_from_the_environment_or_defaults_to_five_seconds() {
        assert_eq!(parse_liveness(None), Duration::from_secs(5));
        assert_eq!(parse_liveness(Some("2")), Duration::from_secs(2));
        assert_eq!(parse_liveness(Some(" 0.5 ")), Duration::from_millis(500));
        for bad in ["0", "-1", "soon", "inf", "NaN", ""] {
            assert_eq!(parse_liveness(Some(bad)), Duration::from_secs(5), "{bad}");
        }
    }
}

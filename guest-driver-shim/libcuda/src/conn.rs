//! The shim's connection to the vGPU: batching of fire-and-forget calls, synchronous calls,
//! and bulk data placement (in place for shared memory, staged for ordinary memory).
//!
//! Every call goes through one mutex per connection. A lock-free per-thread batch would be
//! faster under contention but would break CUDA's stream ordering across threads (a thread
//! may launch on a stream after another thread's launch on it), so the order of submission
//! is the order of the lock.

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use vgpu_protocol::{
    CuResult, EncodeError, Encoder, Opcode, call_flags, calls, flags, parse_response,
};
use vgpu_virtio_user::{Options, Seg, SharedBuf, VirtioUser};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes of one batch message.
const MSG_BYTES: usize = 256 << 10;
/// Batch message buffers (one per chain in flight).
const MSG_BUFFERS: usize = 16;
/// Bytes of the reply buffer of synchronous calls.
const REPLY_BYTES: usize = 4 << 20;
/// Bytes of each of the two staging buffers for copies from ordinary memory.
pub const STAGING_BYTES: usize = 8 << 20;
/// Calls in a batch before it is sent even while the device is busy.
const BATCH_CALLS: u32 = 128;
/// Data segments in one chain.
const MAX_DATA_SEGS: usize = 48;
/// How long a synchronous call waits before the device is declared dead.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3600);

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

pub struct Inner {
    vu: VirtioUser,
    msg_bufs: Vec<SharedBuf>,
    free_bufs: Vec<usize>,
    /// Message buffer of each chain in flight, by head index.
    inflight: Vec<Option<usize>>,
    inflight_count: usize,
    /// Used length of completed synchronous chains, by head index.
    done: Vec<Option<u32>>,
    reply: SharedBuf,
    pub staging: [SharedBuf; 2],
    /// Small reply buffers for the two staged copies that may be in flight.
    pub staged_replies: [SharedBuf; 2],
    batch: Batch,
    seq: u64,
    dead: bool,
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
        let mut vu = VirtioUser::connect(path, Options::default(), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mut msg_bufs = Vec::with_capacity(MSG_BUFFERS);
        for _ in 0..MSG_BUFFERS {
            msg_bufs.push(vu.alloc(MSG_BYTES, 4096).map_err(|e| e.to_string())?);
        }
        let reply = vu.alloc(REPLY_BYTES, 4096).map_err(|e| e.to_string())?;
        let staging = [
            vu.alloc(STAGING_BYTES, 4096).map_err(|e| e.to_string())?,
            vu.alloc(STAGING_BYTES, 4096).map_err(|e| e.to_string())?,
        ];
        let staged_replies = [
            vu.alloc(4096, 4096).map_err(|e| e.to_string())?,
            vu.alloc(4096, 4096).map_err(|e| e.to_string())?,
        ];
        let qs = 256;
        Ok(Self {
            inner: Mutex::new(Inner {
                vu,
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
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a fire-and-forget call; errors surface at the next synchronising call.
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

    /// Allocates memory shared with the device.
    pub fn alloc_shared(&self, len: usize) -> Result<SharedBuf, CuResult> {
        self.lock()
            .vu
            .alloc(len, 4096)
            .map_err(|_| CuResult::OUT_OF_MEMORY)
    }

    pub fn free_shared(&self, buf: SharedBuf) {
        self.lock().vu.free(buf);
    }
}

impl Inner {
    /// The guest address of host memory if it is shared with the device.
    pub fn translate(&self, p: *const u8, len: usize) -> Option<u64> {
        self.vu.translate(p, len)
    }

    pub fn call<T: IntoBytes + Immutable>(
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
    pub fn append_bulk<T: IntoBytes + Immutable>(
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
    pub fn send_and_wait(&mut self, op: Opcode) -> Result<(), CuResult> {
        let head = self.flush_with(Some(self.reply), REPLY_BYTES)?;
        self.wait(head)?;
        self.last_reply(op, self.reply, REPLY_BYTES)?.ok()
    }

    /// Sends the batch with reply buffer `slot` of the staged replies; returns the head.
    pub fn flush_staged(&mut self, slot: usize) -> Result<u16, CuResult> {
        let buf = self.staged_replies[slot];
        self.flush_with(Some(buf), buf.len)
    }

    /// Waits for a staged chain and returns the result of its last call.
    pub fn wait_staged(&mut self, head: u16, slot: usize, op: Opcode) -> Result<(), CuResult> {
        self.wait(head)?;
        let buf = self.staged_replies[slot];
        self.last_reply(op, buf, buf.len)?.ok()
    }

    /// Sends the batch (fire-and-forget) if it holds anything.
    pub fn flush_pending(&mut self) -> Result<(), CuResult> {
        if self.batch.ncalls > 0 {
            self.flush(false)?;
        }
        Ok(())
    }

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
            return Err(CuResult::UNKNOWN);
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
        while self.vu.free_descriptors() < n || self.free_bufs.is_empty() {
            self.reap();
            if self.vu.free_descriptors() >= n && !self.free_bufs.is_empty() {
                break;
            }
            self.vu
                .wait_for_used(SYNC_TIMEOUT)
                .map_err(|e| self.die(e))?;
        }
        let head = self.vu.submit(&segs[..n]).map_err(|e| self.die(e))?;
        self.inflight[usize::from(head)] = Some(used_buf);
        self.inflight_count += 1;
        self.done[usize::from(head)] = None;
        let b = &mut self.batch;
        b.buf = self.free_bufs.pop().unwrap_or(0);
        b.pos = size_of::<vgpu_protocol::MsgHeader>();
        b.ncalls = 0;
        b.data_in.clear();
        b.data_in_len = 0;
        b.data_out.clear();
        b.data_out_len = 0;
        Ok(head)
    }

    /// Sends the batch now if the device is idle (so the GPU starts at once) or the batch is
    /// long; otherwise keeps collecting calls while the device works.
    pub fn kick_if_idle(&mut self) -> Result<(), CuResult> {
        self.reap();
        if self.inflight_count == 0 || self.batch.ncalls >= BATCH_CALLS {
            self.flush(false)?;
        }
        Ok(())
    }

    fn die(&mut self, e: impl std::fmt::Display) -> CuResult {
        self.dead = true;
        transport_error(e)
    }

    pub fn reap(&mut self) {
        let Self {
            vu,
            inflight,
            inflight_count,
            free_bufs,
            done,
            ..
        } = self;
        vu.reap(|head, len| {
            if let Some(buf) = inflight[usize::from(head)].take() {
                free_bufs.push(buf);
                *inflight_count -= 1;
            }
            done[usize::from(head)] = Some(len);
        });
    }

    /// Waits until chain `head` completes.
    pub fn wait(&mut self, head: u16) -> Result<u32, CuResult> {
        loop {
            self.reap();
            if self.inflight[usize::from(head)].is_none() {
                if let Some(len) = self.done[usize::from(head)].take() {
                    return Ok(len);
                }
            }
            self.vu
                .wait_for_used(SYNC_TIMEOUT)
                .map_err(|e| self.die(e))?;
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
        Ok(Reply {
            result: CuResult(last.result),
            body: last.body.to_vec(),
        })
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

/// The `ASYNC` call flag when `yes`.
pub fn async_flag(yes: bool) -> u16 {
    if yes { call_flags::ASYNC } else { 0 }
}

//! The transport-free core of `vhost-gpu`: it decodes a message, checks every field against the
//! calling client's own objects, runs the calls on a [`Gpu`] and encodes the reply. It knows
//! nothing about virtio or sockets: adapters hand it the message bytes and the host memory
//! segments that make up the data-in and data-out streams.

pub mod cuda;
pub mod gpu;
mod handles;
pub use vgpu_cuda_image as image;
mod ops;
pub mod sim;

use std::collections::{BTreeMap, HashMap};

use gpu::{DeviceProps, Gpu, GpuKind, GpuResult, HostSeg};
use handles::Slab;
use log::{info, warn};
pub use ops::forward::ForwardCall;
use vgpu_protocol::{
    BUILD_ID, CuResult, DecodeError, MsgHeader, Opcode, PROTOCOL_MAJOR, PROTOCOL_MINOR,
    ReplyWriter, call_flags,
    calls::{self, BUILD_ID_LEN, HELLO_MESSAGE_LEN, fill_str},
    caps, flags, parse_request,
};
use zerocopy::FromBytes;

/// Limits of one vGPU slice, enforced here.
#[derive(Clone, Copy, Debug, Default)]
pub struct SliceLimits {
    /// Device memory the VM may hold, in bytes; `None` means the whole device.
    pub mem_limit: Option<u64>,
    /// SMs of the slice (enforced by the backend's compute mode; reported to the guest).
    pub sm_count: Option<u32>,
    /// Device memory charged for each context the VM creates (the driver's own use).
    pub ctx_overhead: u64,
}

/// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`.
const ATTR_MULTIPROCESSOR_COUNT: usize = 16;

/// The bulk-data segments of one message (data-in or data-out), in stream order.
#[derive(Clone, Copy)]
pub struct DataStream<'a> {
    segs: &'a [HostSeg],
    total: u64,
}

impl<'a> DataStream<'a> {
    pub const EMPTY: DataStream<'static> = DataStream {
        segs: &[],
        total: 0,
    };

    pub fn new(segs: &'a [HostSeg]) -> Self {
        Self {
            segs,
            total: segs.iter().map(|s| s.len as u64).sum(),
        }
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Calls `f(piece, offset_within_range)` for each host piece of `[offset, offset+len)`.
    fn walk(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(HostSeg, u64) -> GpuResult<()>,
    ) -> GpuResult<()> {
        let end = offset.checked_add(len).ok_or(CuResult::INVALID_VALUE)?;
        if end > self.total {
            return Err(CuResult::INVALID_VALUE);
        }
        let mut seg_start = 0u64;
        for seg in self.segs {
            let seg_end = seg_start + seg.len as u64;
            let lo = offset.max(seg_start);
            let hi = end.min(seg_end);
            if lo < hi {
                // SAFETY: `lo - seg_start < seg.len`, so the pointer stays inside the segment.
                let ptr = unsafe { seg.ptr.add((lo - seg_start) as usize) };
                f(
                    HostSeg {
                        ptr,
                        len: (hi - lo) as usize,
                    },
                    lo - offset,
                )?;
            }
            if seg_end >= end {
                break;
            }
            seg_start = seg_end;
        }
        Ok(())
    }

    /// Copies `[offset, offset+len)` of the stream into `out`.
    pub fn gather(&self, offset: u64, len: u64, out: &mut Vec<u8>) -> GpuResult<()> {
        out.clear();
        self.walk(offset, len, |seg, _| {
            // SAFETY: `walk` yields pieces inside the segments, which are readable for the
            // duration of the request.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(seg.ptr, seg.len) });
            Ok(())
        })
    }
}

impl DataStream<'_> {
    /// Copies `bytes` into the stream at `offset`.
    pub fn scatter(&self, offset: u64, bytes: &[u8]) -> GpuResult<()> {
        self.walk(offset, bytes.len() as u64, |seg, rel| {
            let src = &bytes[rel as usize..rel as usize + seg.len];
            // SAFETY: `walk` yields pieces inside the segments, which are writable for the
            // duration of the request; `src` is exactly as long as the piece.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), seg.ptr, seg.len) };
            Ok(())
        })
    }
}

/// What the adapter must do after [`Executor::execute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes of reply in the reply buffer (0 when none is wanted).
    pub reply_len: usize,
    /// Bytes written into the data-out stream.
    pub data_out_len: u64,
}

enum Object {
    Ctx {
        raw: u64,
    },
    Stream {
        raw: u64,
        ctx: u64,
    },
    Event {
        raw: u64,
        ctx: u64,
    },
    Module {
        raw: u64,
        ctx: u64,
        funcs: Vec<u64>,
        /// Bytes charged to the slice for the module's code and data.
        charged: u64,
    },
    Func {
        raw: u64,
        ctx: u64,
        layout: Vec<(u32, u32)>,
        params_len: u32,
    },
    Graph {
        raw: u64,
        ctx: u64,
    },
    GraphExec {
        raw: u64,
        ctx: u64,
    },
}

impl Object {
    fn ctx(&self) -> Option<u64> {
        match self {
            Object::Ctx { .. } => None,
            Object::Stream { ctx, .. }
            | Object::Event { ctx, .. }
            | Object::Module { ctx, .. }
            | Object::Func { ctx, .. }
            | Object::Graph { ctx, .. }
            | Object::GraphExec { ctx, .. } => Some(*ctx),
        }
    }
}

struct Allocation {
    size: u64,
    ctx: u64,
}

#[derive(Default)]
struct Client {
    greeted: bool,
    objects: Slab<Object>,
    allocations: BTreeMap<u64, Allocation>,
    /// Module globals the client may copy to and from: base -> (size, module handle).
    globals: BTreeMap<u64, (u64, u64)>,
    primary: Option<u64>,
    primary_refs: u32,
    primary_flags: u32,
    deferred: Option<CuResult>,
    mem_used: u64,
}

impl Client {
    fn owns_range(&self, dptr: u64, len: u64) -> bool {
        let Some(end) = dptr.checked_add(len) else {
            return false;
        };
        let within = |base: u64, size: u64| dptr >= base && end <= base + size;
        self.allocations
            .range(..=dptr)
            .next_back()
            .is_some_and(|(&b, a)| within(b, a.size))
            || self
                .globals
                .range(..=dptr)
                .next_back()
                .is_some_and(|(&b, &(s, _))| within(b, s))
    }
}

/// Counts of what a client held when it went away (logged, and checked by tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Freed {
    pub allocations: usize,
    pub bytes: u64,
    pub objects: usize,
}

impl std::ops::AddAssign for Freed {
    fn add_assign(&mut self, f: Freed) {
        self.allocations += f.allocations;
        self.bytes += f.bytes;
        self.objects += f.objects;
    }
}

/// A client as the executor knows it: the frontend's namespace in the high half (one per
/// vhost-user connection, so two connections' clients never meet) and the guest's id in the low.
pub type ClientKey = u64;

fn client_key(namespace: u32, client: u32) -> ClientKey {
    (u64::from(namespace) << 32) | u64::from(client)
}

/// `frontend:client`, as logs name a client.
fn show(key: ClientKey) -> String {
    format!("{}:{}", key >> 32, key & u64::from(u32::MAX))
}

/// Runs the calls of every client of one vGPU.
pub struct Executor {
    gpu: Box<dyn Gpu>,
    limits: SliceLimits,
    clients: HashMap<ClientKey, Client>,
    mem_used: u64,
    current_ctx: u64,
    /// The thread `current_ctx` is current on (CUDA's current context is per thread, and
    /// several connections' threads take turns with the executor).
    ctx_thread: Option<std::thread::ThreadId>,
    props: Option<DeviceProps>,
    scratch: Vec<u8>,
    console: Option<Box<dyn Console>>,
    /// The slice's ledger when it spans several processes (one per guest client): every
    /// charge is reserved there first, so the limit holds across them.
    shared_ledger: Option<Box<dyn SharedLedger>>,
}

/// A memory ledger kept outside this executor, shared by every process that serves one slice.
/// The executor reserves each charge there before taking it; what it releases is reported
/// by its owner from [`Executor::mem_used`] after each message.
pub trait SharedLedger: Send {
    /// Takes `bytes` from the slice; false when the slice would go over its limit.
    fn reserve(&mut self, bytes: u64) -> bool;
    /// Bytes the whole slice holds now (every process of it).
    fn slice_used(&mut self) -> u64;
}

/// What the GPU's driver prints for the guests (device-side `printf`, which the driver writes
/// to the daemon's stdout at synchronising calls). The daemon captures it; the executor hands
/// it to the client whose synchronising call comes next (one VM's processes share it).
pub trait Console: Send + Sync {
    /// Collects what the driver has written so far; `synced` says a synchronising call just
    /// completed, so output may be waiting that no reader has seen yet. True when bytes wait.
    fn poll(&mut self, synced: bool) -> bool;
    /// Takes up to `max` waiting bytes.
    fn take(&mut self, max: usize) -> Vec<u8>;
}

/// Most console bytes one `ConsoleRead` returns (the guest's reply buffer holds more).
const CONSOLE_CHUNK: usize = 1 << 20;

type CallResult = Result<(), CuResult>;

impl Executor {
    pub fn new(gpu: Box<dyn Gpu>, limits: SliceLimits) -> Self {
        Self {
            gpu,
            limits,
            clients: HashMap::new(),
            mem_used: 0,
            current_ctx: 0,
            ctx_thread: None,
            props: None,
            scratch: Vec::new(),
            console: None,
            shared_ledger: None,
        }
    }

    /// Charges from now on are reserved in `ledger` first (see [`SharedLedger`]).
    pub fn set_shared_ledger(&mut self, ledger: Box<dyn SharedLedger>) {
        self.shared_ledger = Some(ledger);
    }

    /// Delivers the driver's printed output to the guests from now on.
    pub fn set_console(&mut self, console: Box<dyn Console>) {
        self.console = Some(console);
    }

    pub fn kind(&self) -> GpuKind {
        self.gpu.kind()
    }

    pub fn launches_recorded(&self) -> Option<u64> {
        self.gpu.launches_recorded()
    }

    /// Bytes of device memory held by all clients (the slice's ledger).
    pub fn mem_used(&self) -> u64 {
        self.mem_used
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Pins guest memory for direct copies. Failure is not fatal: copies still work, slower.
    pub fn register_host(&mut self, ptr: *mut u8, len: usize) -> bool {
        let ok = self.gpu.register_host(ptr, len).is_ok();
        self.current_ctx = 0;
        ok
    }

    pub fn unregister_host(&mut self, ptr: *mut u8) {
        let _ = self.gpu.unregister_host(ptr);
        self.current_ctx = 0;
    }

    /// Runs one message. `reply` is reused between calls to avoid allocating.
    ///
    /// A message that cannot be decoded at all gets an error reply when its header is good
    /// enough to say where a reply may go, and nothing otherwise; the daemon keeps serving.
    pub fn execute(
        &mut self,
        msg: &[u8],
        data_in: DataStream<'_>,
        data_out: DataStream<'_>,
        reply: &mut Vec<u8>,
    ) -> Outcome {
        self.execute_in(0, msg, data_in, data_out, reply)
    }

    /// Runs one message of the frontend `namespace` (see [`ClientKey`]).
    pub fn execute_in(
        &mut self,
        namespace: u32,
        msg: &[u8],
        data_in: DataStream<'_>,
        data_out: DataStream<'_>,
        reply: &mut Vec<u8>,
    ) -> Outcome {
        let me = std::thread::current().id();
        if self.ctx_thread != Some(me) {
            self.ctx_thread = Some(me);
            self.current_ctx = 0;
        }
        let (hdr, calls) = match parse_request(msg) {
            Ok(v) => v,
            Err(e) => return self.refuse(msg, &e, reply),
        };
        let client_id = client_key(namespace, hdr.client.get());
        if hdr.flags.get() & flags::CLIENT_CLOSE != 0 {
            self.close_client(client_id);
            return Outcome {
                reply_len: 0,
                data_out_len: 0,
            };
        }
        let want_reply = hdr.flags.get() & flags::WANT_REPLY != 0;
        let mut w = ReplyWriter::new(reply);
        let mut data_out_len = 0u64;
        let ncalls = hdr.ncalls.get() as usize;
        let mut last_opcode = 0;
        for (index, call) in calls.enumerate() {
            let call = match call {
                Ok(c) => c,
                Err(e) => {
                    warn!("client {}: malformed call record: {e}", show(client_id));
                    self.defer(client_id, CuResult::INVALID_VALUE);
                    w.push_status(0, CuResult::INVALID_VALUE.0);
                    break;
                }
            };
            let before = w.len();
            last_opcode = call.opcode;
            let result = match Opcode::from_u16(call.opcode) {
                Some(op) => {
                    let mut req = ops::Req {
                        client: client_id,
                        op,
                        flags: call.flags,
                        data_in,
                        data_out,
                        data_out_len: &mut data_out_len,
                        w: &mut w,
                        tail: &[],
                    };
                    ops::dispatch(self, &call, &mut req)
                }
                None => {
                    warn!(
                        "client {}: unknown opcode {:#06x}",
                        show(client_id),
                        call.opcode
                    );
                    Err(CuResult::NOT_SUPPORTED)
                }
            };
            let result = match result {
                Ok(()) => continue,
                Err(r) => r,
            };
            // The call failed: drop any partial record and report the error in its place.
            w.buffer().truncate(before);
            w.push_status(call.opcode, result.0);
            // Only the last call's result is read by a waiting guest: any earlier failure is
            // kept for the next synchronising call.
            let is_async = call.flags & call_flags::ASYNC != 0
                || Opcode::from_u16(call.opcode).is_some_and(Opcode::is_fire_and_forget);
            if is_async || !want_reply || index + 1 < ncalls {
                self.defer(client_id, result);
            }
        }
        if !want_reply {
            return Outcome {
                reply_len: 0,
                data_out_len,
            };
        }
        if let Some(console) = self.console.as_mut()
            && console.poll(Opcode::from_u16(last_opcode).is_some_and(Opcode::flushes_console))
        {
            w.flag_last(vgpu_protocol::reply_flags::CONSOLE_PENDING);
        }
        let n = w.finish(hdr.seq.get(), data_out_len.min(u64::from(u32::MAX)) as u32);
        if n > hdr.resp_cap.get() as usize {
            warn!(
                "client {}: reply of {n} bytes does not fit the {} offered",
                show(client_id),
                hdr.resp_cap.get()
            );
            let mut w = ReplyWriter::new(reply);
            w.push(
                0,
                CuResult::OUT_OF_MEMORY.0,
                &calls::HandleReply {
                    handle: (n as u64).into(),
                },
                &[],
            );
            let n = w.finish(hdr.seq.get(), 0);
            return Outcome {
                reply_len: if n <= hdr.resp_cap.get() as usize {
                    n
                } else {
                    0
                },
                data_out_len,
            };
        }
        Outcome {
            reply_len: n,
            data_out_len,
        }
    }

    fn refuse(&mut self, msg: &[u8], e: &DecodeError, reply: &mut Vec<u8>) -> Outcome {
        warn!("refused a message: {e}");
        let Ok((hdr, _)) = MsgHeader::read_from_prefix(msg) else {
            return Outcome {
                reply_len: 0,
                data_out_len: 0,
            };
        };
        if hdr.magic.get() != vgpu_protocol::MAGIC || hdr.flags.get() & flags::WANT_REPLY == 0 {
            return Outcome {
                reply_len: 0,
                data_out_len: 0,
            };
        }
        let mut w = ReplyWriter::new(reply);
        let mut body = self.hello_reply();
        body.message = fill_str::<HELLO_MESSAGE_LEN>(&format!(
            "refused: {e}; this host speaks protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR} ({BUILD_ID})"
        ));
        w.push(Opcode::Hello as u16, CuResult::NOT_SUPPORTED.0, &body, &[]);
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

    fn defer(&mut self, client: ClientKey, r: CuResult) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.deferred.get_or_insert(r);
        }
    }

    fn hello_reply(&self) -> calls::HelloReply {
        // INLINE_DATA waits for the TCP transport; only guest-memory descriptors exist today.
        let mut caps = caps::SCATTER_DATA | caps::DEFERRED_ERRORS;
        if self.gpu.kind() == GpuKind::Sim {
            caps |= caps::SIM_GPU;
        }
        if self.limits.mem_limit.is_some() {
            caps |= caps::MEMORY_QUOTA;
        }
        calls::HelloReply {
            proto_major: PROTOCOL_MAJOR.into(),
            proto_minor: PROTOCOL_MINOR.into(),
            caps: caps.into(),
            device_count: (self.gpu.device_count() as u32).into(),
            driver_version: self.gpu.driver_version().into(),
            build_id: fill_str::<BUILD_ID_LEN>(BUILD_ID),
            message: fill_str::<HELLO_MESSAGE_LEN>(&format!(
                "vhost-gpu {} on {}",
                env!("CARGO_PKG_VERSION"),
                self.gpu.kind()
            )),
        }
    }

    fn client(&mut self, id: ClientKey) -> Result<&mut Client, CuResult> {
        match self.clients.get_mut(&id) {
            Some(c) if c.greeted => Ok(c),
            _ => Err(CuResult::NOT_INITIALIZED),
        }
    }

    fn make_current(&mut self, client: ClientKey, ctx: u64) -> Result<(), CuResult> {
        let raw = match self.client(client)?.objects.get(ctx) {
            Some(Object::Ctx { raw }) => *raw,
            _ => return Err(CuResult::INVALID_CONTEXT),
        };
        if raw != self.current_ctx {
            self.gpu.set_current(raw)?;
            self.current_ctx = raw;
        }
        Ok(())
    }

    /// Resolves a stream handle (or a special stream value) and makes its context current.
    fn stream(&mut self, client: ClientKey, stream: u64, ctx: u64) -> Result<u64, CuResult> {
        if stream <= vgpu_protocol::stream::PER_THREAD {
            self.make_current(client, ctx)?;
            // Every guest thread's per-thread stream maps to the context's legacy stream:
            // the daemon runs one guest's calls on one thread.
            return Ok(if stream == vgpu_protocol::stream::PER_THREAD {
                vgpu_protocol::stream::NULL
            } else {
                stream
            });
        }
        let (raw, sctx) = match self.client(client)?.objects.get(stream) {
            Some(Object::Stream { raw, ctx }) => (*raw, *ctx),
            _ => return Err(CuResult::INVALID_HANDLE),
        };
        self.make_current(client, sctx)?;
        Ok(raw)
    }

    /// The context (handle) a stream belongs to; special streams belong to `ctx`.
    fn stream_ctx(&mut self, client: ClientKey, stream: u64, ctx: u64) -> Result<u64, CuResult> {
        if stream <= vgpu_protocol::stream::PER_THREAD {
            return Ok(ctx);
        }
        match self.client(client)?.objects.get(stream) {
            Some(Object::Stream { ctx, .. }) => Ok(*ctx),
            _ => Err(CuResult::INVALID_HANDLE),
        }
    }

    fn event(&mut self, client: ClientKey, event: u64) -> Result<u64, CuResult> {
        let (raw, ctx) = match self.client(client)?.objects.get(event) {
            Some(Object::Event { raw, ctx }) => (*raw, *ctx),
            _ => return Err(CuResult::INVALID_HANDLE),
        };
        self.make_current(client, ctx)?;
        Ok(raw)
    }

    fn check_range(&mut self, client: ClientKey, dptr: u64, len: u64) -> CallResult {
        if self.client(client)?.owns_range(dptr, len) {
            Ok(())
        } else {
            Err(CuResult::INVALID_VALUE)
        }
    }

    /// After a copy or memset was issued: finish it on its stream when the guest reuses the
    /// host buffer at once (`WAIT_STREAM`), and report deferred errors if it was synchronous.
    fn finish_copy(&mut self, client: ClientKey, flags: u16, stream: u64) -> CallResult {
        if flags & call_flags::WAIT_STREAM != 0 {
            self.gpu.stream_synchronize(stream)?;
        }
        if flags & call_flags::ASYNC == 0 {
            self.take_deferred(client)?;
        }
        Ok(())
    }

    fn take_deferred(&mut self, client: ClientKey) -> CallResult {
        match self.client(client)?.deferred.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Adds `bytes` to the slice's ledger, or refuses with OUT_OF_MEMORY if the slice would
    /// go over its limit: the call that would cross the limit fails, never a later one.
    fn charge(&mut self, client: ClientKey, bytes: u64) -> CallResult {
        let total = self
            .mem_used
            .checked_add(bytes)
            .ok_or(CuResult::OUT_OF_MEMORY)?;
        if self.limits.mem_limit.is_some_and(|limit| total > limit) {
            return Err(CuResult::OUT_OF_MEMORY);
        }
        self.client(client)?;
        if let Some(ledger) = self.shared_ledger.as_mut()
            && !ledger.reserve(bytes)
        {
            return Err(CuResult::OUT_OF_MEMORY);
        }
        self.client(client)?.mem_used += bytes;
        self.mem_used = total;
        Ok(())
    }

    fn uncharge(&mut self, client: ClientKey, bytes: u64) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.mem_used -= bytes;
            self.mem_used -= bytes;
        }
    }

    /// Resolves a function handle and makes its context current.
    fn func(&mut self, client: ClientKey, func: u64) -> Result<u64, CuResult> {
        let (raw, ctx) = match self.client(client)?.objects.get(func) {
            Some(Object::Func { raw, ctx, .. }) => (*raw, *ctx),
            _ => return Err(CuResult::INVALID_HANDLE),
        };
        self.make_current(client, ctx)?;
        Ok(raw)
    }

    fn unload_module(&mut self, client: ClientKey, module: u64) -> CallResult {
        let (raw, ctx) = match self.client(client)?.objects.get(module) {
            Some(Object::Module { raw, ctx, .. }) => (*raw, *ctx),
            _ => return Err(CuResult::INVALID_HANDLE),
        };
        self.make_current(client, ctx)?;
        self.gpu.module_unload(raw)?;
        let c = self.client(client)?;
        if let Some(Object::Module { funcs, charged, .. }) = c.objects.remove(module) {
            for f in funcs {
                c.objects.remove(f);
            }
            // The module's globals went with it: no copies to where they were.
            c.globals.retain(|_, &mut (_, m)| m != module);
            self.uncharge(client, charged);
        }
        Ok(())
    }

    /// Destroys a context and everything the client created in it.
    fn destroy_ctx(&mut self, client: ClientKey, ctx: u64) -> CallResult {
        let raw = match self.client(client)?.objects.get(ctx) {
            Some(Object::Ctx { raw }) => *raw,
            _ => return Err(CuResult::INVALID_CONTEXT),
        };
        self.release_ctx_objects(client, ctx);
        let _ = self.gpu.ctx_destroy(raw);
        self.current_ctx = 0;
        self.client(client)?.objects.remove(ctx);
        self.uncharge(client, self.limits.ctx_overhead);
        Ok(())
    }

    /// Frees the allocations, streams, events and modules of `ctx`; returns what was freed.
    fn release_ctx_objects(&mut self, client: ClientKey, ctx: u64) -> Freed {
        let mut freed = Freed::default();
        let Some(raw_ctx) = self
            .clients
            .get(&client)
            .and_then(|c| match c.objects.get(ctx) {
                Some(Object::Ctx { raw }) => Some(*raw),
                _ => None,
            })
        else {
            return freed;
        };
        if self.gpu.set_current(raw_ctx).is_ok() {
            self.current_ctx = raw_ctx;
            // Let queued work finish before its memory goes away.
            let _ = self.gpu.ctx_synchronize();
        }
        let Some(c) = self.clients.get_mut(&client) else {
            return freed;
        };
        let dptrs: Vec<u64> = c
            .allocations
            .iter()
            .filter(|(_, a)| a.ctx == ctx)
            .map(|(d, _)| *d)
            .collect();
        for d in dptrs {
            if let Some(a) = c.allocations.remove(&d) {
                c.mem_used -= a.size;
                self.mem_used -= a.size;
                // What was freed is what the GPU freed: a refusal is reported, not counted.
                match self.gpu.mem_free(d) {
                    Ok(()) => {
                        freed.allocations += 1;
                        freed.bytes += a.size;
                    }
                    Err(e) => warn!(
                        "client {}: the GPU did not free {} bytes at {d:#x}: {e:?}",
                        show(client),
                        a.size
                    ),
                }
            }
        }
        let owned = c.objects.handles_where(|o| o.ctx() == Some(ctx));
        for h in owned {
            match c.objects.remove(h) {
                Some(Object::Stream { raw, .. }) => {
                    let _ = self.gpu.stream_destroy(raw);
                }
                Some(Object::Event { raw, .. }) => {
                    let _ = self.gpu.event_destroy(raw);
                }
                Some(Object::Module { raw, charged, .. }) => {
                    let _ = self.gpu.module_unload(raw);
                    c.mem_used -= charged;
                    self.mem_used -= charged;
                    c.globals.retain(|_, &mut (_, m)| m != h);
                }
                Some(Object::GraphExec { raw, .. }) => {
                    let _ = self.gpu.graph_exec_destroy(raw);
                }
                Some(Object::Graph { raw, .. }) => {
                    let _ = self.gpu.graph_destroy(raw);
                }
                _ => {}
            }
            freed.objects += 1;
        }
        freed
    }

    /// Frees everything a client holds. Called when a guest process goes away.
    pub fn close_client(&mut self, client: ClientKey) -> Freed {
        let mut total = Freed::default();
        let Some(c) = self.clients.get(&client) else {
            return total;
        };
        let contexts = c.objects.handles_where(|o| matches!(o, Object::Ctx { .. }));
        for ctx in contexts {
            let f = self.release_ctx_objects(client, ctx);
            total.allocations += f.allocations;
            total.bytes += f.bytes;
            total.objects += f.objects + 1;
            if let Some(Some(Object::Ctx { raw })) =
                self.clients.get_mut(&client).map(|c| c.objects.remove(ctx))
            {
                let _ = self.gpu.ctx_destroy(raw);
                self.uncharge(client, self.limits.ctx_overhead);
            }
        }
        self.current_ctx = 0;
        if let Some(c) = self.clients.remove(&client) {
            // Allocations whose context handle was never valid cannot exist, but keep the
            // ledger exact regardless.
            self.mem_used -= c.mem_used;
        }
        let launches = self
            .gpu
            .launches_recorded()
            .map(|n| format!(", {n} launches recorded by sim"))
            .unwrap_or_default();
        info!(
            "client {} freed: {} allocations ({} bytes), {} objects{launches}; slice now holds {} bytes",
            show(client),
            total.allocations,
            total.bytes,
            total.objects,
            self.mem_used
        );
        total
    }

    /// Frees every client of every frontend.
    pub fn close_all(&mut self) -> Freed {
        self.close_where(|_| true)
    }

    /// Frees every client of one frontend (it disconnected or reset its device).
    pub fn close_namespace(&mut self, namespace: u32) -> Freed {
        self.close_where(|k| k >> 32 == u64::from(namespace))
    }

    fn close_where(&mut self, which: impl Fn(ClientKey) -> bool) -> Freed {
        let ids: Vec<ClientKey> = self.clients.keys().copied().filter(|k| which(*k)).collect();
        let mut total = Freed::default();
        for id in ids {
            total += self.close_client(id);
        }
        total
    }
}

#[cfg(test)]
mod tests;

//! The executor on every backend: the slice's memory ledger, per-client teardown, the console,
//! modules and plain forwards. Each test is a function of the backend it runs on;
//! [`on_every_backend!`] runs it on the simulator (in CI) and on NVIDIA's driver (GPU 0,
//! ignored unless asked for: `cargo test -p vgpu-executor -- --ignored on_cuda`, on the GPU
//! machine, one test at a time).

use std::sync::{Arc, Mutex};

use vgpu_protocol::{CuResult, Encoder, Opcode, PROTOCOL_MAJOR, calls, flags, parse_response};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::*;
use crate::gpu::HostSeg;

const MIB: u64 = 1 << 20;

/// Makes the backend a test runs on.
type MakeGpu = fn() -> Box<dyn Gpu>;

fn sim_gpu() -> Box<dyn Gpu> {
    Box::new(sim::SimGpu::new(4 << 30))
}

fn cuda_gpu() -> Box<dyn Gpu> {
    match cuda::CudaGpu::open(0) {
        Ok(g) => Box::new(g),
        Err(e) => panic!("GPU 0: {e}"),
    }
}

/// Runs each named test on the simulator and, when asked for, on NVIDIA's driver.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod on_sim {
            $( #[test] fn $name() { super::$name(super::sim_gpu) } )*
        }
        mod on_cuda {
            $(
                #[test]
                #[ignore = "needs an NVIDIA GPU: cargo test -p vgpu-executor -- --ignored on_cuda"]
                fn $name() { super::$name(super::cuda_gpu) }
            )*
        }
    };
}

fn executor(gpu: MakeGpu, limit: Option<u64>, ctx_overhead: u64) -> Executor {
    Executor::new(
        gpu(),
        SliceLimits {
            mem_limit: limit,
            sm_count: None,
            ctx_overhead,
        },
    )
}

/// Runs one call for `client` and returns (result, reply body).
fn call<T: IntoBytes + Immutable>(
    ex: &mut Executor,
    client: u32,
    op: Opcode,
    body: &T,
) -> (u32, Vec<u8>) {
    let (r, _, b) = call_flags(ex, client, op, body);
    (r, b)
}

fn handle(body: &[u8]) -> u64 {
    calls::HandleReply::read_from_prefix(body)
        .unwrap()
        .0
        .handle
        .get()
}

/// Greets `client` and gives it a context.
fn client_with_ctx(ex: &mut Executor, client: u32) -> u64 {
    let hello = calls::Hello {
        proto_major: PROTOCOL_MAJOR.into(),
        ..Default::default()
    };
    assert_eq!(call(ex, client, Opcode::Hello, &hello).0, 0);
    let (r, b) = call(ex, client, Opcode::CtxCreate, &calls::CtxCreate::default());
    assert_eq!(r, 0);
    handle(&b)
}

fn alloc(ex: &mut Executor, client: u32, ctx: u64, size: u64) -> Result<u64, u32> {
    let (r, b) = call(
        ex,
        client,
        Opcode::MemAlloc,
        &calls::MemAlloc {
            ctx: ctx.into(),
            size: size.into(),
        },
    );
    if r == 0 { Ok(handle(&b)) } else { Err(r) }
}

/// Loads `image` into `ctx` of client 1; returns (result, reply body).
fn load_module(ex: &mut Executor, ctx: u64, image: &mut [u8]) -> (u32, Vec<u8>) {
    let mut buf = vec![0u8; 512];
    let mut e = Encoder::new(&mut buf).unwrap();
    let body = calls::ModuleLoad {
        ctx: ctx.into(),
        image: vgpu_protocol::DataRef::new(0, image.len() as u64),
    };
    e.push(Opcode::ModuleLoad as u16, 0, &body, &[]).unwrap();
    let len = e.finish(flags::WANT_REPLY, 1, 1 << 16, 1);
    let segs = [HostSeg {
        ptr: image.as_mut_ptr(),
        len: image.len(),
    }];
    let mut reply = Vec::new();
    let out = ex.execute(
        &buf[..len],
        DataStream::new(&segs),
        DataStream::EMPTY,
        &mut reply,
    );
    let (_, mut records) = parse_response(&reply[..out.reply_len]).unwrap();
    let r = records.next().unwrap().unwrap();
    (r.result, r.body.to_vec())
}

/// The module handle of a `ModuleLoad` reply.
fn module_of(body: &[u8]) -> u64 {
    calls::ModuleLoadReply::read_from_prefix(body)
        .unwrap()
        .0
        .module
        .get()
}

/// Unloads client 1's `module`; returns the result.
fn unload(ex: &mut Executor, module: u64) -> u32 {
    let body = calls::HandleArg {
        handle: module.into(),
    };
    call(ex, 1, Opcode::ModuleUnload, &body).0
}

fn mem_info(ex: &mut Executor, client: u32, ctx: u64) -> (u64, u64) {
    let (r, b) = call(
        ex,
        client,
        Opcode::MemGetInfo,
        &calls::CtxArg { ctx: ctx.into() },
    );
    assert_eq!(r, 0);
    let m = calls::MemInfoReply::read_from_prefix(&b).unwrap().0;
    (m.free.get(), m.total.get())
}

fn quota_edges_exactly_at_the_limit_and_one_byte_over(gpu: MakeGpu) {
    let limit = 64 * MIB;
    let mut ex = executor(gpu, Some(limit), 0);
    let ctx = client_with_ctx(&mut ex, 1);
    assert_eq!(mem_info(&mut ex, 1, ctx), (limit, limit));
    alloc(&mut ex, 1, ctx, limit - 4096).unwrap();
    assert_eq!(
        alloc(&mut ex, 1, ctx, 4097),
        Err(CuResult::OUT_OF_MEMORY.0),
        "one byte over"
    );
    let last = alloc(&mut ex, 1, ctx, 4096).expect("exactly at the limit");
    assert_eq!(mem_info(&mut ex, 1, ctx), (0, limit));
    assert_eq!(alloc(&mut ex, 1, ctx, 1), Err(CuResult::OUT_OF_MEMORY.0));
    // Freeing returns the bytes to the ledger.
    let (r, _) = call(
        &mut ex,
        1,
        Opcode::MemFree,
        &calls::MemFree {
            ctx: ctx.into(),
            dptr: last.into(),
        },
    );
    assert_eq!(r, 0);
    assert_eq!(mem_info(&mut ex, 1, ctx), (4096, limit));
    assert_eq!(ex.mem_used(), limit - 4096);
}

fn the_slice_is_shared_by_every_client_of_the_vm_and_freed_when_one_leaves(gpu: MakeGpu) {
    let mut ex = executor(gpu, Some(100 * MIB), 0);
    let a = client_with_ctx(&mut ex, 1);
    let b = client_with_ctx(&mut ex, 2);
    alloc(&mut ex, 1, a, 60 * MIB).unwrap();
    assert_eq!(
        alloc(&mut ex, 2, b, 41 * MIB),
        Err(CuResult::OUT_OF_MEMORY.0)
    );
    alloc(&mut ex, 2, b, 40 * MIB).unwrap();
    let freed = ex.close_client(1);
    assert_eq!((freed.allocations, freed.bytes), (1, 60 * MIB));
    assert_eq!(ex.mem_used(), 40 * MIB);
    alloc(&mut ex, 2, b, 60 * MIB).expect("client 1's memory came back");
    ex.close_all();
    assert_eq!(ex.mem_used(), 0);
    assert_eq!(ex.client_count(), 0);
}

fn contexts_are_charged_their_overhead_and_destroying_one_frees_its_memory(gpu: MakeGpu) {
    let mut ex = executor(gpu, Some(100 * MIB), 30 * MIB);
    let ctx = client_with_ctx(&mut ex, 1);
    assert_eq!(ex.mem_used(), 30 * MIB);
    alloc(&mut ex, 1, ctx, 50 * MIB).unwrap();
    // A second context does not fit: 30 + 50 + 30 > 100.
    let (r, _) = call(&mut ex, 1, Opcode::CtxCreate, &calls::CtxCreate::default());
    assert_eq!(r, CuResult::OUT_OF_MEMORY.0);
    assert_eq!(ex.mem_used(), 80 * MIB, "a refused context is not charged");
    let (r, _) = call(
        &mut ex,
        1,
        Opcode::CtxDestroy,
        &calls::CtxArg { ctx: ctx.into() },
    );
    assert_eq!(r, 0);
    assert_eq!(
        ex.mem_used(),
        0,
        "the context's allocation and overhead are gone"
    );
}

/// 24 clients on one shared slice (the executor behind one mutex, as the daemon's frontend
/// threads share it), released together by a barrier, each asking once for a 9 MiB buffer
/// of a 100 MiB slice: exactly 11 win, the rest are refused with OUT_OF_MEMORY, and the
/// ledger and the GPU's own free memory both say 11 buffers are held.
fn many_threads_racing_at_the_limit_never_overcommit(gpu: MakeGpu) {
    const THREADS: usize = 24;
    let size = 9 * MIB;
    let limit = 100 * MIB;
    let ex = Arc::new(Mutex::new(executor(gpu, Some(limit), 0)));
    let ctxs: Vec<u64> = (1..=THREADS as u32)
        .map(|c| client_with_ctx(&mut ex.lock().unwrap(), c))
        .collect();
    let free_before = ex.lock().unwrap().gpu.mem_info().unwrap().0;
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = ctxs
        .into_iter()
        .enumerate()
        .map(|(i, ctx)| {
            let ex = Arc::clone(&ex);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                alloc(&mut ex.lock().unwrap(), i as u32 + 1, ctx, size)
            })
        })
        .collect();
    let results: Vec<Result<u64, u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        won as u64,
        limit / size,
        "exactly as many allocations as fit"
    );
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || *r == Err(CuResult::OUT_OF_MEMORY.0)),
        "{results:?}"
    );
    let mut ex = ex.lock().unwrap();
    assert_eq!(ex.mem_used(), won as u64 * size);
    // The device itself (not the ledger) holds the winners' buffers: exactly on the
    // simulator, rounded up to the driver's 2 MiB granularity on a GPU.
    let (free, _) = ex.gpu.mem_info().unwrap();
    let held = free_before - free;
    let want = won as u64 * size;
    assert!(
        held >= want && held <= want + won as u64 * 2 * MIB,
        "the device holds {held} bytes for {won} buffers of {size}"
    );
}

fn no_limit_means_the_whole_device(gpu: MakeGpu) {
    let mut ex = executor(gpu, None, 0);
    let ctx = client_with_ctx(&mut ex, 1);
    let total = ex.gpu.mem_info().unwrap().1;
    assert_eq!(mem_info(&mut ex, 1, ctx).1, total);
}

fn module_images_are_charged_until_unloaded(gpu: MakeGpu) {
    let image = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/kernels.ptx"
    ))
    .unwrap();
    let n = image.len() as u64;
    let mut ex = executor(gpu, Some(n + n / 2), 0);
    let ctx = client_with_ctx(&mut ex, 1);
    let load = |ex: &mut Executor, image: &mut Vec<u8>| load_module(ex, ctx, image);
    let mut img = image.clone();
    let (r, body) = load(&mut ex, &mut img);
    assert_eq!(r, 0);
    assert_eq!(ex.mem_used(), n);
    // A second copy does not fit in what is left.
    assert_eq!(load(&mut ex, &mut img).0, CuResult::OUT_OF_MEMORY.0);
    let module = module_of(&body);
    assert_eq!(unload(&mut ex, module), 0);
    assert_eq!(ex.mem_used(), 0);
}

/// A console fed by the test: what a driver "printed" since the last poll.
struct TestConsole(Arc<Mutex<Vec<u8>>>, Vec<u8>);

impl Console for TestConsole {
    fn poll(&mut self, synced: bool) -> bool {
        if synced {
            self.1.extend(self.0.lock().unwrap().drain(..));
        }
        !self.1.is_empty()
    }
    fn take(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.1.len());
        self.1.drain(..n).collect()
    }
}

/// Runs one call and returns (result, reply flags, body).
fn call_flags<T: IntoBytes + Immutable>(
    ex: &mut Executor,
    client: u32,
    op: Opcode,
    body: &T,
) -> (u32, u16, Vec<u8>) {
    let mut buf = vec![0u8; 512];
    let mut e = Encoder::new(&mut buf).unwrap();
    e.push(op as u16, 0, body, &[]).unwrap();
    let n = e.finish(flags::WANT_REPLY, client, 4096, 1);
    let mut reply = Vec::new();
    let out = ex.execute(&buf[..n], DataStream::EMPTY, DataStream::EMPTY, &mut reply);
    let (_, mut records) = parse_response(&reply[..out.reply_len]).unwrap();
    let r = records.next().unwrap().unwrap();
    (r.result, r.flags, r.body.to_vec())
}

fn device_printf_output_comes_back_with_the_synchronising_call(gpu: MakeGpu) {
    let printed = Arc::new(Mutex::new(Vec::new()));
    let mut ex = executor(gpu, None, 0);
    ex.set_console(Box::new(TestConsole(printed.clone(), Vec::new())));
    let ctx = client_with_ctx(&mut ex, 1);
    let sync = calls::CtxArg { ctx: ctx.into() };
    let (r, f, _) = call_flags(&mut ex, 1, Opcode::CtxSynchronize, &sync);
    assert_eq!((r, f), (0, 0), "nothing printed, no flag");

    printed
        .lock()
        .unwrap()
        .extend_from_slice(b"DEVPRINTF hello\n");
    // A call that does not synchronise does not look.
    let (_, f, _) = call_flags(&mut ex, 1, Opcode::MemGetInfo, &sync);
    assert_eq!(f, 0);
    let (r, f, _) = call_flags(&mut ex, 1, Opcode::CtxSynchronize, &sync);
    assert_eq!(r, 0);
    assert_eq!(f, vgpu_protocol::reply_flags::CONSOLE_PENDING);

    let read = |ex: &mut Executor, max: u32| {
        call_flags(
            ex,
            1,
            Opcode::ConsoleRead,
            &calls::ConsoleRead {
                max: max.into(),
                _pad: 0.into(),
            },
        )
    };
    let (r, f, body) = read(&mut ex, 9);
    assert_eq!((r, body.as_slice()), (0, &b"DEVPRINTF"[..]));
    assert_eq!(f, vgpu_protocol::reply_flags::CONSOLE_PENDING, "more waits");
    let (_, f, body) = read(&mut ex, 1000);
    assert_eq!((f, body.as_slice()), (0, &b" hello\n"[..]));
    let (r, _, _) = call_flags(
        &mut ex,
        99,
        Opcode::ConsoleRead,
        &calls::ConsoleRead::default(),
    );
    assert_ne!(r, 0, "a client that never said hello is refused");
}

/// A module's globals may be copied to while it is loaded and not after: the client's table of
/// them went on growing with every load (a leak per round of load/unload) and kept pointing at
/// memory that was freed. Breaks if unloading keeps the module's globals.
fn a_modules_globals_go_with_it(gpu: MakeGpu) {
    let mut ex = executor(gpu, None, 0);
    let ctx = client_with_ctx(&mut ex, 1);
    let mut image =
        b".version 8.0\n.target sm_90\n.address_size 64\n.global .align 4 .b8 counter[64];\n\0"
            .to_vec();
    let (result, body) = load_module(&mut ex, ctx, &mut image);
    assert_eq!(result, 0);
    let module = module_of(&body);
    // cuModuleGetGlobal("counter"): the name follows the fixed part.
    let mut buf = vec![0u8; 512];
    let mut e = Encoder::new(&mut buf).unwrap();
    let body = calls::ModuleGetGlobal {
        module: module.into(),
        name_len: 7.into(),
        ..Default::default()
    };
    e.push(Opcode::ModuleGetGlobal as u16, 0, &body, b"counter")
        .unwrap();
    let len = e.finish(flags::WANT_REPLY, 1, 1 << 16, 2);
    let mut reply = Vec::new();
    let out = ex.execute(
        &buf[..len],
        DataStream::EMPTY,
        DataStream::EMPTY,
        &mut reply,
    );
    let (_, mut records) = parse_response(&reply[..out.reply_len]).unwrap();
    let r = records.next().unwrap().unwrap();
    assert_eq!(r.result, 0);
    let global = calls::GlobalReply::read_from_prefix(r.body).unwrap().0;
    assert_eq!(global.size.get(), 64);
    let memset = |ex: &mut Executor| {
        call(
            ex,
            1,
            Opcode::Memset,
            &calls::Memset {
                ctx: ctx.into(),
                stream: 0.into(),
                dptr: global.dptr,
                count: 16.into(),
                value: 7.into(),
                elem_size: 4.into(),
            },
        )
        .0
    };
    assert_eq!(memset(&mut ex), 0);
    assert_eq!(unload(&mut ex, module), 0);
    assert_eq!(memset(&mut ex), CuResult::INVALID_VALUE.0);
    // Refused by the executor's own table, not only by the device: nothing is left in it.
    assert!(ex.clients[&client_key(0, 1)].globals.is_empty());
}

/// A plain forward from the table runs on the client's own stream, and another client cannot
/// name that stream. Breaks if the executor passes the guest's handle through unresolved.
fn a_plain_forward_runs_on_the_clients_own_stream(gpu: MakeGpu) {
    use vgpu_protocol::ops::forward;
    let mut ex = executor(gpu, None, 0);
    let ctx = client_with_ctx(&mut ex, 1);
    let (r, b) = call(
        &mut ex,
        1,
        Opcode::StreamCreate,
        &calls::StreamCreate {
            ctx: ctx.into(),
            flags: 1.into(),
            priority: 0.into(),
        },
    );
    assert_eq!(r, 0);
    let stream = handle(&b);
    // CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY = CU_SYNC_POLICY_YIELD.
    let mut set = forward::StreamSetAttribute::Request {
        ctx: ctx.into(),
        stream: stream.into(),
        attr: 3.into(),
        ..Default::default()
    };
    set.value[0] = 3;
    assert_eq!(call(&mut ex, 1, Opcode::StreamSetAttribute, &set).0, 0);
    let get = forward::StreamGetAttribute::Request {
        ctx: ctx.into(),
        stream: stream.into(),
        attr: 3.into(),
        ..Default::default()
    };
    let (r, body) = call(&mut ex, 1, Opcode::StreamGetAttribute, &get);
    assert_eq!(r, 0);
    let reply = forward::StreamGetAttribute::Reply::read_from_prefix(&body)
        .unwrap()
        .0;
    assert_eq!(reply.value[0], 3);
    let other = client_with_ctx(&mut ex, 2);
    let theirs = forward::StreamGetAttribute::Request {
        ctx: other.into(),
        ..get
    };
    assert_eq!(
        call(&mut ex, 2, Opcode::StreamGetAttribute, &theirs).0,
        CuResult::INVALID_HANDLE.0
    );
}

on_every_backend!(
    quota_edges_exactly_at_the_limit_and_one_byte_over,
    the_slice_is_shared_by_every_client_of_the_vm_and_freed_when_one_leaves,
    contexts_are_charged_their_overhead_and_destroying_one_frees_its_memory,
    many_threads_racing_at_the_limit_never_overcommit,
    no_limit_means_the_whole_device,
    module_images_are_charged_until_unloaded,
    device_printf_output_comes_back_with_the_synchronising_call,
    a_modules_globals_go_with_it,
    a_plain_forward_runs_on_the_clients_own_stream,
);

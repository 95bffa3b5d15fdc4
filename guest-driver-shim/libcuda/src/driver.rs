//! Process-wide state: the connection, the device's facts, and per-thread context stacks.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use vgpu_protocol::{
    BUILD_ID, CuResult, Opcode, PROTOCOL_MAJOR, PROTOCOL_MINOR,
    calls::{self, BUILD_ID_LEN, fill_str, read_str},
    caps,
};
use zerocopy::FromBytes;

use crate::{conn::Connection, log_error};

/// Facts about the (only) device, fetched once at `cuInit`.
pub struct DeviceFacts {
    pub name: String,
    pub uuid: [u8; 16],
    pub total_mem: u64,
    pub attributes: Vec<i32>,
}

/// A context as the application sees it (`CUcontext` points at one of these).
pub struct Ctx {
    /// The host's handle; changes when a primary context is re-created after a reset.
    pub handle: AtomicU64,
    pub flags: AtomicU32,
    pub primary: bool,
}

impl Ctx {
    pub fn handle(&self) -> u64 {
        self.handle.load(Ordering::Acquire)
    }
}

pub struct Driver {
    pub conn: Connection,
    pub device: DeviceFacts,
    pub driver_version: i32,
    pub sim: bool,
    /// The primary context of device 0 (lives for the process).
    pub primary: &'static Ctx,
    pub primary_refs: Mutex<u32>,
    /// Device allocations: base -> size (to classify pointers of `cuMemcpy`).
    pub allocations: Mutex<BTreeMap<u64, u64>>,
    /// Pinned host allocations made through us: host address -> shared buffer.
    pub pinned: Mutex<BTreeMap<usize, vgpu_virtio_user::SharedBuf>>,
}

static DRIVER: OnceLock<Result<Driver, CuResult>> = OnceLock::new();

/// Deepest context stack a thread may have (`cuCtxPushCurrent` beyond it fails).
pub const MAX_CTX_DEPTH: usize = 64;

/// A thread's context stack; the last entry is current. Fixed-size and without a destructor:
/// calls from `atexit` handlers (a runtime's teardown) run after the thread's thread-local
/// destructors, and must still find the current context instead of aborting the process.
pub struct CtxStack {
    len: usize,
    items: [Option<&'static Ctx>; MAX_CTX_DEPTH],
}

impl CtxStack {
    const EMPTY: Self = Self {
        len: 0,
        items: [None; MAX_CTX_DEPTH],
    };

    pub fn last(&self) -> Option<&'static Ctx> {
        self.len.checked_sub(1).and_then(|i| self.items[i])
    }

    /// Pushes `c`; `INVALID_VALUE` when the stack is full.
    pub fn push(&mut self, c: &'static Ctx) -> Result<(), CuResult> {
        let slot = self
            .items
            .get_mut(self.len)
            .ok_or(CuResult::INVALID_VALUE)?;
        *slot = Some(c);
        self.len += 1;
        Ok(())
    }

    pub fn pop(&mut self) -> Option<&'static Ctx> {
        self.len = self.len.checked_sub(1)?;
        self.items[self.len].take()
    }

    /// Drops every entry that is `c`.
    pub fn remove(&mut self, c: &Ctx) {
        let mut kept = 0;
        for i in 0..self.len {
            if let Some(x) = self.items[i].take()
                && !std::ptr::eq(x, c)
            {
                self.items[kept] = Some(x);
                kept += 1;
            }
        }
        self.len = kept;
    }
}

thread_local! {
    /// This thread's context stack.
    pub static CTX_STACK: RefCell<CtxStack> = const { RefCell::new(CtxStack::EMPTY) };
}

/// The driver if `cuInit` succeeded and the vGPU is still there
/// (`CUDA_ERROR_DEVICE_UNAVAILABLE` for every call once it is gone).
pub fn driver() -> Result<&'static Driver, CuResult> {
    match DRIVER.get() {
        Some(Ok(d)) if d.conn.is_dead() => Err(crate::conn::DEVICE_UNAVAILABLE),
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(*e),
        None => Err(CuResult::NOT_INITIALIZED),
    }
}

/// Connects and fetches the device's facts (once per process).
pub fn init() -> Result<&'static Driver, CuResult> {
    DRIVER.get_or_init(connect).as_ref().map_err(|e| *e)?;
    driver()
}

fn connect() -> Result<Driver, CuResult> {
    let spec = std::env::var("VGPU_DEVICE").unwrap_or_else(|_| "/dev/vgpu0".into());
    let conn = if let Some(path) = spec.strip_prefix("vhost-user:") {
        Connection::open_virtio_user(std::path::Path::new(path)).map_err(|e| {
            log_error(&format!("cannot reach the vGPU at {path}: {e}"));
            CuResult::NO_DEVICE
        })?
    } else {
        Connection::open_kmod(std::path::Path::new(&spec)).map_err(|e| {
            log_error(&format!(
                "cannot open the vGPU device {e} (set VGPU_DEVICE=vhost-user:PATH outside a VM)"
            ));
            CuResult::NO_DEVICE
        })?
    };
    let hello = calls::Hello {
        proto_major: PROTOCOL_MAJOR.into(),
        proto_minor: PROTOCOL_MINOR.into(),
        caps: (caps::SCATTER_DATA | caps::DEFERRED_ERRORS).into(),
        build_id: fill_str::<BUILD_ID_LEN>(BUILD_ID),
    };
    let reply = conn.call(Opcode::Hello, &hello, &[], None, None)?;
    let (h, _) = calls::HelloReply::read_from_prefix(&reply.body).map_err(|_| CuResult::UNKNOWN)?;
    if !reply.result.is_ok() {
        log_error(&format!(
            "the vGPU refused this client: {}",
            read_str(&h.message)
        ));
        return Err(CuResult::NOT_INITIALIZED);
    }
    let sim = h.caps.get() & caps::SIM_GPU != 0;
    if sim || crate::verbose() {
        log_error(&format!(
            "connected to {} (host build '{}'){}",
            read_str(&h.message),
            read_str(&h.build_id),
            if sim {
                ": SIMULATED GPU, kernels are not executed"
            } else {
                ""
            }
        ));
    }
    let info = conn.call(
        Opcode::DeviceGetInfo,
        &calls::DeviceArg::default(),
        &[],
        None,
        None,
    )?;
    let (d, attrs) =
        calls::DeviceInfo::read_from_prefix(&info.body).map_err(|_| CuResult::UNKNOWN)?;
    let n = d.attr_count.get() as usize;
    let attributes: Vec<i32> = attrs
        .chunks_exact(4)
        .take(n)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let primary: &'static Ctx = Box::leak(Box::new(Ctx {
        handle: AtomicU64::new(0),
        flags: AtomicU32::new(0),
        primary: true,
    }));
    Ok(Driver {
        conn,
        device: DeviceFacts {
            name: read_str(&d.name),
            uuid: d.uuid,
            total_mem: d.quota_mem.get(),
            attributes,
        },
        driver_version: h.driver_version.get(),
        sim,
        primary,
        primary_refs: Mutex::new(0),
        allocations: Mutex::new(BTreeMap::new()),
        pinned: Mutex::new(BTreeMap::new()),
    })
}

/// The calling thread's current context.
pub fn current() -> Option<&'static Ctx> {
    CTX_STACK.with(|s| s.borrow().last())
}

/// The current context's host handle, or `INVALID_CONTEXT`.
pub fn current_handle() -> Result<u64, CuResult> {
    match current() {
        Some(c) if c.handle() != 0 => Ok(c.handle()),
        _ => Err(CuResult::INVALID_CONTEXT),
    }
}

//! `cuGetExportTable`: the undocumented tables of function pointers that NVIDIA's CUDA runtime
//! (and its libraries) fetch from the driver by UUID. A pointer into the host is useless in
//! the guest, so every table lives here and each entry is served locally or turned into
//! ordinary driver calls (fatbin registration becomes a module load on the host).
//!
//! Layout: slot 0 holds the table's size in bytes, except for the context-local-storage
//! table, which has no header. Slots whose meaning is unknown point at a function that logs
//! the table and slot once and returns `CUDA_ERROR_NOT_SUPPORTED`, so a new runtime that
//! calls them fails with a name instead of jumping to NULL.

use std::{
    collections::HashSet,
    ffi::{c_int, c_uchar, c_uint, c_void},
    sync::Mutex,
};

use vgpu_protocol::CuResult;

use super::{
    cls::CLS_TABLE,
    put, ret,
    table::{Table, Uuid, f, size_of_table, uuid},
};
use crate::{CUcontext, CUdevice, CUresult, driver, fatbin, log_error, verbose};

pub const CUDART_INTERFACE: Uuid = uuid(b"6BD5FB6C-5BF4-E74A-8987-D93912FD9DF9");
pub const TOOLS_TLS: Uuid = uuid(b"42D85A81-23F6-CB47-8298-F6E78A3AECDC");
pub const TOOLS_RUNTIME_CALLBACK_HOOKS: Uuid = uuid(b"A094798C-2E74-2E74-93F2-0800200C0A66");
pub const CONTEXT_LOCAL_STORAGE: Uuid = uuid(b"C693336E-1121-DF11-A8C3-68F355D89593");
pub const CTX_CREATE_BYPASS: Uuid = uuid(b"0CA50B8C-1004-929A-89A7-D0DF10E77286");
pub const HEAP_ACCESS: Uuid = uuid(b"195BCBF4-D67D-024A-ACC5-1D29CEA631AE");
pub const DEVICE_EXTENDED_RT: Uuid = uuid(b"B10541E1-F7C7-C74A-9F64-F223BE99F1E2");
pub const INTEGRITY_CHECK: Uuid = uuid(b"D4082055-BDE6-704B-8D34-BA123C66E1F2");
pub const CONTEXT_CHECKS: Uuid = uuid(b"263E8860-7CD2-6143-92F6-BBD5006DFA7E");

/// Logs the first call of an unimplemented slot and refuses it.
fn unknown_slot(table: &'static str, slot: usize) -> CUresult {
    static SEEN: Mutex<Option<HashSet<(&'static str, usize)>>> = Mutex::new(None);
    let first = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert((table, slot));
    if first {
        log_error(&format!(
            "export table {table} slot {slot} is not supported by the vGPU yet (CUDA_ERROR_NOT_SUPPORTED)"
        ));
    }
    CuResult::NOT_SUPPORTED.0
}

/// Defines `extern "C"` functions for unknown slots: `stub!(fn_name = TABLE, slot);`.
/// Arguments are ignored (the x86-64/aarch64 C ABIs let a callee ignore register arguments).
macro_rules! unknown_slots {
    ($($name:ident = $table:literal, $slot:literal;)*) => {
        $(
            extern "C" fn $name() -> CUresult {
                unknown_slot($table, $slot)
            }
        )*
    };
}

unknown_slots! {
    cudart_3 = "CUDART_INTERFACE", 3;
    cudart_4 = "CUDART_INTERFACE", 4;
    cudart_5 = "CUDART_INTERFACE", 5;
    cudart_9 = "CUDART_INTERFACE", 9;
    cudart_10 = "CUDART_INTERFACE", 10;
    cudart_11 = "CUDART_INTERFACE", 11;
    devext_1 = "DEVICE_EXTENDED_RT", 1;
    devext_2 = "DEVICE_EXTENDED_RT", 2;
    devext_3 = "DEVICE_EXTENDED_RT", 3;
    devext_4 = "DEVICE_EXTENDED_RT", 4;
    devext_6 = "DEVICE_EXTENDED_RT", 6;
    devext_7 = "DEVICE_EXTENDED_RT", 7;
    devext_8 = "DEVICE_EXTENDED_RT", 8;
    devext_9 = "DEVICE_EXTENDED_RT", 9;
    devext_10 = "DEVICE_EXTENDED_RT", 10;
    devext_11 = "DEVICE_EXTENDED_RT", 11;
    devext_12 = "DEVICE_EXTENDED_RT", 12;
    devext_14 = "DEVICE_EXTENDED_RT", 14;
    devext_15 = "DEVICE_EXTENDED_RT", 15;
    devext_16 = "DEVICE_EXTENDED_RT", 16;
    devext_17 = "DEVICE_EXTENDED_RT", 17;
    devext_18 = "DEVICE_EXTENDED_RT", 18;
    devext_19 = "DEVICE_EXTENDED_RT", 19;
    devext_20 = "DEVICE_EXTENDED_RT", 20;
    devext_21 = "DEVICE_EXTENDED_RT", 21;
    devext_22 = "DEVICE_EXTENDED_RT", 22;
    devext_23 = "DEVICE_EXTENDED_RT", 23;
    devext_24 = "DEVICE_EXTENDED_RT", 24;
    devext_25 = "DEVICE_EXTENDED_RT", 25;
    integrity_2 = "INTEGRITY_CHECK", 2;
    checks_1 = "CONTEXT_CHECKS", 1;
}

// ---- CUDART_INTERFACE ----

fn module_ctx() -> Result<u64, CuResult> {
    match driver::current_handle() {
        Ok(c) => Ok(c),
        Err(_) => Ok(super::context::primary_retain(driver::driver()?)?.handle()),
    }
}

/// Ships a registered fatbin to the host and returns the module.
fn register_fatbin(
    image: Result<&[u8], fatbin::FatbinError>,
    out: *mut *mut c_void,
    how: &str,
) -> Result<(), CuResult> {
    let image = image.map_err(|e| {
        log_error(&format!("{how}: {e}"));
        CuResult::INVALID_IMAGE
    })?;
    if verbose() {
        let entries = fatbin::parse(image).map(|(_, e)| fatbin::describe(&e));
        log_error(&format!(
            "{how}: fatbin of {} bytes: {}",
            image.len(),
            entries.unwrap_or_default()
        ));
    }
    let m = super::module::load(image, module_ctx()?)?;
    // SAFETY: out-pointer from the runtime.
    unsafe { put(out, m as *mut c_void) }
}

/// [1] `(CUmodule *out, const __fatBinC_Wrapper_t *wrapper)`.
extern "C" fn get_module_from_cubin(out: *mut *mut c_void, wrapper: *const c_void) -> CUresult {
    // SAFETY: the runtime passes the wrapper nvcc generated.
    let image = unsafe { fatbin::from_wrapper(wrapper) };
    ret(register_fatbin(image, out, "CUDART_INTERFACE[1]"))
}

/// [2] `(CUcontext *out, CUdevice dev)`: the device's primary context, retained.
extern "C" fn primary_ctx_of_device(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    // SAFETY: same contract as the public entry point.
    unsafe { super::context::cuDevicePrimaryCtxRetain(pctx, dev) }
}

/// [6] `(CUmodule *out, const __fatBinC_Wrapper_t *wrapper, void *, void *, unsigned)`.
extern "C" fn get_module_from_cubin_ext1(
    out: *mut *mut c_void,
    wrapper: *const c_void,
    arg3: *mut c_void,
    arg4: *mut c_void,
    arg5: c_uint,
) -> CUresult {
    if verbose() {
        log_error(&format!(
            "CUDART_INTERFACE[6]({wrapper:?}, {arg3:?}, {arg4:?}, {arg5})"
        ));
    }
    // SAFETY: the runtime passes the wrapper nvcc generated.
    let image = unsafe { fatbin::from_wrapper(wrapper) };
    ret(register_fatbin(image, out, "CUDART_INTERFACE[6]"))
}

/// [7] `(size_t)`: no observable effect.
extern "C" fn interface_fn7(_arg: usize) -> CUresult {
    0
}

/// [8] `(const fatBinaryHeader *fatbin, CUmodule *out, void *, void *, unsigned)`.
extern "C" fn get_module_from_cubin_ext2(
    header: *const c_void,
    out: *mut *mut c_void,
    arg3: *mut c_void,
    arg4: *mut c_void,
    arg5: c_uint,
) -> CUresult {
    if verbose() {
        log_error(&format!(
            "CUDART_INTERFACE[8]({header:?}, {arg3:?}, {arg4:?}, {arg5})"
        ));
    }
    // SAFETY: the runtime passes the fatbin nvcc generated.
    let image = unsafe { fatbin::from_header(header) };
    ret(register_fatbin(image, out, "CUDART_INTERFACE[8]"))
}

/// [12] loads the JIT compilers in NVIDIA's driver; the host's driver has its own.
extern "C" fn load_compilers() -> CUresult {
    0
}

pub static CUDART_TABLE: Table<13> = Table([
    size_of_table::<13>(),
    f!(get_module_from_cubin),
    f!(primary_ctx_of_device),
    f!(cudart_3),
    f!(cudart_4),
    f!(cudart_5),
    f!(get_module_from_cubin_ext1),
    f!(interface_fn7),
    f!(get_module_from_cubin_ext2),
    f!(cudart_9),
    f!(cudart_10),
    f!(cudart_11),
    f!(load_compilers),
]);

// ---- TOOLS_TLS, TOOLS_RUNTIME_CALLBACK_HOOKS ----

extern "C" fn return_zero() -> CUresult {
    0
}

pub static TOOLS_TLS_TABLE: Table<4> = Table([
    size_of_table::<4>(),
    f!(return_zero),
    f!(return_zero),
    f!(return_zero),
]);

/// Scratch the runtime's tool hooks write into; nothing reads it.
struct HookBuf<const N: usize>(std::cell::UnsafeCell<[u64; N]>);
// SAFETY: only the runtime touches the buffer, through the raw pointer it is given.
unsafe impl<const N: usize> Sync for HookBuf<N> {}

static HOOKS_BUF_2: HookBuf<1024> = HookBuf(std::cell::UnsafeCell::new([0; 1024]));
static HOOKS_BUF_6: HookBuf<64> = HookBuf(std::cell::UnsafeCell::new([0; 64]));

extern "C" fn hooks_buffer_2(ptr: *mut *mut c_void, size: *mut usize) {
    if !ptr.is_null() {
        // SAFETY: non-NULL out-pointer from the runtime.
        unsafe { *ptr = HOOKS_BUF_2.0.get().cast() };
    }
    if !size.is_null() {
        // SAFETY: non-NULL out-pointer from the runtime.
        unsafe { *size = 1024 };
    }
}

extern "C" fn hooks_buffer_6(ptr: *mut *mut c_void, size: *mut usize) {
    if !ptr.is_null() {
        // SAFETY: non-NULL out-pointer from the runtime.
        unsafe { *ptr = HOOKS_BUF_6.0.get().cast() };
    }
    if !size.is_null() {
        // SAFETY: non-NULL out-pointer from the runtime.
        unsafe { *size = 14 };
    }
}

pub static TOOLS_HOOKS_TABLE: Table<7> = Table([
    size_of_table::<7>(),
    f!(return_zero),
    f!(hooks_buffer_2),
    f!(return_zero),
    f!(return_zero),
    f!(return_zero),
    f!(hooks_buffer_6),
]);

// ---- CTX_CREATE_BYPASS, HEAP_ACCESS ----

extern "C" fn not_supported() -> CUresult {
    CuResult::NOT_SUPPORTED.0
}

pub static CTX_BYPASS_TABLE: Table<2> = Table([size_of_table::<2>(), f!(not_supported)]);

pub static HEAP_TABLE: Table<3> =
    Table([size_of_table::<3>(), f!(not_supported), f!(not_supported)]);

// ---- DEVICE_EXTENDED_RT ----

/// [5] `(CUdevice, attribute, int, size_t result[2])`: an attribute, widened.
extern "C" fn device_get_attribute_ext(
    dev: CUdevice,
    attribute: c_uint,
    _unknown: c_int,
    result: *mut [usize; 2],
) -> CUresult {
    let mut v: c_int = 0;
    let attr = c_int::try_from(attribute).unwrap_or(c_int::MAX);
    // SAFETY: `v` is a valid out-pointer.
    let r = unsafe { super::device::cuDeviceGetAttribute(&raw mut v, attr, dev) };
    if r != 0 {
        return r;
    }
    // SAFETY: out-pointer from the runtime.
    ret(unsafe { put(result, [v as usize, 0]) })
}

/// [13] `(unsigned char *out, CUdevice)`: NVIDIA's driver answers 0.
extern "C" fn device_get_flag(out: *mut c_uchar, dev: CUdevice) -> CUresult {
    if dev != 0 {
        return CuResult::INVALID_DEVICE.0;
    }
    // SAFETY: out-pointer from the runtime.
    ret(unsafe { put(out, 0) })
}

pub static DEVICE_EXT_TABLE: Table<26> = Table([
    size_of_table::<26>(),
    f!(devext_1),
    f!(devext_2),
    f!(devext_3),
    f!(devext_4),
    f!(device_get_attribute_ext),
    f!(devext_6),
    f!(devext_7),
    f!(devext_8),
    f!(devext_9),
    f!(devext_10),
    f!(devext_11),
    f!(devext_12),
    f!(device_get_flag),
    f!(devext_14),
    f!(devext_15),
    f!(devext_16),
    f!(devext_17),
    f!(devext_18),
    f!(devext_19),
    f!(devext_20),
    f!(devext_21),
    f!(devext_22),
    f!(devext_23),
    f!(devext_24),
    f!(devext_25),
]);

// ---- CONTEXT_CHECKS ----

/// [2] `(CUcontext, unsigned *out, void **)`: NVIDIA's driver reports 0.
extern "C" fn context_check(_ctx: CUcontext, out: *mut u32, _out2: *mut *const c_void) -> CUresult {
    if !out.is_null() {
        // SAFETY: non-NULL out-pointer from the runtime.
        unsafe { *out = 0 };
    }
    0
}

pub static CONTEXT_CHECKS_TABLE: Table<4> = Table([
    size_of_table::<4>(),
    f!(checks_1),
    f!(context_check),
    f!(return_zero),
]);

// ---- INTEGRITY_CHECK ----

/// [1] `(unsigned version, uint64_t unix_seconds, uint64_t result[2])`.
extern "C" fn integrity_check_c(
    version: c_uint,
    unix_seconds: u64,
    result: *mut [u64; 2],
) -> CUresult {
    ret((|| {
        let d = driver::driver()?;
        let a = |id| super::device::attribute(d, id).unwrap_or(0);
        let device = integrity::DeviceIds {
            uuid: d.device.uuid,
            pci_domain: a(50),
            pci_bus: a(33),
            pci_device: a(34),
        };
        let input = integrity::Input {
            driver_version: d.driver_version as u32,
            version,
            pid: std::process::id(),
            // SAFETY: pthread_self has no preconditions.
            tid: unsafe { libc::pthread_self() } as u32,
            cudart_table: std::ptr::from_ref(&CUDART_TABLE) as u64,
            integrity_table: std::ptr::from_ref(&INTEGRITY_TABLE) as u64,
            function: integrity_check_c as *const () as u64,
            unix_seconds,
        };
        let r = integrity::check(&input, &[device]);
        if verbose() {
            log_error(&format!("INTEGRITY_CHECK[1](version {version}) answered"));
        }
        // SAFETY: out-pointer from the runtime.
        unsafe { put(result, r) }
    })())
}

pub static INTEGRITY_TABLE: Table<3> =
    Table([size_of_table::<3>(), f!(integrity_check_c), f!(integrity_2)]);

/// The check the runtime uses to make sure it talks to NVIDIA's driver: an HMAC-MD2 (RFC 1319,
/// RFC 2104) over facts both sides know, with a fixed key.
pub mod integrity {
    /// Facts about the process and the call, hashed in this order (a C struct's bytes).
    #[derive(Debug, Clone, Copy)]
    pub struct Input {
        pub driver_version: u32,
        pub version: u32,
        pub pid: u32,
        pub tid: u32,
        pub cudart_table: u64,
        pub integrity_table: u64,
        pub function: u64,
        pub unix_seconds: u64,
    }

    impl Input {
        pub fn bytes(&self) -> [u8; 48] {
            let mut b = [0u8; 48];
            b[0..4].copy_from_slice(&self.driver_version.to_le_bytes());
            b[4..8].copy_from_slice(&self.version.to_le_bytes());
            b[8..12].copy_from_slice(&self.pid.to_le_bytes());
            b[12..16].copy_from_slice(&self.tid.to_le_bytes());
            b[16..24].copy_from_slice(&self.cudart_table.to_le_bytes());
            b[24..32].copy_from_slice(&self.integrity_table.to_le_bytes());
            b[32..40].copy_from_slice(&self.function.to_le_bytes());
            b[40..48].copy_from_slice(&self.unix_seconds.to_le_bytes());
            b
        }
    }

    /// One device as the application sees it (UUID and PCI location).
    #[derive(Debug, Clone, Copy)]
    pub struct DeviceIds {
        pub uuid: [u8; 16],
        pub pci_domain: i32,
        pub pci_bus: i32,
        pub pci_device: i32,
    }

    impl DeviceIds {
        pub fn bytes(&self) -> [u8; 28] {
            let mut b = [0u8; 28];
            b[..16].copy_from_slice(&self.uuid);
            b[16..20].copy_from_slice(&self.pci_domain.to_le_bytes());
            b[20..24].copy_from_slice(&self.pci_bus.to_le_bytes());
            b[24..28].copy_from_slice(&self.pci_device.to_le_bytes());
            b
        }
    }

    const KEY: [u8; 16] = [
        0x14, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52, 0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5, 0x5A,
        0x9F,
    ];

    /// The answer for `input` and `devices`, as two native-endian words of the digest.
    pub fn check(input: &Input, devices: &[DeviceIds]) -> [u64; 2] {
        match input.version % 10 {
            0 => return [0x3341_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8],
            1 => return [0x1841_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8],
            _ => {}
        }
        let mut inner = Md2::new();
        inner.update(&KEY.map(|b| b ^ 0x36));
        inner.update(&input.bytes());
        for d in devices {
            inner.update(&d.bytes());
        }
        let inner = inner.finish();
        let mut outer = Md2::new();
        outer.update(&KEY.map(|b| b ^ 0x5C));
        outer.update(&inner);
        let digest = outer.finish();
        let w = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&digest[o..o + 8]);
            u64::from_ne_bytes(b)
        };
        [w(0), w(8)]
    }

    /// RFC 1319's permutation of 0..255 built from the digits of pi.
    const S: [u8; 256] = [
        0x29, 0x2E, 0x43, 0xC9, 0xA2, 0xD8, 0x7C, 0x01, 0x3D, 0x36, 0x54, 0xA1, 0xEC, 0xF0, 0x06,
        0x13, 0x62, 0xA7, 0x05, 0xF3, 0xC0, 0xC7, 0x73, 0x8C, 0x98, 0x93, 0x2B, 0xD9, 0xBC, 0x4C,
        0x82, 0xCA, 0x1E, 0x9B, 0x57, 0x3C, 0xFD, 0xD4, 0xE0, 0x16, 0x67, 0x42, 0x6F, 0x18, 0x8A,
        0x17, 0xE5, 0x12, 0xBE, 0x4E, 0xC4, 0xD6, 0xDA, 0x9E, 0xDE, 0x49, 0xA0, 0xFB, 0xF5, 0x8E,
        0xBB, 0x2F, 0xEE, 0x7A, 0xA9, 0x68, 0x79, 0x91, 0x15, 0xB2, 0x07, 0x3F, 0x94, 0xC2, 0x10,
        0x89, 0x0B, 0x22, 0x5F, 0x21, 0x80, 0x7F, 0x5D, 0x9A, 0x5A, 0x90, 0x32, 0x27, 0x35, 0x3E,
        0xCC, 0xE7, 0xBF, 0xF7, 0x97, 0x03, 0xFF, 0x19, 0x30, 0xB3, 0x48, 0xA5, 0xB5, 0xD1, 0xD7,
        0x5E, 0x92, 0x2A, 0xAC, 0x56, 0xAA, 0xC6, 0x4F, 0xB8, 0x38, 0xD2, 0x96, 0xA4, 0x7D, 0xB6,
        0x76, 0xFC, 0x6B, 0xE2, 0x9C, 0x74, 0x04, 0xF1, 0x45, 0x9D, 0x70, 0x59, 0x64, 0x71, 0x87,
        0x20, 0x86, 0x5B, 0xCF, 0x65, 0xE6, 0x2D, 0xA8, 0x02, 0x1B, 0x60, 0x25, 0xAD, 0xAE, 0xB0,
        0xB9, 0xF6, 0x1C, 0x46, 0x61, 0x69, 0x34, 0x40, 0x7E, 0x0F, 0x55, 0x47, 0xA3, 0x23, 0xDD,
        0x51, 0xAF, 0x3A, 0xC3, 0x5C, 0xF9, 0xCE, 0xBA, 0xC5, 0xEA, 0x26, 0x2C, 0x53, 0x0D, 0x6E,
        0x85, 0x28, 0x84, 0x09, 0xD3, 0xDF, 0xCD, 0xF4, 0x41, 0x81, 0x4D, 0x52, 0x6A, 0xDC, 0x37,
        0xC8, 0x6C, 0xC1, 0xAB, 0xFA, 0x24, 0xE1, 0x7B, 0x08, 0x0C, 0xBD, 0xB1, 0x4A, 0x78, 0x88,
        0x95, 0x8B, 0xE3, 0x63, 0xE8, 0x6D, 0xE9, 0xCB, 0xD5, 0xFE, 0x3B, 0x00, 0x1D, 0x39, 0xF2,
        0xEF, 0xB7, 0x0E, 0x66, 0x58, 0xD0, 0xE4, 0xA6, 0x77, 0x72, 0xF8, 0xEB, 0x75, 0x4B, 0x0A,
        0x31, 0x44, 0x50, 0xB4, 0x8F, 0xED, 0x1F, 0x1A, 0xDB, 0x99, 0x8D, 0x33, 0x9F, 0x11, 0x83,
        0x14,
    ];

    /// MD2 (RFC 1319, with the published erratum: the checksum byte is XORed in).
    #[derive(Debug, Clone)]
    pub struct Md2 {
        pub(crate) x: [u8; 48],
        pub(crate) checksum: [u8; 16],
        pub(crate) last: u8,
        pub(crate) block: [u8; 16],
        pub(crate) filled: usize,
    }

    impl Default for Md2 {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Md2 {
        pub fn new() -> Self {
            Self {
                x: [0; 48],
                checksum: [0; 16],
                last: 0,
                block: [0; 16],
                filled: 0,
            }
        }

        fn compress(&mut self) {
            for j in 0..16 {
                let b = self.block[j];
                self.x[16 + j] = b;
                self.x[32 + j] = self.x[j] ^ b;
                self.checksum[j] ^= S[usize::from(b ^ self.last)];
                self.last = self.checksum[j];
            }
            let mut t = 0u8;
            for round in 0..18u8 {
                for k in 0..48 {
                    self.x[k] ^= S[usize::from(t)];
                    t = self.x[k];
                }
                t = t.wrapping_add(round);
            }
        }

        pub fn update(&mut self, data: &[u8]) {
            for &b in data {
                self.block[self.filled] = b;
                self.filled += 1;
                if self.filled == 16 {
                    self.compress();
                    self.filled = 0;
                }
            }
        }

        pub fn finish(mut self) -> [u8; 16] {
            let pad = (16 - self.filled) as u8;
            self.update(&vec![pad; usize::from(pad)]);
            let checksum = self.checksum;
            self.update(&checksum);
            let mut out = [0u8; 16];
            out.copy_from_slice(&self.x[..16]);
            out
        }
    }
}

/// The table for `id`, if we serve it.
pub fn table(id: &Uuid) -> Option<*const c_void> {
    let p: *const c_void = match *id {
        CUDART_INTERFACE => CUDART_TABLE.0.as_ptr().cast(),
        TOOLS_TLS => TOOLS_TLS_TABLE.0.as_ptr().cast(),
        TOOLS_RUNTIME_CALLBACK_HOOKS => TOOLS_HOOKS_TABLE.0.as_ptr().cast(),
        CONTEXT_LOCAL_STORAGE => CLS_TABLE.0.as_ptr().cast(),
        CTX_CREATE_BYPASS => CTX_BYPASS_TABLE.0.as_ptr().cast(),
        HEAP_ACCESS => HEAP_TABLE.0.as_ptr().cast(),
        DEVICE_EXTENDED_RT => DEVICE_EXT_TABLE.0.as_ptr().cast(),
        INTEGRITY_CHECK => INTEGRITY_TABLE.0.as_ptr().cast(),
        CONTEXT_CHECKS => CONTEXT_CHECKS_TABLE.0.as_ptr().cast(),
        super::tools_context::TOOLS_CONTEXT => {
            super::tools_context::TOOLS_CONTEXT_TABLE.0.as_ptr().cast()
        }
        super::tools_context::LT_HEURISTICS => {
            super::tools_context::LT_HEURISTICS_TABLE.0.as_ptr().cast()
        }
        super::tools_context::TOOLS_MODULE => {
            super::tools_context::TOOLS_MODULE_TABLE.0.as_ptr().cast()
        }
        _ => return None,
    };
    Some(p)
}

fn uuid_string(u: &Uuid) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Serves the runtime's tables; an unknown UUID is named once on stderr and refused with
/// `CUDA_ERROR_NOT_SUPPORTED` (the runtime then does without it or fails cleanly).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetExportTable(
    table_out: *mut *const c_void,
    id: *const Uuid,
) -> CUresult {
    if table_out.is_null() || id.is_null() {
        return CuResult::INVALID_VALUE.0;
    }
    // SAFETY: non-NULL pointer to a 16-byte UUID.
    let u = unsafe { id.read_unaligned() };
    match table(&u) {
        Some(t) => {
            if verbose() {
                log_error(&format!("cuGetExportTable({}) served", uuid_string(&u)));
            }
            // SAFETY: non-NULL out-pointer.
            unsafe { *table_out = t };
            0
        }
        None => {
            static SEEN: Mutex<Option<HashSet<Uuid>>> = Mutex::new(None);
            let first = SEEN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert_with(HashSet::new)
                .insert(u);
            if first || verbose() {
                log_error(&format!(
                    "cuGetExportTable({}): unknown export table, not served (CUDA_ERROR_NOT_SUPPORTED)",
                    uuid_string(&u)
                ));
            }
            // SAFETY: non-NULL out-pointer.
            unsafe { *table_out = std::ptr::null() };
            CuResult::NOT_SUPPORTED.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{integrity::*, *};

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md2_matches_rfc1319_test_suite() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "8350e5a3e24c153df2275c9f80692773"),
            (b"a", "32ec01ec4a6dac72c0ab96fb34c0b5d1"),
            (b"abc", "da853b0d3f88d99b30283a69e6ded6bb"),
            (b"message digest", "ab4f496bfb2a530b219ff33031fe06b0"),
            (
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "d5976f79d83d3a0dc9806c3c66f3efd8",
            ),
        ];
        for (msg, want) in cases {
            let mut h = Md2::new();
            h.update(msg);
            assert_eq!(hex(&h.finish()), want, "{:?}", String::from_utf8_lossy(msg));
        }
    }

    /// The inner hash state after the key block and the call facts, as recorded from NVIDIA's
    /// driver (a CUDA 12.8 process: version 12082, pid 0x2fa423, driver 12080).
    #[test]
    fn integrity_inner_state_matches_a_recorded_call() {
        let key = [
            0x14u8, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52, 0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5,
            0x5A, 0x9F,
        ];
        let mut h = Md2::new();
        h.update(&key.map(|b| b ^ 0x36));
        assert_eq!(
            hex(&h.x[..16]),
            "8b219a49e86d1aeef237f9b54a8c3c75",
            "state after the key block"
        );
        assert_eq!(hex(&h.checksum), "57a110860e60441e705f67d1eb67a13d");
        let input = Input {
            driver_version: 0x2f30,
            version: 12082,
            pid: 0x002f_a423,
            tid: 0xf79c_1000,
            cudart_table: 0x0000_7fff_f695_8240,
            integrity_table: 0x0000_7fff_f695_8220,
            function: 0x0000_7fff_f2aa_f4a0,
            unix_seconds: 0x682b_9cee,
        };
        h.update(&input.bytes());
        assert_eq!(h.filled, 0);
        assert_eq!(hex(&h.x[..16]), "0afdabc9ff9ba0be4d303282744fa748");
        assert_eq!(hex(&h.checksum), "6428d9e1d434c0a94988c96158dd6674");
        assert_eq!(h.last, 0x74);
    }

    /// The answer is computed from every input. (For versions ending in 0 or 1 `check`
    /// returns two constants, recorded from NVIDIA's driver; nothing here can verify them,
    /// and a test that compared them with themselves would prove nothing, so none does.)
    #[test]
    fn integrity_check_is_sensitive_to_its_inputs() {
        let mut input = Input {
            driver_version: 13000,
            version: 13000,
            pid: 1,
            tid: 2,
            cudart_table: 3,
            integrity_table: 4,
            function: 5,
            unix_seconds: 6,
        };
        let dev = DeviceIds {
            uuid: [7; 16],
            pci_domain: 0,
            pci_bus: 0x19,
            pci_device: 0,
        };
        input.version = 13002;
        let a = check(&input, &[dev]);
        assert_eq!(a, check(&input, &[dev]), "deterministic");
        let mut changed = input;
        changed.pid += 1;
        assert_ne!(a, check(&changed, &[dev]), "the process id is hashed");
        changed = input;
        changed.cudart_table += 8;
        assert_ne!(
            a,
            check(&changed, &[dev]),
            "the runtime's table address is hashed"
        );
        assert_ne!(a, check(&input, &[]), "the devices are hashed");
        let mut other = dev;
        other.pci_bus = 0x1a;
        assert_ne!(a, check(&input, &[other]), "the device's PCI bus is hashed");
        other = dev;
        other.uuid[15] = 8;
        assert_ne!(a, check(&input, &[other]), "the device's UUID is hashed");
        input.unix_seconds += 1;
        assert_ne!(a, check(&input, &[dev]), "the time is hashed");
    }

    #[test]
    fn table_layouts() {
        let size = |p: *const c_void| p as usize;
        assert_eq!(size(CUDART_TABLE.0[0]), 13 * 8);
        assert_eq!(size(TOOLS_TLS_TABLE.0[0]), 4 * 8);
        assert_eq!(size(TOOLS_HOOKS_TABLE.0[0]), 7 * 8);
        assert_eq!(size(CTX_BYPASS_TABLE.0[0]), 2 * 8);
        assert_eq!(size(HEAP_TABLE.0[0]), 3 * 8);
        assert_eq!(size(DEVICE_EXT_TABLE.0[0]), 26 * 8);
        assert_eq!(size(INTEGRITY_TABLE.0[0]), 3 * 8);
        assert_eq!(size(CONTEXT_CHECKS_TABLE.0[0]), 4 * 8);
        // Every slot after the size is callable; context-local storage has no size header.
        for t in [
            &CUDART_TABLE.0[1..],
            &TOOLS_TLS_TABLE.0[1..],
            &TOOLS_HOOKS_TABLE.0[1..],
            &CTX_BYPASS_TABLE.0[1..],
            &HEAP_TABLE.0[1..],
            &DEVICE_EXT_TABLE.0[1..],
            &INTEGRITY_TABLE.0[1..],
            &CONTEXT_CHECKS_TABLE.0[1..],
            &CLS_TABLE.0[..3],
        ] {
            assert!(t.iter().all(|p| !p.is_null()));
        }
        assert!(CLS_TABLE.0[3].is_null());
        assert_eq!(
            CUDART_TABLE.0[8],
            get_module_from_cubin_ext2 as *const c_void
        );
        assert_eq!(
            uuid_string(&CUDART_INTERFACE),
            "6BD5FB6C-5BF4-E74A-8987-D93912FD9DF9"
        );
        assert_eq!(CUDART_INTERFACE[..4], [0x6b, 0xd5, 0xfb, 0x6c]);
    }

    #[test]
    fn export_table_lookup() {
        let mut t: *const c_void = std::ptr::null();
        // SAFETY: valid out-pointer and UUID.
        assert_eq!(unsafe { cuGetExportTable(&raw mut t, &INTEGRITY_CHECK) }, 0);
        assert_eq!(t, INTEGRITY_TABLE.0.as_ptr().cast());
        let unknown = uuid(b"F8CFF951-2146-8B4E-B9E2-FB469E7C0DD9");
        // SAFETY: as above.
        let r = unsafe { cuGetExportTable(&raw mut t, &raw const unknown) };
        assert_eq!(r, CuResult::NOT_SUPPORTED.0);
        assert!(t.is_null());
        // SAFETY: NULL arguments are refused.
        let r = unsafe { cuGetExportTable(std::ptr::null_mut(), &raw const unknown) };
        assert_eq!(r, CuResult::INVALID_VALUE.0);
    }
}

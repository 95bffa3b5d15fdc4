//! Modules and libraries. Images (cubin, fatbin, PTX) are shipped whole to the host, which
//! loads them with the real driver and answers with every kernel's handle and parameter
//! layout, so later lookups and launches never ask the host again.
//!
//! `CUmodule`/`CUlibrary` and `CUfunction`/`CUkernel` values are tokens of the handle tables
//! below ([`super::handles`]); unloading a module frees it, its functions, the answers cached
//! for them and the globals it registered, and its tokens die.

use std::{
    collections::HashMap,
    ffi::{CString, c_char, c_int, c_uint, c_void},
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use vgpu_protocol::{CuResult, DataRef, Opcode, calls};
use zerocopy::FromBytes;

use super::{put, ret};
use crate::{CUdeviceptr, CUresult, driver, fatbin};

/// A kernel as the application holds it (`CUfunction` and `CUkernel` point at one).
pub struct Func {
    pub handle: u64,
    pub name: CString,
    pub params: Vec<(u32, u32)>,
    pub params_len: u32,
    /// The module's token.
    pub module: u64,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` once known (`u32::MAX`: not asked
    /// yet), so a launch asking for more fails at the call, as with NVIDIA's driver, instead
    /// of at the next synchronisation.
    max_dynamic_smem: std::sync::atomic::AtomicU32,
}

/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
const ATTR_MAX_DYNAMIC_SHARED: c_int = 8;
/// Dynamic shared memory every kernel may use without opting in.
const DEFAULT_DYNAMIC_SHARED: u32 = 48 << 10;

impl Func {
    /// Refuses a launch whose dynamic shared memory exceeds the function's limit.
    pub fn check_dynamic_smem(&self, bytes: u32) -> Result<(), CuResult> {
        use std::sync::atomic::Ordering;
        if bytes <= DEFAULT_DYNAMIC_SHARED {
            return Ok(());
        }
        let mut max = self.max_dynamic_smem.load(Ordering::Relaxed);
        if max == u32::MAX {
            let v = func_attribute_of(self, Opcode::FuncGetAttribute, ATTR_MAX_DYNAMIC_SHARED, 0)?;
            max = v.max(0) as u32;
            self.max_dynamic_smem.store(max, Ordering::Relaxed);
        }
        if bytes > max {
            Err(CuResult::INVALID_VALUE)
        } else {
            Ok(())
        }
    }
}

/// A loaded module (`CUmodule` and `CUlibrary` are its token).
pub struct Module {
    pub handle: u64,
    /// Tokens of its functions, in the host's order.
    pub funcs: Vec<u64>,
    by_name: HashMap<Vec<u8>, u64>,
    /// Device addresses of its globals that were looked up (entered in the allocation map,
    /// which must forget them when the module goes).
    globals: Mutex<Vec<u64>>,
}

/// Every module and function the application holds.
struct Registry {
    modules: super::handles::Handles<Module>,
    funcs: super::handles::Handles<Func>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    modules: super::handles::Handles::new(b'M'),
    funcs: super::handles::Handles::new(b'F'),
});

fn registry() -> std::sync::RwLockReadGuard<'static, Registry> {
    REGISTRY.read().unwrap_or_else(PoisonError::into_inner)
}

fn registry_mut() -> std::sync::RwLockWriteGuard<'static, Registry> {
    REGISTRY.write().unwrap_or_else(PoisonError::into_inner)
}

/// Live modules and functions, and the slots the tables have ever used.
pub fn registry_sizes() -> [usize; 4] {
    let r = registry();
    [
        r.modules.len(),
        r.funcs.len(),
        r.modules.capacity(),
        r.funcs.capacity(),
    ]
}

/// Length of an image in memory, found from its own headers (`fatbin.rs`).
///
/// # Safety
/// `image` must be NULL or point at a cubin, fatbin, fatbin wrapper or NUL-terminated PTX.
unsafe fn image_bytes<'a>(image: *const c_void) -> Result<&'a [u8], CuResult> {
    // SAFETY: the caller's contract.
    unsafe { fatbin::image_bytes(image) }.map_err(|e| match e {
        fatbin::ImageBoundsError::Null => CuResult::INVALID_VALUE,
        e => {
            crate::log_error(&format!(
                "module image refused: {}",
                vgpu_protocol::error_chain(&e)
            ));
            CuResult::INVALID_IMAGE
        }
    })
}

/// Ships an image to the host and builds the module from the reply; returns its token.
pub(crate) fn load(image: &[u8], ctx: u64) -> Result<u64, CuResult> {
    let d = driver::driver()?;
    let body = calls::ModuleLoad {
        ctx: ctx.into(),
        image: DataRef::new(0, image.len() as u64),
    };
    let reply = d.conn.call_with_data(Opcode::ModuleLoad, &body, image);
    let reply = reply?;
    reply.ok()?;
    let (fixed, mut rest) =
        calls::ModuleLoadReply::read_from_prefix(&reply.body).map_err(|_| CuResult::UNKNOWN)?;
    let mut module = Module {
        handle: fixed.module.get(),
        funcs: Vec::new(),
        by_name: HashMap::new(),
        globals: Mutex::new(Vec::new()),
    };
    let mut funcs = Vec::new();
    for _ in 0..fixed.nfuncs.get() {
        let (info, after) =
            calls::FuncInfo::read_from_prefix(rest).map_err(|_| CuResult::UNKNOWN)?;
        let name_len = info.name_len.get() as usize;
        let nparams = info.nparams.get() as usize;
        let rec = name_len + nparams * size_of::<calls::ParamInfo>();
        let body = after.get(..rec).ok_or(CuResult::UNKNOWN)?;
        let name = body[..name_len].to_vec();
        let params: Vec<(u32, u32)> = body[name_len..]
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        let padded =
            (size_of::<calls::FuncInfo>() + rec).next_multiple_of(8) - size_of::<calls::FuncInfo>();
        rest = after.get(padded..).unwrap_or(&[]);
        let params_len = params.iter().map(|(o, s)| o + s).max().unwrap_or(0);
        funcs.push((
            name.clone(),
            Func {
                handle: info.handle.get(),
                name: CString::new(name).unwrap_or_default(),
                params,
                params_len,
                module: 0,
                max_dynamic_smem: std::sync::atomic::AtomicU32::new(u32::MAX),
            },
        ));
    }
    let mut r = registry_mut();
    let token = r.modules.next_token();
    for (name, mut f) in funcs {
        f.module = token;
        let ft = r.funcs.insert(Arc::new(f));
        module.by_name.insert(name, ft);
        module.funcs.push(ft);
    }
    let inserted = r.modules.insert(Arc::new(module));
    debug_assert_eq!(inserted, token);
    Ok(token)
}

fn module_load(pmod: *mut *mut c_void, image: *const c_void) -> Result<(), CuResult> {
    let ctx = driver::current_handle()?;
    // SAFETY: the application passes a valid image.
    let bytes = unsafe { image_bytes(image)? };
    let m = load(bytes, ctx)?;
    // SAFETY: out-pointer from the caller.
    unsafe { put(pmod, m as *mut c_void) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(
    pmod: *mut *mut c_void,
    image: *const c_void,
) -> CUresult {
    ret(module_load(pmod, image))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    pmod: *mut *mut c_void,
    image: *const c_void,
    _n: c_uint,
    _opts: *mut c_int,
    _vals: *mut *mut c_void,
) -> CUresult {
    ret(module_load(pmod, image))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadFatBinary(
    pmod: *mut *mut c_void,
    image: *const c_void,
) -> CUresult {
    ret(module_load(pmod, image))
}

fn load_file(path: *const c_char) -> Result<Vec<u8>, CuResult> {
    // SAFETY: NUL-terminated path from the caller.
    let path = unsafe { crate::cstr(path) }.ok_or(CuResult::INVALID_VALUE)?;
    let mut bytes =
        std::fs::read(path.to_string_lossy().as_ref()).map_err(|_| CuResult::NOT_FOUND)?;
    bytes.push(0);
    Ok(bytes)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(pmod: *mut *mut c_void, path: *const c_char) -> CUresult {
    ret((|| {
        let bytes = load_file(path)?;
        module_load(pmod, bytes.as_ptr().cast())
    })())
}

fn as_module(m: *mut c_void) -> Result<Arc<Module>, CuResult> {
    registry()
        .modules
        .get(m as u64)
        .cloned()
        .ok_or(CuResult::INVALID_HANDLE)
}

/// Forgets module `token` and everything kept for it; returns it.
fn forget_module(d: &driver::Driver, token: u64) -> Result<Arc<Module>, CuResult> {
    let module = {
        let mut r = registry_mut();
        let module = r.modules.remove(token).ok_or(CuResult::INVALID_HANDLE)?;
        for &f in &module.funcs {
            r.funcs.remove(f);
        }
        module
    };
    // Launches racing with the unload hold their own reference to a function; its host
    // handle is dead and fails cleanly there.
    super::occupancy::forget_occupancy();
    let globals = std::mem::take(
        &mut *module
            .globals
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let mut allocs = d.allocations.lock().unwrap_or_else(PoisonError::into_inner);
    for g in globals {
        allocs.remove(&g);
    }
    Ok(module)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(m: *mut c_void) -> CUresult {
    ret((|| {
        let d = driver::driver()?;
        let module = forget_module(d, m as u64)?;
        d.conn.flush()?;
        d.conn
            .call(
                Opcode::ModuleUnload,
                &calls::HandleArg {
                    handle: module.handle.into(),
                },
                &[],
                None,
                None,
            )?
            .ok()
    })())
}

fn get_function(
    out: *mut *mut c_void,
    m: *mut c_void,
    name: *const c_char,
) -> Result<(), CuResult> {
    let module = as_module(m)?;
    // SAFETY: NUL-terminated name from the caller.
    let name = unsafe { crate::cstr(name) }.ok_or(CuResult::INVALID_VALUE)?;
    let f = *module
        .by_name
        .get(name.to_bytes())
        .ok_or(CuResult::NOT_FOUND)?;
    // SAFETY: out-pointer from the caller.
    unsafe { put(out, f as *mut c_void) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(
    out: *mut *mut c_void,
    m: *mut c_void,
    name: *const c_char,
) -> CUresult {
    ret(get_function(out, m, name))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunctionCount(count: *mut c_uint, m: *mut c_void) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(as_module(m).and_then(|module| unsafe { put(count, module.funcs.len() as c_uint) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleEnumerateFunctions(
    out: *mut *mut c_void,
    n: c_uint,
    m: *mut c_void,
) -> CUresult {
    ret(as_module(m).and_then(|module| {
        if out.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
        for (i, &f) in module.funcs.iter().take(n as usize).enumerate() {
            // SAFETY: `out` has room for `n` entries (caller's contract).
            unsafe { *out.add(i) = f as *mut c_void };
        }
        Ok(())
    }))
}

fn get_global(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    m: *mut c_void,
    name: *const c_char,
) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let module = as_module(m)?;
    // SAFETY: NUL-terminated name from the caller.
    let name = unsafe { crate::cstr(name) }
        .ok_or(CuResult::INVALID_VALUE)?
        .to_bytes();
    let body = calls::ModuleGetGlobal {
        module: module.handle.into(),
        name_len: (name.len() as u32).into(),
        _pad: 0.into(),
    };
    let r: calls::GlobalReply = d
        .conn
        .call(Opcode::ModuleGetGlobal, &body, name, None, None)?
        .parse()?;
    let mut globals = module
        .globals
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if !globals.contains(&r.dptr.get()) {
        globals.push(r.dptr.get());
    }
    d.allocations
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(r.dptr.get(), r.size.get());
    drop(globals);
    if !dptr.is_null() {
        // SAFETY: non-NULL out-pointer.
        unsafe { put(dptr, r.dptr.get())? };
    }
    if !bytes.is_null() {
        // SAFETY: non-NULL out-pointer.
        unsafe { put(bytes, r.size.get() as usize)? };
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetGlobal_v2(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    m: *mut c_void,
    name: *const c_char,
) -> CUresult {
    ret(get_global(dptr, bytes, m, name))
}

pub(crate) fn as_func(f: *mut c_void) -> Result<Arc<Func>, CuResult> {
    registry()
        .funcs
        .get(f as u64)
        .cloned()
        .ok_or(CuResult::INVALID_HANDLE)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetName(name: *mut *const c_char, f: *mut c_void) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(as_func(f).and_then(|f| unsafe { put(name, f.name.as_ptr()) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetParamInfo(
    f: *mut c_void,
    index: usize,
    offset: *mut usize,
    size: *mut usize,
) -> CUresult {
    ret(as_func(f).and_then(|f| {
        let &(o, s) = f.params.get(index).ok_or(CuResult::INVALID_VALUE)?;
        if !offset.is_null() {
            // SAFETY: non-NULL out-pointer.
            unsafe { put(offset, o as usize)? };
        }
        if !size.is_null() {
            // SAFETY: non-NULL out-pointer.
            unsafe { put(size, s as usize)? };
        }
        Ok(())
    }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetModule(m: *mut *mut c_void, f: *mut c_void) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(as_func(f).and_then(|f| unsafe { put(m, f.module as *mut c_void) }))
}

fn func_attribute(
    op: Opcode,
    f: *mut c_void,
    attribute: c_int,
    value: c_int,
) -> Result<i32, CuResult> {
    let f = as_func(f)?;
    let r = func_attribute_of(&f, op, attribute, value)?;
    if op == Opcode::FuncSetAttribute {
        super::occupancy::forget_occupancy();
    }
    if op == Opcode::FuncSetAttribute && attribute == ATTR_MAX_DYNAMIC_SHARED {
        f.max_dynamic_smem
            .store(value.max(0) as u32, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(r)
}

fn func_attribute_of(
    f: &Func,
    op: Opcode,
    attribute: c_int,
    value: c_int,
) -> Result<i32, CuResult> {
    let d = driver::driver()?;
    let body = calls::FuncAttribute {
        func: f.handle.into(),
        attribute: attribute.into(),
        value: value.into(),
    };
    d.conn.flush()?;
    let r = d.conn.call(op, &body, &[], None, None)?;
    if op == Opcode::FuncGetAttribute {
        Ok(r.parse::<calls::I32Reply>()?.value.get())
    } else {
        r.ok().map(|()| 0)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetAttribute(
    pi: *mut c_int,
    attribute: c_int,
    f: *mut c_void,
) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(func_attribute(Opcode::FuncGetAttribute, f, attribute, 0)
        .and_then(|v| unsafe { put(pi, v) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncSetAttribute(
    f: *mut c_void,
    attribute: c_int,
    value: c_int,
) -> CUresult {
    ret(func_attribute(Opcode::FuncSetAttribute, f, attribute, value).map(|_| ()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncSetCacheConfig(f: *mut c_void, _config: c_int) -> CUresult {
    ret(as_func(f).map(|_| ()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncSetSharedMemConfig(f: *mut c_void, _config: c_int) -> CUresult {
    ret(as_func(f).map(|_| ()))
}

// ---- libraries (context-independent modules; loaded into the primary context) ----

fn library_load(plib: *mut *mut c_void, image: *const c_void) -> Result<(), CuResult> {
    let d = driver::driver()?;
    let ctx = match driver::current_handle() {
        Ok(c) => c,
        Err(_) => super::context::primary_retain(d)?.handle(),
    };
    // SAFETY: the application passes a valid image.
    let bytes = unsafe { image_bytes(image)? };
    let m = load(bytes, ctx)?;
    // SAFETY: out-pointer from the caller.
    unsafe { put(plib, m as *mut c_void) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryLoadData(
    plib: *mut *mut c_void,
    code: *const c_void,
    _jit_opts: *mut c_int,
    _jit_vals: *mut *mut c_void,
    _njit: c_uint,
    _lib_opts: *mut c_int,
    _lib_vals: *mut *mut c_void,
    _nlib: c_uint,
) -> CUresult {
    ret(library_load(plib, code))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryLoadFromFile(
    plib: *mut *mut c_void,
    path: *const c_char,
    _jit_opts: *mut c_int,
    _jit_vals: *mut *mut c_void,
    _njit: c_uint,
    _lib_opts: *mut c_int,
    _lib_vals: *mut *mut c_void,
    _nlib: c_uint,
) -> CUresult {
    ret(load_file(path).and_then(|b| library_load(plib, b.as_ptr().cast())))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryUnload(lib: *mut c_void) -> CUresult {
    // SAFETY: same contract as a module.
    unsafe { cuModuleUnload(lib) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryGetKernel(
    out: *mut *mut c_void,
    lib: *mut c_void,
    name: *const c_char,
) -> CUresult {
    ret(get_function(out, lib, name))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryGetModule(out: *mut *mut c_void, lib: *mut c_void) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(as_module(lib).and_then(|_| unsafe { put(out, lib) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryGetKernelCount(count: *mut c_uint, lib: *mut c_void) -> CUresult {
    // SAFETY: same contract as a module.
    unsafe { cuModuleGetFunctionCount(count, lib) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryEnumerateKernels(
    out: *mut *mut c_void,
    n: c_uint,
    lib: *mut c_void,
) -> CUresult {
    // SAFETY: same contract as a module.
    unsafe { cuModuleEnumerateFunctions(out, n, lib) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryGetGlobal(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    lib: *mut c_void,
    name: *const c_char,
) -> CUresult {
    ret(get_global(dptr, bytes, lib, name))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuKernelGetFunction(
    out: *mut *mut c_void,
    kernel: *mut c_void,
) -> CUresult {
    // SAFETY: out-pointer from the caller.
    ret(as_func(kernel).and_then(|_| unsafe { put(out, kernel) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuKernelGetName(
    name: *mut *const c_char,
    kernel: *mut c_void,
) -> CUresult {
    // SAFETY: same contract as a function.
    unsafe { cuFuncGetName(name, kernel) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuKernelGetParamInfo(
    kernel: *mut c_void,
    index: usize,
    offset: *mut usize,
    size: *mut usize,
) -> CUresult {
    // SAFETY: same contract as a function.
    unsafe { cuFuncGetParamInfo(kernel, index, offset, size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuKernelGetAttribute(
    pi: *mut c_int,
    attribute: c_int,
    kernel: *mut c_void,
    _dev: c_int,
) -> CUresult {
    // SAFETY: same contract as a function.
    unsafe { cuFuncGetAttribute(pi, attribute, kernel) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuKernelSetAttribute(
    attribute: c_int,
    value: c_int,
    kernel: *mut c_void,
    _dev: c_int,
) -> CUresult {
    // SAFETY: same contract as a function.
    unsafe { cuFuncSetAttribute(kernel, attribute, value) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuKernelSetCacheConfig(
    kernel: *mut c_void,
    _config: c_int,
    _dev: c_int,
) -> CUresult {
    ret(as_func(kernel).map(|_| ()))
}

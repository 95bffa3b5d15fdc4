//! The context-local storage export table (`CONTEXT_LOCAL_STORAGE`, no size header): values
//! the CUDA runtime keeps per context, with destructors run when the context goes away.

use std::{collections::HashMap, ffi::c_void, sync::Mutex};

use vgpu_protocol::CuResult;

use super::{
    put, ret,
    table::{Table, f},
};
use crate::{CUcontext, CUresult, driver, log_error, verbose};

type ClsDtor = Option<extern "C" fn(CUcontext, *mut c_void, *mut c_void)>;

struct ClsEntry {
    value: usize,
    dtor: ClsDtor,
}

/// (context address, key) -> value, for every context.
static CLS: Mutex<Option<HashMap<(usize, usize), ClsEntry>>> = Mutex::new(None);

fn cls_ctx(ctx: CUcontext) -> Result<usize, CuResult> {
    if !ctx.is_null() {
        return Ok(ctx as usize);
    }
    driver::current()
        .map(|c| std::ptr::from_ref(c) as usize)
        .ok_or(CuResult::INVALID_CONTEXT)
}

/// Stores `value` under `(ctx, key)`; `dtor` runs when the context goes away.
fn cls_put(ctx: CUcontext, key: *mut c_void, value: *mut c_void, dtor: ClsDtor) -> CUresult {
    ret(cls_ctx(ctx).map(|c| {
        CLS.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(
                (c, key as usize),
                ClsEntry {
                    value: value as usize,
                    dtor,
                },
            );
    }))
}

/// Forgets `(ctx, key)` without running its destructor.
fn cls_delete(ctx: CUcontext, key: *mut c_void) -> CUresult {
    ret(cls_ctx(ctx).and_then(|c| {
        CLS.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .remove(&(c, key as usize))
            .map(|_| ())
            .ok_or(CuResult::INVALID_HANDLE)
    }))
}

/// The value under `(ctx, key)`; `CUDA_ERROR_INVALID_HANDLE` when there is none (the runtime
/// relies on that to create its per-context state on first use).
fn cls_get(out: *mut *mut c_void, ctx: CUcontext, key: *mut c_void) -> CUresult {
    ret(cls_ctx(ctx).and_then(|c| {
        let v = CLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .get(&(c, key as usize))
            .map(|e| e.value)
            .ok_or(CuResult::INVALID_HANDLE)?;
        // SAFETY: out-pointer from the runtime.
        unsafe { put(out, v as *mut c_void) }
    }))
}

/// Runs and drops every destructor registered for the context at `ctx` (called when a
/// context is destroyed or the primary context is reset or released for the last time).
pub(crate) fn context_gone(ctx: usize) {
    let gone: Vec<((usize, usize), ClsEntry)> = {
        let mut map = CLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(map) = map.as_mut() else { return };
        let keys: Vec<(usize, usize)> = map.keys().filter(|k| k.0 == ctx).copied().collect();
        keys.into_iter()
            .filter_map(|k| map.remove(&k).map(|e| (k, e)))
            .collect()
    };
    // Outside the lock: destructors may call back into the table.
    for ((c, key), e) in gone {
        if let Some(dtor) = e.dtor {
            dtor(c as CUcontext, key as *mut c_void, e.value as *mut c_void);
        }
    }
}

extern "C" fn cls_put_c(
    ctx: CUcontext,
    key: *mut c_void,
    value: *mut c_void,
    dtor: ClsDtor,
) -> CUresult {
    if verbose() {
        log_error(&format!("CONTEXT_LOCAL_STORAGE put({ctx:?}, {key:?})"));
    }
    cls_put(ctx, key, value, dtor)
}

extern "C" fn cls_delete_c(ctx: CUcontext, key: *mut c_void) -> CUresult {
    cls_delete(ctx, key)
}

extern "C" fn cls_get_c(out: *mut *mut c_void, ctx: CUcontext, key: *mut c_void) -> CUresult {
    cls_get(out, ctx, key)
}

pub static CLS_TABLE: Table<4> = Table([
    f!(cls_put_c),
    f!(cls_delete_c),
    f!(cls_get_c),
    std::ptr::null(),
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_serves_put_delete_get() {
        assert_eq!(CLS_TABLE.0[0], cls_put_c as *const c_void);
        assert_eq!(CLS_TABLE.0[1], cls_delete_c as *const c_void);
        assert_eq!(CLS_TABLE.0[2], cls_get_c as *const c_void);
        assert!(CLS_TABLE.0[3].is_null());
    }

    extern "C" fn count_dtor(_ctx: CUcontext, key: *mut c_void, value: *mut c_void) {
        DTORS.lock().unwrap().push((key as usize, value as usize));
    }
    static DTORS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

    #[test]
    fn context_local_storage_put_get_delete_and_destructors() {
        let ctx = 0x1000usize as CUcontext;
        let key = 0x20usize as *mut c_void;
        let key2 = 0x28usize as *mut c_void;
        let mut v: *mut c_void = std::ptr::null_mut();
        assert_eq!(cls_get(&raw mut v, ctx, key), CuResult::INVALID_HANDLE.0);
        assert_eq!(
            cls_put(ctx, key, 0x55usize as *mut c_void, Some(count_dtor)),
            0
        );
        assert_eq!(
            cls_put(ctx, key2, 0x66usize as *mut c_void, Some(count_dtor)),
            0
        );
        assert_eq!(
            cls_put(
                0x2000usize as CUcontext,
                key,
                0x77usize as *mut c_void,
                None
            ),
            0
        );
        assert_eq!(cls_get(&raw mut v, ctx, key), 0);
        assert_eq!(v as usize, 0x55);
        assert_eq!(cls_delete(ctx, key2), 0);
        assert_eq!(cls_delete(ctx, key2), CuResult::INVALID_HANDLE.0);
        context_gone(ctx as usize);
        assert_eq!(*DTORS.lock().unwrap(), vec![(0x20, 0x55)]);
        assert_eq!(cls_get(&raw mut v, ctx, key), CuResult::INVALID_HANDLE.0);
        assert_eq!(cls_get(&raw mut v, 0x2000usize as CUcontext, key), 0);
        assert_eq!(v as usize, 0x77);
        // No current context on this thread: a NULL context is refused.
        assert_eq!(
            cls_get(&raw mut v, std::ptr::null_mut(), key),
            CuResult::INVALID_CONTEXT.0
        );
    }
}

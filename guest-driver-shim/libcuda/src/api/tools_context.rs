//! The `21318C60-9714-3248-8CA6-41FF7324C8F2` export table ("tools context"), which cuBLAS
//! asks for on its first GEMM in CUDA 13. Refusing the table makes every cuBLAS GEMM fail with
//! `CUBLAS_STATUS_NOT_SUPPORTED` (seen on the H200, device run 17), so we serve it.
//!
//! Its layout is undocumented: a size header and 94 slots (the size newer drivers serve). Only
//! three slots matter to cuBLAS, as other remoting projects observed them; their arguments are
//! read as six integer registers (the C ABIs let a callee ignore ones the caller did not pass).
//! Every other slot logs its first call and returns `CUDA_ERROR_NOT_SUPPORTED`, so a library
//! that needs more fails with the slot's number. `VGPU_DEBUG=1` logs every call with its
//! arguments, which is how the next slot to implement is found.

use std::{
    collections::HashSet,
    ffi::c_void,
    sync::{Mutex, PoisonError},
};

use vgpu_protocol::CuResult;

use super::table::{Table, Uuid, size_of_table, uuid};
use crate::{CUresult, log_error, verbose};

pub const TOOLS_CONTEXT: Uuid = uuid(b"21318C60-9714-3248-8CA6-41FF7324C8F2");
/// Asked for by cuBLASLt's half-precision heuristics (`cublasLtHSSMatmulAlgoGetHeuristic`),
/// which dereferences NULL when the table is refused (H200, device run 6). Its meaning is not
/// known: every slot logs and refuses, so cuBLASLt gets an error instead of a crash.
pub const LT_HEURISTICS: Uuid = uuid(b"1734DC26-800D-4745-8726-C0F1E7DD8BCA");
const LT_SLOTS: usize = 65;
/// Asked for by cuFFT when it creates a plan ("tools module": a module's functions, their
/// names and parameters, as other projects found). Refused, cuFFT fails its plan with
/// CUFFT_INTERNAL_ERROR (H200, device run 5); served with refusing slots, cuFFT says which
/// slot it needs.
pub const TOOLS_MODULE: Uuid = uuid(b"6E163FBE-B958-444D-835C-E182AFF1991E");
const MODULE_SLOTS: usize = 33;

/// 94 slots after the size header.
const SLOTS: usize = 95;

/// What slot 51 hands out: an opaque, zeroed object the library only passes back to us.
#[repr(C, align(16))]
struct Opaque(std::cell::UnsafeCell<[u64; 64]>);
// SAFETY: the object is never written by the shim; the library only reads it.
unsafe impl Sync for Opaque {}
static OPAQUE_OBJECT: Opaque = Opaque(std::cell::UnsafeCell::new([0; 64]));

const TABLE_NAMES: [&str; 3] = ["TOOLS_CONTEXT", "LT_HEURISTICS", "TOOLS_MODULE"];

fn slot_call(table: usize, slot: usize, a: [u64; 6]) -> CUresult {
    let name = TABLE_NAMES[table];
    if verbose() {
        log_error(&format!(
            "{name}[{slot}]({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x})",
            a[0], a[1], a[2], a[3], a[4], a[5]
        ));
    }
    if table != 0 {
        return refuse(name, slot);
    }
    match slot {
        // (object, uint64_t *out): 1 for an object, 0 for none. The object is not always a
        // context (cuBLAS passes values like 1 << 32), so it is never dereferenced.
        4 => {
            let out = a[1] as *mut u64;
            if out.is_null() {
                return CuResult::UNKNOWN.0;
            }
            // SAFETY: non-NULL out-pointer from the library.
            unsafe { out.write_unaligned(u64::from(a[0] != 0)) };
            0
        }
        // (?, handle, uint64_t *out): reported as 0.
        39 => {
            let out = a[2] as *mut u64;
            if a[1] == 0 || out.is_null() {
                return CuResult::INVALID_VALUE.0;
            }
            // SAFETY: non-NULL out-pointer from the library.
            unsafe { out.write_unaligned(0) };
            0
        }
        // (?, handle, void **out): an opaque object; an all-ones handle is invalid.
        51 => {
            let out = a[2] as *mut *const c_void;
            if out.is_null() {
                return CuResult::INVALID_VALUE.0;
            }
            if a[1] == u64::MAX {
                return CuResult::INVALID_HANDLE.0;
            }
            // SAFETY: non-NULL out-pointer from the library.
            unsafe { out.write_unaligned(OPAQUE_OBJECT.0.get().cast_const().cast()) };
            0
        }
        _ => refuse(name, slot),
    }
}

/// Logs the first call of a slot we do not implement and refuses it.
fn refuse(name: &'static str, slot: usize) -> CUresult {
    static SEEN: Mutex<Option<HashSet<(&'static str, usize)>>> = Mutex::new(None);
    let first = SEEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert((name, slot));
    if first {
        log_error(&format!(
            "export table {name} slot {slot} is not supported by the vGPU yet (CUDA_ERROR_NOT_SUPPORTED)"
        ));
    }
    CuResult::NOT_SUPPORTED.0
}

extern "C" fn slot<const T: usize, const S: usize>(
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
) -> CUresult {
    slot_call(T, S, [a0, a1, a2, a3, a4, a5])
}

macro_rules! slots {
    ($t:literal, $len:expr; $($n:literal)*) => {
        [size_of_table::<{ $len }>(), $(slot::<$t, $n> as *const c_void),*]
    };
}

pub static LT_HEURISTICS_TABLE: Table<LT_SLOTS> = Table(slots!(1, LT_SLOTS;
    1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33
    34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64
));

pub static TOOLS_MODULE_TABLE: Table<MODULE_SLOTS> = Table(slots!(2, MODULE_SLOTS;
    1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32
));

pub static TOOLS_CONTEXT_TABLE: Table<SLOTS> = Table(slots!(0, SLOTS;
    1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33
    34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63
    64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94
));

#[cfg(test)]
mod tests {
    use super::*;

    fn call(slot: usize, a: [u64; 6]) -> CUresult {
        let f: extern "C" fn(u64, u64, u64, u64, u64, u64) -> CUresult =
            // SAFETY: every slot after the header is a `slot::<N>` function of this signature.
            unsafe { std::mem::transmute(TOOLS_CONTEXT_TABLE.0[slot]) };
        f(a[0], a[1], a[2], a[3], a[4], a[5])
    }

    #[test]
    fn layout_is_a_size_header_and_94_distinct_slots() {
        assert_eq!(TOOLS_CONTEXT_TABLE.0[0] as usize, 95 * 8);
        let slots: HashSet<usize> = TOOLS_CONTEXT_TABLE.0[1..]
            .iter()
            .map(|p| *p as usize)
            .collect();
        assert_eq!(slots.len(), 94, "every slot knows its own number");
        assert!(!slots.contains(&0));
    }

    #[test]
    fn known_slots_answer_and_others_refuse() {
        let mut out = 7u64;
        let p = &raw mut out as u64;
        assert_eq!(call(4, [0, p, 0, 0, 0, 0]), 0);
        assert_eq!(out, 0, "no object");
        assert_eq!(call(4, [1 << 32, p, 0, 0, 0, 0]), 0);
        assert_eq!(out, 1, "any object, never dereferenced");
        assert_eq!(call(4, [0, 0, 0, 0, 0, 0]), CuResult::UNKNOWN.0);
        out = 7;
        assert_eq!(call(39, [0, 1, p, 0, 0, 0]), 0);
        assert_eq!(out, 0);
        assert_eq!(call(39, [0, 0, p, 0, 0, 0]), CuResult::INVALID_VALUE.0);
        assert_eq!(call(51, [0, 5, p, 0, 0, 0]), 0);
        assert_eq!(out, OPAQUE_OBJECT.0.get() as u64);
        assert_eq!(
            call(51, [0, u64::MAX, p, 0, 0, 0]),
            CuResult::INVALID_HANDLE.0
        );
        assert_eq!(call(17, [0; 6]), CuResult::NOT_SUPPORTED.0);
    }
}

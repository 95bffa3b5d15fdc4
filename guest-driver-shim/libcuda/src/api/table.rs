//! The building blocks of the export tables (`exports.rs`, `tools_context.rs`, `cls.rs`):
//! their UUIDs and their layout as arrays of pointer-sized slots.

use std::ffi::c_void;

pub type Uuid = [u8; 16];

pub const fn uuid(s: &[u8; 36]) -> Uuid {
    const fn hex(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("bad hex digit in UUID"),
        }
    }
    let mut out = [0u8; 16];
    let (mut i, mut o) = (0, 0);
    while i < 36 {
        if s[i] == b'-' {
            i += 1;
            continue;
        }
        out[o] = hex(s[i]) << 4 | hex(s[i + 1]);
        o += 1;
        i += 2;
    }
    out
}

/// A table as the caller sees it: an array of pointer-sized slots.
#[repr(C, align(16))]
pub struct Table<const N: usize>(pub [*const c_void; N]);

// SAFETY: the tables are immutable after construction and hold only code addresses and sizes.
unsafe impl<const N: usize> Sync for Table<N> {}

pub const fn size_of_table<const N: usize>() -> *const c_void {
    (N * size_of::<usize>()) as *const c_void
}

/// A function as a table slot.
macro_rules! f {
    ($f:expr) => {
        $f as *const c_void
    };
}
pub(super) use f;

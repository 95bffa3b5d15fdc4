//! The guest side of the plain forwards, generated from [`vgpu_protocol::for_each_forward!`]:
//! one function per table line, with the C signature the line gives, which the route table
//! (`routes.rs`, route *forwarded*) exports under the header's signature. Each checks its
//! out-pointers, sends the request (the current context and one field per input) as one
//! synchronous call, and writes the reply's fields through the out-pointers.

use vgpu_protocol::{CuResult, Opcode, ops::forward};

use super::{handle_of, ret};
use crate::{CUresult, driver};

/// Refuses a NULL pointer argument (inputs read through a pointer, and every output).
#[rustfmt::skip]
macro_rules! check_pointer {
    (stream, $v:ident) => {}; (event, $v:ident) => {}; (device, $v:ident) => {};
    (u32, $v:ident) => {}; (i32, $v:ident) => {}; (u64, $v:ident) => {}; (usize, $v:ident) => {};
    ($pointer:ident, $v:ident) => {
        if $v.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
    };
}

/// The request field of an input argument.
#[rustfmt::skip]
macro_rules! to_wire {
    (stream, $req:ident . $f:ident, $v:ident) => { $req.$f = handle_of($v).into() };
    (event, $req:ident . $f:ident, $v:ident) => { $req.$f = handle_of($v).into() };
    (usize, $req:ident . $f:ident, $v:ident) => { $req.$f = ($v as u64).into() };
    (u32, $req:ident . $f:ident, $v:ident) => { $req.$f = $v.into() };
    (i32, $req:ident . $f:ident, $v:ident) => { $req.$f = $v.into() };
    (u64, $req:ident . $f:ident, $v:ident) => { $req.$f = $v.into() };
    (device, $req:ident . $f:ident, $v:ident) => { $req.$f = $v.into() };
    (in_attr64, $req:ident . $f:ident, $v:ident) => {
        // SAFETY: checked non-NULL; the API says it points at a whole CUstreamAttrValue.
        $req.$f = unsafe { $v.read_unaligned() }
    };
    ($out:ident, $req:ident . $f:ident, $v:ident) => {};
}

/// A reply field as the C type its out-pointer has.
trait Native<T> {
    fn native(self) -> T;
}

impl Native<i32> for zerocopy::little_endian::I32 {
    fn native(self) -> i32 {
        self.get()
    }
}

impl Native<u32> for zerocopy::little_endian::U32 {
    fn native(self) -> u32 {
        self.get()
    }
}

impl Native<u64> for zerocopy::little_endian::U64 {
    fn native(self) -> u64 {
        self.get()
    }
}

impl Native<usize> for zerocopy::little_endian::U64 {
    fn native(self) -> usize {
        usize::try_from(self.get()).unwrap_or(usize::MAX)
    }
}

impl Native<[u8; 64]> for [u8; 64] {
    fn native(self) -> [u8; 64] {
        self
    }
}

/// Writes an output argument from the reply.
#[rustfmt::skip]
macro_rules! from_wire {
    (stream, $v:ident, $field:expr) => {}; (event, $v:ident, $field:expr) => {};
    (device, $v:ident, $field:expr) => {}; (u32, $v:ident, $field:expr) => {};
    (i32, $v:ident, $field:expr) => {}; (u64, $v:ident, $field:expr) => {};
    (usize, $v:ident, $field:expr) => {}; (in_attr64, $v:ident, $field:expr) => {};
    ($out:ident, $v:ident, $field:expr) => {
        // SAFETY: checked non-NULL before the call; the caller's out-pointer.
        unsafe { $v.write_unaligned(Native::native($field)) }
    };
}

macro_rules! exports {
    (forwards { $( $(#[$m:meta])* $op:ident = $code:literal : $cname:ident
            ( $($arg:ident : $kind:ident),* ) [$($prop:ident),*] ; )* }) => {
        $(
            #[doc = concat!("`", stringify!($cname), "`, forwarded as is (`Opcode::", stringify!($op), "`).")]
            pub unsafe fn $cname($($arg: vgpu_protocol::forward_c_param!($kind)),*) -> CUresult {
                ret((|| {
                    $( check_pointer!($kind, $arg); )*
                    let d = driver::driver()?;
                    let ctx = if vgpu_protocol::forward_has!(ctx; $($prop)*) {
                        driver::current_handle()?
                    } else {
                        driver::current_handle().unwrap_or(0)
                    };
                    #[allow(unused_mut, clippy::needless_update)]
                    let mut req = forward::$op::Request { ctx: ctx.into(), ..Default::default() };
                    $( to_wire!($kind, req.$arg, $arg); )*
                    #[allow(unused_variables)]
                    let reply: forward::$op::Reply =
                        d.conn.call(Opcode::$op, &req, &[], None, None)?.parse()?;
                    $( from_wire!($kind, $arg, reply.$arg); )*
                    Ok(())
                })())
            }
        )*
    };
}

vgpu_protocol::for_each_forward!(exports);

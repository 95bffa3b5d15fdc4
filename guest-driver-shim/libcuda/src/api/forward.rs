//! The guest side of the plain forwards, generated from [`vgpu_protocol::for_each_forward!`]:
//! one function per table line, with the C signature the line gives, which the route table
//! (`routes.rs`, route *forwarded*) exports under the header's signature. Each checks its
//! out-pointers, sends the request (the current context and one field per input) as one
//! synchronous call, and writes the reply's fields through the out-pointers.

use vgpu_protocol::{CuResult, Opcode, ops::forward};

use super::{handle_of, ret};
use crate::{CUresult, driver};

/// Refuses a NULL pointer argument (inputs read through a pointer, and every output).
macro_rules! check_pointer {
    (in_attr64, $v:ident) => {
        if $v.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
    };
    (out_i32, $v:ident) => {
        if $v.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
    };
    (out_u32, $v:ident) => {
        if $v.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
    };
    (out_u64, $v:ident) => {
        if $v.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
    };
    (out_usize, $v:ident) => {
        if $v.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
    };
    (out_attr64, $v:ident) => {
        if $v.is_null() {
            return Err(CuResult::INVALID_VALUE);
        }
    };
    ($other:ident, $v:ident) => {};
}

/// The request field of an input argument.
macro_rules! to_wire {
    (stream, $req:ident . $f:ident, $v:ident) => {
        $req.$f = handle_of($v).into()
    };
    (event, $req:ident . $f:ident, $v:ident) => {
        $req.$f = handle_of($v).into()
    };
    (usize, $req:ident . $f:ident, $v:ident) => {
        $req.$f = ($v as u64).into()
    };
    (u32, $req:ident . $f:ident, $v:ident) => {
        $req.$f = $v.into()
    };
    (i32, $req:ident . $f:ident, $v:ident) => {
        $req.$f = $v.into()
    };
    (u64, $req:ident . $f:ident, $v:ident) => {
        $req.$f = $v.into()
    };
    (device, $req:ident . $f:ident, $v:ident) => {
        $req.$f = $v.into()
    };
    (in_attr64, $req:ident . $f:ident, $v:ident) => {
        // SAFETY: checked non-NULL; the API says it points at a whole CUstreamAttrValue.
        $req.$f = unsafe { $v.read_unaligned() }
    };
    ($out:ident, $req:ident . $f:ident, $v:ident) => {};
}

/// Writes an output argument from the reply.
macro_rules! from_wire {
    (out_i32, $v:ident, $field:expr) => {
        // SAFETY: checked non-NULL before the call; the caller's out-pointer.
        unsafe { $v.write_unaligned($field.get()) }
    };
    (out_u32, $v:ident, $field:expr) => {
        // SAFETY: checked non-NULL before the call; the caller's out-pointer.
        unsafe { $v.write_unaligned($field.get()) }
    };
    (out_u64, $v:ident, $field:expr) => {
        // SAFETY: checked non-NULL before the call; the caller's out-pointer.
        unsafe { $v.write_unaligned($field.get()) }
    };
    (out_usize, $v:ident, $field:expr) => {
        // SAFETY: checked non-NULL before the call; the caller's out-pointer.
        unsafe { $v.write_unaligned($field.get() as usize) }
    };
    (out_attr64, $v:ident, $field:expr) => {
        // SAFETY: checked non-NULL before the call; the caller's out-pointer.
        unsafe { $v.write_unaligned($field) }
    };
    ($in:ident, $v:ident, $field:expr) => {};
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

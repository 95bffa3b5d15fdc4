//! Plain forwards, generated whole from [`vgpu_protocol::for_each_forward!`]: each request is
//! decoded, its handles are resolved in the calling client's own table (a stream or event of
//! another client is `CUDA_ERROR_INVALID_HANDLE`; a device other than the guest's device 0
//! is `CUDA_ERROR_INVALID_DEVICE`), its context is made current, and the call goes to the
//! [`Gpu`](crate::gpu::Gpu) as a [`ForwardCall`], whose reply is sent back as is.

use vgpu_protocol::{CuResult, Opcode, codec::Call, ops::forward};

use super::Req;
use crate::{CallResult, Executor};

/// Resolves one argument of a forward in place: guest handles become the host's.
macro_rules! resolve {
    ($ex:ident, $r:ident, $ctx:ident, stream, $v:expr) => {
        $v = $ex.stream($r.client, $v.get(), $ctx)?.into()
    };
    ($ex:ident, $r:ident, $ctx:ident, event, $v:expr) => {
        $v = $ex.event($r.client, $v.get())?.into()
    };
    ($ex:ident, $r:ident, $ctx:ident, device, $v:expr) => {
        if $v.get() != 0 {
            return Err(CuResult::INVALID_DEVICE);
        }
    };
    ($ex:ident, $r:ident, $ctx:ident, $other:ident, $v:expr) => {};
}

macro_rules! forwards {
    (forwards { $( $(#[$m:meta])* $op:ident = $code:literal : $cname:ident
            ( $($arg:ident : $kind:ident),* ) [$($prop:ident),*] ; )* }) => {
        /// A plain forward as the GPU runs it: the request with every handle the host's own.
        #[derive(Clone, Copy, Debug)]
        #[allow(clippy::large_enum_variant)]
        pub enum ForwardCall {
            $( $op(forward::$op::Request), )*
        }

        /// Runs one plain forward.
        pub(super) fn dispatch(ex: &mut Executor, call: &Call<'_>, r: &mut Req<'_, '_, '_, '_>) -> CallResult {
            match r.op {
                $( Opcode::$op => {
                    let (req, _) = call
                        .parse::<forward::$op::Request>()
                        .map_err(|_| CuResult::INVALID_VALUE)?;
                    #[allow(unused_mut)]
                    let mut req = *req;
                    let ctx = req.ctx.get();
                    if ctx != 0 || vgpu_protocol::forward_has!(ctx; $($prop)*) {
                        ex.make_current(r.client, ctx)?;
                    } else {
                        ex.client(r.client)?;
                    }
                    $( resolve!(ex, r, ctx, $kind, req.$arg); )*
                    let reply = ex.gpu.forward(&ForwardCall::$op(req))?;
                    if reply.len() != size_of::<forward::$op::Reply>() {
                        return Err(CuResult::UNKNOWN);
                    }
                    r.w.push(r.code(), 0, &(), &reply);
                    Ok(())
                } )*
                _ => Err(CuResult::NOT_SUPPORTED),
            }
        }

        /// Calls NVIDIA's driver for a plain forward: `symbol` finds the export (its C
        /// signature is the table's, enums as plain integers), `device` is the host's device.
        pub(crate) fn call_driver(
            call: &ForwardCall,
            device: i32,
            symbol: impl Fn(&[u8]) -> Option<*mut std::ffi::c_void>,
        ) -> Result<Vec<u8>, CuResult> {
            #[allow(unused_imports)]
            use zerocopy::IntoBytes;
            match call {
                $( #[allow(unused_variables)] ForwardCall::$op(req) => {
                    let f = symbol(concat!(stringify!($cname), "\0").as_bytes())
                        .ok_or(CuResult::NOT_SUPPORTED)?;
                    let f: unsafe extern "C" fn($(vgpu_protocol::forward_c_param!($kind)),*) -> u32 =
                        // SAFETY: `f` is the driver's export of this name, whose C signature
                        // the table line gives in order (the same as `cuda.h`'s).
                        unsafe { std::mem::transmute(f) };
                    #[allow(unused_mut, unused_variables)]
                    let mut reply = forward::$op::Reply::default();
                    $( #[allow(unused_mut)] let mut $arg = driver_value!($kind, req.$arg, device); )*
                    // SAFETY: in-arguments are values, out-arguments point at locals of the
                    // C type the driver writes.
                    let result = unsafe { f($(driver_pass!($kind, $arg)),*) };
                    if result != 0 {
                        return Err(CuResult(result));
                    }
                    $( driver_store!($kind, reply.$arg, $arg); )*
                    Ok(reply.as_bytes().to_vec())
                } )*
            }
        }
    };
}

/// The local an argument is passed from (an output's starts zeroed).
#[rustfmt::skip]
macro_rules! driver_value {
    (stream, $v:expr, $dev:ident) => { $v.get() as *mut std::ffi::c_void };
    (event, $v:expr, $dev:ident) => { $v.get() as *mut std::ffi::c_void };
    (device, $v:expr, $dev:ident) => { $dev };
    (usize, $v:expr, $dev:ident) => { $v.get() as usize };
    (in_attr64, $v:expr, $dev:ident) => { $v };
    (out_attr64, $v:expr, $dev:ident) => { [0u8; 64] };
    (out_i32, $v:expr, $dev:ident) => { 0i32 };
    (out_u32, $v:expr, $dev:ident) => { 0u32 };
    (out_u64, $v:expr, $dev:ident) => { 0u64 };
    (out_usize, $v:expr, $dev:ident) => { 0usize };
    ($scalar:ident, $v:expr, $dev:ident) => { $v.get() };
}

#[rustfmt::skip]
macro_rules! driver_pass {
    (in_attr64, $v:ident) => { &raw const $v };
    (out_i32, $v:ident) => { &raw mut $v };
    (out_u32, $v:ident) => { &raw mut $v };
    (out_u64, $v:ident) => { &raw mut $v };
    (out_usize, $v:ident) => { &raw mut $v };
    (out_attr64, $v:ident) => { &raw mut $v };
    ($in:ident, $v:ident) => { $v };
}

#[rustfmt::skip]
macro_rules! driver_store {
    (out_i32, $field:expr, $v:ident) => { $field = $v.into() };
    (out_u32, $field:expr, $v:ident) => { $field = $v.into() };
    (out_u64, $field:expr, $v:ident) => { $field = $v.into() };
    (out_usize, $field:expr, $v:ident) => { $field = ($v as u64).into() };
    (out_attr64, $field:expr, $v:ident) => { $field = $v };
    ($in:ident, $field:expr, $v:ident) => { let _ = $v; };
}

vgpu_protocol::for_each_forward!(forwards);

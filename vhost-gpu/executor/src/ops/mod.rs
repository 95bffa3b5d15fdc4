//! The operations, one module per family. The dispatch is generated from the protocol's
//! operation table ([`vgpu_protocol::for_each_op!`]): each line names its request body, which
//! is decoded here, and the handler of its family that runs it. Plain forwards
//! ([`vgpu_protocol::for_each_forward!`]) are generated whole, in [`forward`].

mod context;
mod device;
mod event;
pub(crate) mod forward;
mod graph;
mod launch;
mod memory;
mod module;
mod stream;

use vgpu_protocol::{CuResult, Opcode, ReplyWriter, call_flags, calls, codec::Call};
use zerocopy::{Immutable, IntoBytes};

use crate::{CallResult, ClientKey, DataStream, Executor};

/// What every handler uses.
mod prelude {
    pub(super) use log::info;
    pub(super) use vgpu_protocol::{
        CuResult, Opcode, PROTOCOL_MAJOR, PROTOCOL_MINOR,
        calls::{self, HELLO_MESSAGE_LEN, fill_str, read_str},
    };
    pub(super) use zerocopy::IntoBytes;

    pub(super) use super::Req;
    pub(super) use crate::{
        ATTR_MULTIPROCESSOR_COUNT, Allocation, CONSOLE_CHUNK, CallResult, Executor, Object,
        gpu::LaunchConfig, show,
    };
}

/// One call being run: who sent it, its operation and flags, the message's data streams and
/// the reply being written.
pub(crate) struct Req<'r, 'a, 'w, 't> {
    pub client: ClientKey,
    pub op: Opcode,
    /// [`call_flags`] of the call.
    pub flags: u16,
    pub data_in: DataStream<'a>,
    pub data_out: DataStream<'a>,
    /// The furthest byte of the data-out stream written so far.
    pub data_out_len: &'r mut u64,
    pub w: &'r mut ReplyWriter<'w>,
    /// The bytes after the call's fixed body (kernel parameters, a symbol name).
    pub tail: &'t [u8],
}

impl Req<'_, '_, '_, '_> {
    /// The call's opcode as the reply record carries it.
    pub fn code(&self) -> u16 {
        self.op as u16
    }

    /// Issued asynchronously (`...Async`): stream-ordered, not waited for.
    pub fn is_async(&self) -> bool {
        self.flags & call_flags::ASYNC != 0
    }

    /// Answers success with no body.
    pub fn ok(&mut self) -> CallResult {
        self.w.push_status(self.code(), 0);
        Ok(())
    }

    /// After a synchronising call: reports the client's deferred errors, else success.
    pub fn synchronized(&mut self, ex: &mut Executor) -> CallResult {
        ex.take_deferred(self.client)?;
        self.ok()
    }

    /// Answers success with `body`.
    pub fn reply<T: IntoBytes + Immutable>(&mut self, body: &T) -> CallResult {
        self.w.push(self.code(), 0, body, &[]);
        Ok(())
    }

    /// Answers success with a new handle or a device pointer.
    pub fn handle(&mut self, handle: u64) -> CallResult {
        self.reply(&calls::HandleReply {
            handle: handle.into(),
        })
    }

    /// Answers success with one 32-bit value.
    pub fn value_i32(&mut self, value: i32) -> CallResult {
        self.reply(&calls::I32Reply {
            value: value.into(),
            _pad: 0.into(),
        })
    }
}

/// A resolved stream or event to synchronise on or poll.
enum Waitable {
    Stream(u64),
    Event(u64),
}

/// Polls it (for `StreamQuery`/`EventQuery`) or synchronises on it; a synchronisation also
/// reports the client's deferred errors.
fn sync_or_query(ex: &mut Executor, r: &mut Req, what: Waitable) -> CallResult {
    let query = matches!(r.op, Opcode::StreamQuery | Opcode::EventQuery);
    match (what, query) {
        (Waitable::Stream(s), true) => ex.gpu.stream_query(s)?,
        (Waitable::Stream(s), false) => ex.gpu.stream_synchronize(s)?,
        (Waitable::Event(e), true) => ex.gpu.event_query(e)?,
        (Waitable::Event(e), false) => ex.gpu.event_synchronize(e)?,
    }
    if query { r.ok() } else { r.synchronized(ex) }
}

macro_rules! route {
    (ops { $( $(#[$m:meta])* $op:ident = $code:literal ($body:ty) -> $reply:ty
            => $family:ident :: $handler:ident [$($prop:ident),*] ; )* }) => {
        /// Decodes the call's fixed body as its table line says and runs its handler.
        pub(crate) fn dispatch<'t>(ex: &mut Executor, call: &Call<'t>, r: &mut Req<'_, '_, '_, 't>) -> CallResult {
            #[allow(unused_imports)]
            use vgpu_protocol::calls::*;
            match r.op {
                $( Opcode::$op => {
                    let (args, tail) = call.parse::<$body>().map_err(|_| CuResult::INVALID_VALUE)?;
                    r.tail = tail;
                    $family::$handler(ex, r, args)
                } )*
                _ => forward::dispatch(ex, call, r),
            }
        }
    };
}

vgpu_protocol::for_each_op!(route);

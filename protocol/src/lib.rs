//! The vGPU wire protocol.
//!
//! Every side speaks it: the guest shim (`libcuda.so.1`), the `vhost-gpu` daemon and, later, the
//! TCP transport between hosts. It describes *what a call is*; *where its bulk bytes are* is left
//! to the transport:
//!
//! * A **message** is a [`MsgHeader`] followed by `ncalls` call records. Each record is a
//!   [`CallHeader`] and a body (a fixed struct from [`calls`], optionally followed by a
//!   variable-length tail such as kernel parameters or a symbol name).
//! * Bulk data never sits inside a call. A call names a [`DataRef`]: a byte range of the
//!   message's *data-in* stream (host-to-device bytes) or *data-out* stream (device-to-host
//!   bytes). On virtio those streams are the guest-memory descriptors that follow the message in
//!   the descriptor chain; on TCP they travel inline after the message.
//! * The reply is a [`RespHeader`] followed by one [`ReplyHeader`] + body per executed call.
//!
//! All integers are little-endian; all structs are unaligned (`zerocopy` byte-order types), so
//! they can be read from any offset of a guest buffer without copying.

pub mod calls;
pub mod codec;
pub mod ops;
pub mod result;

pub use codec::{
    CallIter, DecodeError, EncodeError, Encoder, ReplyIter, ReplyWriter, parse_request,
    parse_response,
};
pub use ops::Opcode;
pub use result::CuResult;
/// Re-exported for the bodies the operation tables generate in other crates.
pub use zerocopy;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout,
    little_endian::{U16, U32, U64},
};

/// `"VGPU"` read as a little-endian u32; first word of every message and reply.
pub const MAGIC: u32 = 0x5550_4756;
/// Protocol major version: a different major is refused at the handshake.
pub const PROTOCOL_MAJOR: u16 = 1;
/// Protocol minor version: additions that an older peer can ignore.
pub const PROTOCOL_MINOR: u16 = 0;
/// Build identity of this crate, exchanged in the handshake and logged on both sides.
pub const BUILD_ID: &str = concat!("vgpu-protocol ", env!("CARGO_PKG_VERSION"));

/// Bytes of device config space served to the guest (`VHOST_USER_GET_CONFIG`).
pub const CONFIG_SPACE_LEN: usize = 8;

/// An error and its sources, as one line: "what failed: why: and why". The one printer every
/// binary of the project uses at its edge (the shim, the daemon, the remote-slice sessions).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The config space a guest driver reads to recognise our device: `"VGPU"`, the protocol
/// major version and the number of queues.
pub fn config_space(num_queues: u16) -> [u8; CONFIG_SPACE_LEN] {
    let mut c = [0u8; CONFIG_SPACE_LEN];
    c[0..4].copy_from_slice(b"VGPU");
    c[4..6].copy_from_slice(&PROTOCOL_MAJOR.to_le_bytes());
    c[6..8].copy_from_slice(&num_queues.to_le_bytes());
    c
}

/// Message flags.
pub mod flags {
    /// The sender waits for a reply in the chain's writable area.
    pub const WANT_REPLY: u16 = 1 << 0;
    /// The client (one guest process) went away: free everything it holds. No calls follow.
    pub const CLIENT_CLOSE: u16 = 1 << 1;
}

/// Reply record flags (set on the last record of a reply).
pub mod reply_flags {
    /// The GPU printed output for the guest (device-side `printf`): fetch it with
    /// [`crate::Opcode::ConsoleRead`] before returning from the synchronising call.
    pub const CONSOLE_PENDING: u16 = 1 << 0;
}

/// Call flags.
pub mod call_flags {
    /// A stream-ordered call issued asynchronously (`...Async` variants).
    pub const ASYNC: u16 = 1 << 0;
    /// The host buffer of this copy is reused as soon as the call completes (a staged copy
    /// from ordinary guest memory): finish the copy on its stream before completing.
    pub const WAIT_STREAM: u16 = 1 << 1;
}

/// Capability bits exchanged in the handshake.
pub mod caps {
    /// The executor is the CPU simulator: nothing runs on a GPU.
    pub const SIM_GPU: u32 = 1 << 0;
    /// Bulk data may travel inline after the message (TCP).
    pub const INLINE_DATA: u32 = 1 << 1;
    /// Bulk data may be described by guest-memory descriptors (virtio).
    pub const SCATTER_DATA: u32 = 1 << 2;
    /// Errors of fire-and-forget calls are reported at the next synchronising call.
    pub const DEFERRED_ERRORS: u32 = 1 << 3;
    /// The host enforces a memory quota smaller than the physical device.
    pub const MEMORY_QUOTA: u32 = 1 << 4;
}

/// Header of every message (32 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MsgHeader {
    pub magic: U32,
    pub version: U16,
    pub flags: U16,
    /// Client identity. On virtio the guest kernel driver overwrites it, so a guest process
    /// cannot claim another's; over virtio-user it is whatever the single frontend says.
    pub client: U32,
    pub ncalls: U32,
    /// Bytes of the message, this header included.
    pub req_len: U32,
    /// Bytes reserved for the reply at the start of the writable area.
    pub resp_cap: U32,
    pub seq: U64,
}

/// Header of one call record (8 bytes); `len` bytes of body follow, padded to 8.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CallHeader {
    pub opcode: U16,
    pub flags: U16,
    pub len: U32,
}

/// Header of a reply (24 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RespHeader {
    pub magic: U32,
    /// Number of reply records that follow.
    pub nreplies: U32,
    /// Bytes of the reply, this header included.
    pub len: U32,
    /// Bytes written to the data-out stream.
    pub data_out_len: U32,
    pub seq: U64,
}

/// Header of one reply record (16 bytes, so records stay 8-aligned; padded body follows).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ReplyHeader {
    pub opcode: U16,
    /// [`reply_flags`].
    pub flags: U16,
    /// `CUresult` of the call.
    pub result: U32,
    pub len: U32,
    pub _pad: U32,
}

/// A byte range of the message's data-in or data-out stream.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct DataRef {
    pub offset: U64,
    pub len: U64,
}

impl DataRef {
    pub fn new(offset: u64, len: u64) -> Self {
        Self {
            offset: offset.into(),
            len: len.into(),
        }
    }
}

/// Stream handle values with a meaning of their own, as in `cuda.h`.
pub mod stream {
    /// The context's default (NULL) stream.
    pub const NULL: u64 = 0;
    /// `CU_STREAM_LEGACY`.
    pub const LEGACY: u64 = 1;
    /// `CU_STREAM_PER_THREAD`.
    pub const PER_THREAD: u64 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_are_fixed() {
        assert_eq!(size_of::<MsgHeader>(), 32);
        assert_eq!(size_of::<CallHeader>(), 8);
        assert_eq!(size_of::<RespHeader>(), 24);
        assert_eq!(size_of::<ReplyHeader>(), 16);
        assert_eq!(size_of::<DataRef>(), 16);
    }

    #[test]
    fn magic_spells_vgpu() {
        assert_eq!(&MAGIC.to_le_bytes(), b"VGPU");
        assert_eq!(&config_space(2)[..4], b"VGPU");
    }
}

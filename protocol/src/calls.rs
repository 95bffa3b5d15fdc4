//! Bodies of the calls and their replies. Each struct is the fixed part; where a call carries a
//! variable tail (kernel parameters, a symbol name) the struct says so.

use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout,
    little_endian::{F32, I32, U16, U32, U64},
};

use crate::DataRef;

macro_rules! wire {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }

        impl Default for $name {
            fn default() -> Self {
                <Self as zerocopy::FromZeros>::new_zeroed()
            }
        }
    };
}

wire!(
    /// `ConsoleRead`: up to `max` bytes the GPU printed for this guest (device `printf`).
    /// The reply's body is the bytes; its record carries `CONSOLE_PENDING` while more wait.
    ConsoleRead {
        max: U32,
        _pad: U32,
    }
);

/// Length of the build-id field of the handshake.
pub const BUILD_ID_LEN: usize = 48;
/// Length of the message field of the handshake reply.
pub const HELLO_MESSAGE_LEN: usize = 160;
/// Length of a device name, as `cuDeviceGetName` may return.
pub const DEVICE_NAME_LEN: usize = 256;

wire!(
    /// `Hello`: the first call of every client.
    Hello {
        proto_major: U16,
        proto_minor: U16,
        caps: U32,
        build_id: [u8; BUILD_ID_LEN],
    }
);

wire!(
    /// Reply to `Hello`. On a refused handshake `message` says why.
    HelloReply {
        proto_major: U16,
        proto_minor: U16,
        caps: U32,
        device_count: U32,
        driver_version: I32,
        build_id: [u8; BUILD_ID_LEN],
        message: [u8; HELLO_MESSAGE_LEN],
    }
);

wire!(
    /// A call naming one device ordinal.
    DeviceArg { device: I32, _pad: U32 }
);

wire!(
    /// A call naming a context.
    CtxArg { ctx: U64 }
);

wire!(
    /// A call naming one handle (stream, event, module, function).
    HandleArg { handle: U64 }
);

wire!(
    /// Reply carrying a new handle or a device pointer.
    HandleReply { handle: U64 }
);

wire!(
    /// Reply carrying one 32-bit value.
    I32Reply { value: I32, _pad: U32 }
);

wire!(
    /// Fixed part of the `DeviceGetInfo` reply; `attr_count` little-endian i32 attribute values
    /// follow, indexed by `CUdevice_attribute` (index 0 is unused).
    DeviceInfo {
        name: [u8; DEVICE_NAME_LEN],
        uuid: [u8; 16],
        total_mem: U64,
        /// Memory the client may use: the slice's quota, never more than `total_mem`.
        quota_mem: U64,
        attr_count: U32,
        _pad: U32,
    }
);

wire!(CtxCreate {
    device: I32,
    flags: U32
});

wire!(PrimaryCtxSetFlags {
    device: I32,
    flags: U32
});

wire!(MemAlloc {
    ctx: U64,
    size: U64
});

wire!(MemFree {
    ctx: U64,
    dptr: U64
});

wire!(MemInfoReply {
    free: U64,
    total: U64
});

wire!(AddressRangeReply {
    base: U64,
    size: U64
});

wire!(
    /// `cuMemsetD8/16/32[Async]`: `count` elements of `elem_size` bytes (1, 2 or 4).
    Memset {
        ctx: U64,
        stream: U64,
        dptr: U64,
        count: U64,
        value: U32,
        elem_size: U32,
    }
);

wire!(
    /// Host-to-device copy; the source bytes are `data` of the data-in stream.
    MemcpyHtoD {
        ctx: U64,
        stream: U64,
        dst: U64,
        data: DataRef,
    }
);

wire!(
    /// Device-to-host copy; the bytes land in `data` of the data-out stream.
    MemcpyDtoH {
        ctx: U64,
        stream: U64,
        src: U64,
        data: DataRef,
    }
);

wire!(MemcpyDtoD {
    ctx: U64,
    stream: U64,
    dst: U64,
    src: U64,
    len: U64,
});

wire!(StreamCreate {
    ctx: U64,
    flags: U32,
    priority: I32,
});

wire!(
    /// A call naming a stream; `ctx` says whose default stream the special values 0/1/2 mean.
    StreamArg { stream: U64, ctx: U64 }
);

wire!(
    /// `cuStreamBeginCapture`: work queued on the stream from now on is recorded, on the host,
    /// into a graph instead of running.
    BeginCapture { stream: U64, ctx: U64, mode: U32, _pad: U32 }
);

wire!(
    /// `cuGraphInstantiateWithFlags`.
    GraphInstantiate { graph: U64, flags: U64 }
);

wire!(
    /// `cuGraphExecUpdate`: gives `exec` the parameters of `graph` (same topology). The reply
    /// is an [`I32Reply`] holding the `CUgraphExecUpdateResult`, with the call's result.
    GraphExecUpdate { exec: U64, graph: U64 }
);

wire!(
    /// `cuGraphLaunch` (stream-ordered, fire-and-forget).
    GraphLaunch { exec: U64, stream: U64, ctx: U64 }
);

wire!(StreamWaitEvent {
    stream: U64,
    ctx: U64,
    event: U64,
    flags: U32,
    _pad: U32,
});

wire!(EventCreate {
    ctx: U64,
    flags: U32,
    _pad: U32,
});

wire!(EventRecord {
    event: U64,
    stream: U64,
    ctx: U64,
});

wire!(EventElapsed {
    start: U64,
    end: U64
});

wire!(F32Reply {
    value: F32,
    _pad: U32
});

wire!(
    /// Load a module (cubin, fatbin or PTX) from `image` of the data-in stream.
    ModuleLoad { ctx: U64, image: DataRef }
);

wire!(
    /// Fixed part of the `ModuleLoad` reply: `nfuncs` [`FuncInfo`] records follow.
    ModuleLoadReply { module: U64, nfuncs: U32, _pad: U32 }
);

wire!(
    /// One kernel of a loaded module: `name_len` bytes of name, then `nparams` [`ParamInfo`],
    /// padded to 8.
    FuncInfo {
        handle: U64,
        name_len: U32,
        nparams: U32,
    }
);

wire!(
    /// Offset and size of one kernel parameter in the parameter buffer.
    ParamInfo { offset: U32, size: U32 }
);

wire!(
    /// `cuModuleGetGlobal`: a NUL-free symbol name of `name_len` bytes follows.
    ModuleGetGlobal { module: U64, name_len: U32, _pad: U32 }
);

wire!(GlobalReply {
    dptr: U64,
    size: U64
});

wire!(FuncAttribute {
    func: U64,
    attribute: I32,
    value: I32,
});

wire!(Occupancy {
    func: U64,
    block_size: I32,
    flags: U32,
    dynamic_smem: U64,
});

wire!(
    /// `cuLaunchKernel[Ex]`: `params_len` bytes of packed parameters follow (laid out by the
    /// offsets of the load reply).
    LaunchKernel {
        func: U64,
        stream: U64,
        ctx: U64,
        grid: [U32; 3],
        block: [U32; 3],
        shared_mem: U32,
        params_len: U32,
        /// Launch attribute bits (see [`launch_flags`]).
        flags: U32,
        _pad: U32,
        /// Thread-block cluster dimensions (`CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION`); zeros
        /// for none.
        cluster: [U32; 3],
        _pad2: U32,
    }
);

wire!(
    /// `cuOccupancyMaxActiveClusters` for a launch of this shape.
    OccupancyClusters {
        func: U64,
        grid: [U32; 3],
        block: [U32; 3],
        cluster: [U32; 3],
        shared_mem: U32,
    }
);

/// Bits of [`LaunchKernel::flags`].
pub mod launch_flags {
    /// `CU_LAUNCH_ATTRIBUTE_COOPERATIVE`.
    pub const COOPERATIVE: u32 = 1 << 0;
}

/// Copy a string into a fixed, NUL-padded field (truncating).
pub fn fill_str<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N.saturating_sub(1));
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Read a NUL-padded fixed field as text.
pub fn read_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_strings_round_trip_and_truncate() {
        let f: [u8; 8] = fill_str("hello");
        assert_eq!(read_str(&f), "hello");
        let g: [u8; 4] = fill_str("toolong");
        assert_eq!(read_str(&g), "too");
    }

    #[test]
    fn bodies_have_expected_sizes() {
        assert_eq!(size_of::<LaunchKernel>(), 80);
        assert_eq!(size_of::<MemcpyHtoD>(), 40);
        assert_eq!(size_of::<DeviceInfo>(), 256 + 16 + 8 + 8 + 8);
    }
}

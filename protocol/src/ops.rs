//! The one table of operations. Everything that lists operations comes from here: the
//! [`Opcode`] enum and [`Opcode::ALL`], each operation's request and reply bodies, whether it
//! is fire-and-forget and whether it flushes the device console, the executor's dispatch (the
//! family module and handler named on each line) and, for plain forwards, the whole path from
//! the guest's export to the call on the host's driver.
//!
//! Two tables, each a macro that hands its lines to a callback macro:
//!
//! * [`for_each_op!`]: operations with logic of their own on one side or both.
//!   `Name = code (Request) -> Reply => family::handler [properties];`
//!   Properties: `fire_and_forget` (no reply is waited for; errors surface at the next
//!   synchronising call), `console` (a synchronising call after which the device console is
//!   read).
//! * [`for_each_forward!`]: plain forwards, one line each:
//!   `Name = code : cuExport(arg: kind, ...) [properties];`, the arguments in the C order of
//!   the export. Kinds: `stream`, `event` (a handle the host resolves), `device` (an ordinal),
//!   `u32`, `i32`, `u64`, `usize` (values), `in_attr64` (a pointer to 64 bytes the guest sends:
//!   a `CUstreamAttrValue`/`CUlaunchAttributeValue`), `out_i32`, `out_u32`, `out_u64`,
//!   `out_usize`, `out_attr64` (pointers the answer is written through). Property `ctx`: the
//!   call runs in the caller's current context, which must exist. Every forward's request
//!   carries the caller's current context (`ctx`, 0 for none) and one field per argument; the
//!   reply one field per `out_` argument (other fields are zero-sized).

use crate::calls::*;

/// The operations with logic of their own (see the module's documentation for the format).
#[macro_export]
macro_rules! for_each_op {
    ($callback:ident $(, { $($prefix:tt)* })?) => {
        $callback! { $($($prefix)*)? ops {
            /// The first call of every client: versions, capabilities, device count.
            Hello = 0x0001 (Hello) -> HelloReply => device::hello [];
            /// What the GPU printed for this guest (device `printf`).
            ConsoleRead = 0x0002 (ConsoleRead) -> () => device::console_read [console];
            DeviceGetCount = 0x0010 (()) -> I32Reply => device::count [];
            DeviceGetInfo = 0x0011 (DeviceArg) -> DeviceInfo => device::info [];
            CtxCreate = 0x0020 (CtxCreate) -> HandleReply => context::create [];
            CtxDestroy = 0x0021 (CtxArg) -> () => context::destroy [console];
            PrimaryCtxRetain = 0x0022 (DeviceArg) -> HandleReply => context::primary_retain [];
            PrimaryCtxRelease = 0x0023 (DeviceArg) -> () => context::primary_release [console];
            PrimaryCtxReset = 0x0024 (DeviceArg) -> () => context::primary_release [console];
            CtxSynchronize = 0x0025 (CtxArg) -> () => context::synchronize [console];
            PrimaryCtxSetFlags = 0x0026 (PrimaryCtxSetFlags) -> () => context::primary_set_flags [];
            MemAlloc = 0x0030 (MemAlloc) -> HandleReply => memory::alloc [];
            MemFree = 0x0031 (MemFree) -> () => memory::free [console];
            MemGetInfo = 0x0032 (CtxArg) -> MemInfoReply => memory::info [];
            Memset = 0x0033 (Memset) -> () => memory::memset [];
            MemcpyHtoD = 0x0034 (MemcpyHtoD) -> () => memory::copy_htod [];
            MemcpyDtoH = 0x0035 (MemcpyDtoH) -> () => memory::copy_dtoh [console];
            MemcpyDtoD = 0x0036 (MemcpyDtoD) -> () => memory::copy_dtod [];
            MemGetAddressRange = 0x0037 (MemFree) -> AddressRangeReply => memory::address_range [];
            StreamCreate = 0x0040 (StreamCreate) -> HandleReply => stream::create [];
            StreamDestroy = 0x0041 (StreamArg) -> () => stream::destroy [];
            StreamSynchronize = 0x0042 (StreamArg) -> () => stream::sync_or_query [console];
            StreamQuery = 0x0043 (StreamArg) -> () => stream::sync_or_query [];
            StreamWaitEvent = 0x0044 (StreamWaitEvent) -> () => stream::wait_event [fire_and_forget];
            StreamBeginCapture = 0x0045 (BeginCapture) -> () => graph::begin_capture [];
            StreamEndCapture = 0x0046 (StreamArg) -> HandleReply => graph::end_capture [];
            EventCreate = 0x0050 (EventCreate) -> HandleReply => event::create [];
            EventDestroy = 0x0051 (HandleArg) -> () => event::destroy [];
            EventRecord = 0x0052 (EventRecord) -> () => event::record [fire_and_forget];
            EventSynchronize = 0x0053 (HandleArg) -> () => event::sync_or_query [console];
            EventQuery = 0x0054 (HandleArg) -> () => event::sync_or_query [];
            EventElapsedTime = 0x0055 (EventElapsed) -> F32Reply => event::elapsed [];
            ModuleLoad = 0x0060 (ModuleLoad) -> ModuleLoadReply => module::load [console];
            ModuleUnload = 0x0061 (HandleArg) -> () => module::unload [console];
            ModuleGetGlobal = 0x0062 (ModuleGetGlobal) -> GlobalReply => module::get_global [];
            FuncGetAttribute = 0x0063 (FuncAttribute) -> I32Reply => module::func_attribute [];
            FuncSetAttribute = 0x0064 (FuncAttribute) -> () => module::func_attribute [];
            OccupancyMaxActiveBlocks = 0x0065 (Occupancy) -> I32Reply => launch::occupancy_blocks [];
            OccupancyMaxActiveClusters = 0x0066 (OccupancyClusters) -> I32Reply => launch::occupancy_clusters [];
            LaunchKernel = 0x0070 (LaunchKernel) -> () => launch::launch [fire_and_forget];
            GraphInstantiate = 0x0080 (GraphInstantiate) -> HandleReply => graph::instantiate [];
            GraphLaunch = 0x0081 (GraphLaunch) -> () => graph::launch [fire_and_forget];
            GraphExecDestroy = 0x0082 (HandleArg) -> () => graph::destroy [];
            GraphDestroy = 0x0083 (HandleArg) -> () => graph::destroy [];
            GraphExecUpdate = 0x0084 (GraphExecUpdate) -> I32Reply => graph::exec_update [];
        } }
    };
}

/// The plain forwards (see the module's documentation for the format). Adding a line here is
/// all a plain forward needs: the guest's export, the wire bodies, the host's decoding and
/// handle checks and the call on NVIDIA's driver are generated from it.
#[macro_export]
macro_rules! for_each_forward {
    ($callback:ident $(, { $($prefix:tt)* })?) => {
        $callback! { $($($prefix)*)? forwards {
            StreamGetAttribute = 0x0100 : cuStreamGetAttribute(stream: stream, attr: u32, value: out_attr64) [];
            StreamSetAttribute = 0x0101 : cuStreamSetAttribute(stream: stream, attr: u32, value: in_attr64) [];
            StreamCopyAttributes = 0x0102 : cuStreamCopyAttributes(dst: stream, src: stream) [];
            DeviceGetP2PAttribute = 0x0103 : cuDeviceGetP2PAttribute(value: out_i32, attr: u32, src: device, dst: device) [];
            DeviceGetTexture1DLinearMaxWidth = 0x0104 : cuDeviceGetTexture1DLinearMaxWidth(width: out_usize, format: u32, channels: u32, dev: device) [];
            DeviceGetExecAffinitySupport = 0x0105 : cuDeviceGetExecAffinitySupport(supported: out_i32, kind: u32, dev: device) [];
            CtxResetPersistingL2Cache = 0x0106 : cuCtxResetPersistingL2Cache() [ctx];
            FlushGpuDirectRdmaWrites = 0x0107 : cuFlushGPUDirectRDMAWrites(target: u32, scope: u32) [ctx];
        } }
    };
}

/// The request field of a forward's argument: the value for inputs, nothing for outputs.
#[macro_export]
macro_rules! forward_request_field {
    (stream) => {
        $crate::zerocopy::little_endian::U64
    };
    (event) => {
        $crate::zerocopy::little_endian::U64
    };
    (device) => {
        $crate::zerocopy::little_endian::I32
    };
    (u32) => {
        $crate::zerocopy::little_endian::U32
    };
    (i32) => {
        $crate::zerocopy::little_endian::I32
    };
    (u64) => {
        $crate::zerocopy::little_endian::U64
    };
    (usize) => {
        $crate::zerocopy::little_endian::U64
    };
    (in_attr64) => {
        [u8; 64]
    };
    ($out:ident) => {
        [u8; 0]
    };
}

/// The reply field of a forward's argument: the answer for outputs, nothing for inputs.
#[macro_export]
macro_rules! forward_reply_field {
    (out_i32) => {
        $crate::zerocopy::little_endian::I32
    };
    (out_u32) => {
        $crate::zerocopy::little_endian::U32
    };
    (out_u64) => {
        $crate::zerocopy::little_endian::U64
    };
    (out_usize) => {
        $crate::zerocopy::little_endian::U64
    };
    (out_attr64) => {
        [u8; 64]
    };
    ($in:ident) => {
        [u8; 0]
    };
}

/// The C type of a forward's argument as the driver's export takes it (handles as `void *`,
/// enums as plain integers): the guest's export and the host's call of the driver both use it.
#[macro_export]
macro_rules! forward_c_param {
    (stream) => { *mut ::std::ffi::c_void };
    (event) => { *mut ::std::ffi::c_void };
    (device) => { i32 };
    (u32) => { u32 };
    (i32) => { i32 };
    (u64) => { u64 };
    (usize) => { usize };
    (in_attr64) => { *const [u8; 64] };
    (out_i32) => { *mut i32 };
    (out_u32) => { *mut u32 };
    (out_u64) => { *mut u64 };
    (out_usize) => { *mut usize };
    (out_attr64) => { *mut [u8; 64] };
}

/// True for a forward's `properties` that hold `$prop`.
#[macro_export]
macro_rules! forward_has {
    ($prop:ident; ) => { false };
    (ctx; ctx $($rest:ident)*) => { true };
    ($prop:ident; $other:ident $($rest:ident)*) => { $crate::forward_has!($prop; $($rest)*) };
}

macro_rules! has_prop {
    (fire_and_forget; fire_and_forget $($rest:ident)*) => { true };
    (console; console $($rest:ident)*) => { true };
    ($prop:ident; ) => { false };
    ($prop:ident; $other:ident $($rest:ident)*) => { has_prop!($prop; $($rest)*) };
}

macro_rules! define_opcodes {
    (
        ops { $( $(#[$om:meta])* $op:ident = $ocode:literal ($obody:ty) -> $oreply:ty
                => $family:ident :: $handler:ident [$($oprop:ident),*] ; )* }
        forwards { $( $(#[$fm:meta])* $fop:ident = $fcode:literal : $cname:ident
                ( $($arg:ident : $kind:ident),* ) [$($fprop:ident),*] ; )* }
    ) => {
        /// Operation codes. Values are part of the wire format: never renumber.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Opcode {
            $( $(#[$om])* $op = $ocode, )*
            $( $(#[$fm])* #[doc = concat!("`", stringify!($cname), "`, forwarded as is.")] $fop = $fcode, )*
        }

        impl Opcode {
            /// Every operation, in table order.
            pub const ALL: &'static [Opcode] = &[ $( Opcode::$op, )* $( Opcode::$fop, )* ];

            pub fn from_u16(v: u16) -> Option<Self> {
                match v {
                    $( $ocode => Some(Opcode::$op), )*
                    $( $fcode => Some(Opcode::$fop), )*
                    _ => None,
                }
            }

            /// The operation's name, as logs show it.
            pub fn name(self) -> &'static str {
                match self {
                    $( Opcode::$op => stringify!($op), )*
                    $( Opcode::$fop => stringify!($fop), )*
                }
            }

            /// No reply is waited for: errors surface at the next synchronising call.
            pub fn is_fire_and_forget(self) -> bool {
                match self {
                    $( Opcode::$op => has_prop!(fire_and_forget; $($oprop)*), )*
                    $( Opcode::$fop => false, )*
                }
            }

            /// A synchronising call after which what the device printed is read.
            pub fn flushes_console(self) -> bool {
                match self {
                    $( Opcode::$op => has_prop!(console; $($oprop)*), )*
                    $( Opcode::$fop => false, )*
                }
            }

            /// Bytes of the fixed request body (a tail may follow).
            pub fn request_len(self) -> usize {
                match self {
                    $( Opcode::$op => size_of::<$obody>(), )*
                    $( Opcode::$fop => size_of::<$crate::ops::forward::$fop::Request>(), )*
                }
            }

            /// Bytes of the fixed reply body (a tail may follow).
            pub fn reply_len(self) -> usize {
                match self {
                    $( Opcode::$op => size_of::<$oreply>(), )*
                    $( Opcode::$fop => size_of::<$crate::ops::forward::$fop::Reply>(), )*
                }
            }

            /// The exported driver function of a plain forward.
            pub fn forwarded_export(self) -> Option<&'static str> {
                match self {
                    $( Opcode::$fop => Some(stringify!($cname)), )*
                    _ => None,
                }
            }
        }

        /// The request and reply bodies of each plain forward.
        pub mod forward {
            $(
                #[doc = concat!("`", stringify!($cname), "`.")]
                #[allow(non_snake_case)]
                pub mod $fop {
                    use $crate::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

                    /// The request: the caller's current context, then one field per argument.
                    #[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
                    #[repr(C)]
                    pub struct Request {
                        pub ctx: $crate::zerocopy::little_endian::U64,
                        $( pub $arg: $crate::forward_request_field!($kind), )*
                    }

                    /// The reply: one field per output argument.
                    #[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
                    #[repr(C)]
                    pub struct Reply {
                        $( pub $arg: $crate::forward_reply_field!($kind), )*
                    }

                    impl Default for Request {
                        fn default() -> Self {
                            <Self as $crate::zerocopy::FromZeros>::new_zeroed()
                        }
                    }

                    impl Default for Reply {
                        fn default() -> Self {
                            <Self as $crate::zerocopy::FromZeros>::new_zeroed()
                        }
                    }
                }
            )*
        }
    };
}

macro_rules! with_forwards {
    ($($ops:tt)*) => { for_each_forward!(define_opcodes, { $($ops)* }); };
}

for_each_op!(with_forwards);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for op in Opcode::ALL {
            assert!(seen.insert(*op as u16), "{op:?} shares its code");
            assert_eq!(Opcode::from_u16(*op as u16), Some(*op));
        }
        assert_eq!(Opcode::from_u16(0xffff), None);
    }

    #[test]
    fn properties_come_from_the_table() {
        assert!(Opcode::LaunchKernel.is_fire_and_forget());
        assert!(!Opcode::MemAlloc.is_fire_and_forget());
        assert!(Opcode::CtxSynchronize.flushes_console());
        assert!(!Opcode::StreamQuery.flushes_console());
        assert_eq!(Opcode::EventQuery.name(), "EventQuery");
        assert_eq!(
            Opcode::StreamGetAttribute.forwarded_export(),
            Some("cuStreamGetAttribute")
        );
        assert_eq!(Opcode::MemAlloc.forwarded_export(), None);
    }

    #[test]
    fn forward_bodies_follow_their_arguments() {
        // ctx, stream, attr; the output is only in the reply.
        assert_eq!(Opcode::StreamGetAttribute.request_len(), 8 + 8 + 4);
        assert_eq!(Opcode::StreamGetAttribute.reply_len(), 64);
        assert_eq!(Opcode::StreamSetAttribute.request_len(), 8 + 8 + 4 + 64);
        assert_eq!(Opcode::StreamSetAttribute.reply_len(), 0);
        assert_eq!(Opcode::DeviceGetP2PAttribute.reply_len(), 4);
        assert_eq!(Opcode::CtxResetPersistingL2Cache.request_len(), 8);
        assert_eq!(
            Opcode::LaunchKernel.request_len(),
            size_of::<LaunchKernel>()
        );
    }
}

//! How the shim's chains reach the device: the [`Transport`] trait and its two
//! implementations, virtio-user over the daemon's vhost-user socket
//! ([`virtio_user::VirtioUserTransport`]) and the guest kernel driver `/dev/vgpuN`
//! ([`kmod::KmodTransport`]).
//!
//! A transport delivers descriptor chains and reports their completion; it knows nothing of
//! messages, batches or staging. The connection (`conn.rs`) builds the chains and decides
//! where bulk bytes travel from: in place where [`Transport::translate`] names them, through
//! its staging buffers otherwise.

pub mod kmod;
pub mod virtio_user;

pub use vgpu_virtio_user::{Seg, SharedBuf};

/// Heads a connection tracks (the ring size over virtio-user; the kernel driver's requests
/// are numbered modulo it).
pub const MAX_HEADS: usize = 256;

/// Why a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device is gone or broken: the connection is dead from now on.
    #[error(transparent)]
    Gone(Box<dyn std::error::Error + Send + Sync>),
    /// The device refused this request alone; the connection lives.
    #[error("the vGPU driver refused a request")]
    Refused(#[source] std::io::Error),
    /// Memory the device can reach could not be allocated.
    #[error("cannot allocate memory the vGPU can reach")]
    Alloc(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A wait for a completion when the transport has nothing in flight.
    #[error("completion of an unknown request")]
    NothingInFlight,
}

/// How a transport wants the connection to batch and place copies (fixed for its life, read
/// by the connection once at open so the per-call path makes no call for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Calls in a fire-and-forget batch before it is sent even while the device is busy.
    pub batch_calls: u32,
    /// Whether a batch is sent at once while nothing is in flight (so the GPU starts at once).
    /// A transport that cannot tell cheaply whether the device is idle keeps collecting.
    pub send_when_idle: bool,
    /// Memory a copy's descriptors name is released as its request completes (the kernel
    /// driver unpins it): each direct piece is sent and waited for, and an asynchronous copy
    /// finishes on its stream within its request.
    pub copies_complete_in_request: bool,
    /// Largest piece of a copy in one request when its descriptors name the caller's memory.
    pub max_direct_piece: usize,
}

/// A chain the transport took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Its head, below [`MAX_HEADS`].
    pub head: u16,
    /// `Some(used length)` when the chain completed before `submit` returned.
    pub completed: Option<u32>,
}

/// Delivers descriptor chains to the device and reports their completion.
pub trait Transport: Send {
    /// Batching and copy placement this transport wants.
    fn policy(&self) -> Policy;

    /// Allocates `len` bytes the device can reach directly.
    fn alloc(&mut self, len: usize) -> Result<SharedBuf, TransportError>;

    /// Frees a buffer from [`Transport::alloc`] that no chain in flight uses.
    fn free(&mut self, buf: SharedBuf);

    /// What a descriptor names for host bytes `p..p + len`, if the device can reach them
    /// without staging: a shared region over virtio-user, the user pages themselves through
    /// the kernel driver (which pins them per request).
    fn translate(&self, p: *const u8, len: usize) -> Option<u64>;

    /// Whether a chain of `segs` descriptors can be submitted without waiting.
    fn has_room(&self, segs: usize) -> bool;

    /// Submits one chain: `segs[0]` is the message (`msg_len` bytes of it), then data-in, the
    /// reply area (`resp_cap` bytes, when non-zero) and data-out.
    ///
    /// # Safety
    /// Every segment must name memory valid for its length until the chain completes.
    unsafe fn submit(
        &mut self,
        segs: &[Seg],
        msg_len: usize,
        resp_cap: usize,
    ) -> Result<Submitted, TransportError>;

    /// Calls `done(head, used_len)` for each chain that completed since the last call.
    fn reap(&mut self, done: &mut dyn FnMut(u16, u32));

    /// Waits until some chain completes, or fails when the device goes away. No time limit
    /// while the device lives.
    fn wait(&mut self) -> Result<(), TransportError>;

    /// Whether the transport knows the device is gone.
    fn is_gone(&self) -> bool;
}
